"""The FastAPI app factory: `create_app(settings)` wires state, routers, error handlers and body limits.

    uvicorn --factory server.app:create_app      # settings from PROMPTSERVE_* env
    promptserve serve --port 8000                # the same, with flags
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

import promptserve
from server import classify, health, oip_http, tasks, web
from server.auth import ApiTokenGuard
from server.errors import OIP_PREFIX, BodyLimitMiddleware, RedactSecrets, api_error_handler, error_response
from server.settings import MIB, ServerSettings
from server.state import ServerState

log = logging.getLogger("promptserve.server")
SMALL_BODY = 64 * 1024  # JSON bodies (rollback) and anything unexpected
DOCS_STATIC = "/docs-static"  # Swagger UI's and ReDoc's scripts and styles


def create_app(settings: ServerSettings | None = None, *, backbone=None, store=None,
               predictor_factory=None) -> FastAPI:
    """`backbone` / `store`: already-built objects to use instead of the settings' (tests, embedding).
    `predictor_factory(state)`: who answers classify requests (server/predictor.py; default: this process)."""
    settings = settings or ServerSettings()
    state = ServerState(settings, backbone=backbone, store=store, predictor_factory=predictor_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        RedactSecrets.install()  # here, after uvicorn configured its loggers
        # load in the background: /healthz answers at once, /readyz says 503 until the work is done
        starting = asyncio.create_task(state.start(), name="promptserve-start")
        starting.add_done_callback(_log_start_failure)
        grpc_server = None
        try:
            if settings.grpc_port is not None:  # answers UNAVAILABLE until the start-up above is done
                from server import oip_grpc

                grpc_server, app.state.grpc_port = await oip_grpc.start(
                    state, settings.host, settings.grpc_port, settings.max_classify_body_bytes + SMALL_BODY)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await state.stop()

    # FastAPIOffline: /docs from Swagger UI's files shipped with fastapi-offline, not a CDN (it works offline). No
    # /redoc: ReDoc's page loads its logo from a CDN
    app = FastAPIOffline(
        static_url=DOCS_STATIC, redoc_url=None,
        title="promptserve",
        version=promptserve.__version__,
        summary="Many vision tasks from one frozen ViT: each task is a small E2VPT prompt set, batched together.",
        lifespan=lifespan,
    )
    app.state.server = state
    app.add_exception_handler(HTTPException, api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(Exception, _internal_error)

    def body_limit(scope) -> int:
        path, method = scope.get("path", ""), scope.get("method", "")
        if method == "PUT" and path.startswith("/tasks/"):
            return settings.max_upload_bytes
        if method == "POST" and path.startswith("/v2/models/"):  # JSON + raw image tensors
            return settings.max_classify_body_bytes
        if method == "POST" and path.startswith("/classify/"):
            ctype = dict(scope.get("headers", ())).get(b"content-type", b"").split(b";")[0].strip().lower()
            # a raw image body is one image; multipart may carry several
            return settings.max_image_bytes if ctype.startswith(b"image/") else settings.max_classify_body_bytes
        return SMALL_BODY

    def count_refused_upload(scope) -> None:
        if scope.get("method") == "PUT":  # a streamed upload over the limit is counted by its route
            state.metrics.refusals.labels("too_large").inc()

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit, on_refused=count_refused_upload,
                       timeout_s=settings.body_timeout_s, max_in_flight=int(settings.max_body_mib_in_flight * MIB))
    app.add_middleware(ApiTokenGuard, state=state)  # added last: runs first, before any body is read
    app.include_router(classify.router)
    app.include_router(tasks.router)
    app.include_router(health.router)
    app.include_router(oip_http.router)  # the Open Inference Protocol (KServe v2) beside the own API
    app.include_router(web.router)  # the web page: Try, Registry, Live (server/web/)
    _complete_openapi(app, settings)
    return app


# What any route can answer before or around its own logic: a malformed body (Starlette's 400), a slow body
# (408), a body over its limit (413), a bad parameter (422), an unexpected failure (500), not ready yet (503).
COMMON_ERRORS = ("400", "408", "413", "422", "500", "503")


def _complete_openapi(app: FastAPI, settings: ServerSettings) -> None:
    """Document every status each operation can answer, and the API token exactly where it is required:
    everywhere but the probes, and only when the server has one (ApiTokenGuard enforces it)."""
    from server.auth import PUBLIC_PATHS

    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            own = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
            oip = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/OipErrorResponse"}}}}
            codes = COMMON_ERRORS + (("401", "403") if settings.api_token is not None else ())
            if settings.api_token is not None:
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["ApiToken"] = {
                    "type": "http", "scheme": "bearer", "description": "PROMPTSERVE_API_TOKEN (or the admin token)."}
            for path, operations in schema.get("paths", {}).items():
                if path in PUBLIC_PATHS:
                    continue
                error = oip if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/") else own
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    for code in codes:
                        responses.setdefault(code, {"description": HTTPStatus(int(code)).phrase, **error})
                    if "422" in responses:  # FastAPI documents its own validation body; ours is ErrorResponse
                        responses["422"] = {"description": "Invalid request", **error}
                    if settings.api_token is not None and "AdminToken" not in str(operation.get("security", "")):
                        operation["security"] = [{"ApiToken": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _log_start_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("start-up failed; /readyz answers 503 with the reason")


async def _validation_error(request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for malformed parameters, in the same {error, detail} shape as every other error."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(request.scope, 422, "invalid_request", "; ".join(parts))


async def _method_not_allowed(request, exc: HTTPException) -> JSONResponse:
    """405 with `Allow` naming every method of the path (Starlette names only the first route's)."""
    # the path as the client sent it: inside a mount (the static files) the scope's path is the mount's remainder
    scope = {"type": "http", "path": request.url.path, "root_path": "", "method": request.method}
    allow = ", ".join(sorted(_allowed_methods(request.app.router.routes, scope) - {"HEAD"}))
    return error_response(request.scope, 405, "method_not_allowed",
                          f"{request.method} is not allowed here; use {allow}", {"Allow": allow})


def _allowed_methods(routes, scope) -> set[str]:
    """The methods of every route whose path matches, looking into included routers (FastAPI keeps them as
    one wrapper entry each) and taking a static mount as GET."""
    methods: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            methods |= _allowed_methods(inner.routes, scope)
        elif route.matches(scope)[0] is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or {"GET", "HEAD"})
    return methods


async def _client_disconnected(request, exc: ClientDisconnect) -> Response:
    """The client went away while sending its body: one log line, counted as 499, never a 500."""
    log.info("client %s closed the connection before its request was read: %s %s (499)",
             request.client.host if request.client else "?", request.method, request.url.path)
    return Response(status_code=499)


async def _internal_error(request, exc: Exception) -> JSONResponse:
    """Anything unexpected still answers JSON, without internals: the details go to the log (Starlette logs
    the traceback after this handler runs). Connection: close, since the request may not have been read whole."""
    return error_response(request.scope, 500, "internal", "the server failed to answer this request; the error was "
                                                          "logged", {"Connection": "close"})
