"""Errors as JSON `{error, detail}` with the right status, and the request-body size guard.

`ApiError` subclasses Starlette's HTTPException so it can be raised anywhere a request is handled,
including from inside the body stream (the size guard does that), and still reach the JSON handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from contextlib import contextmanager

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptserve.promptset import PromptSetError

log = logging.getLogger("promptserve.server")


class ApiError(HTTPException):
    def __init__(self, status_code: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.error = error


OIP_PREFIX = "/v2"  # the Open Inference Protocol's paths (server/oip_http.py)


def error_content(path: str, code: str, detail: str) -> dict[str, str]:
    """Every error body: `{error: code, detail}`, except on the Open Inference Protocol's paths, where the
    protocol's `{error: message}` is what clients show (tritonclient's exception message), the code beside."""
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return {"error": detail, "code": code}
    return {"error": code, "detail": detail}


def error_response(scope: Scope, status: int, code: str, detail: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_content(scope.get("path", ""), code, detail), status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error = getattr(exc, "error", None) or f"http_{exc.status_code}"
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return error_response(request.scope, exc.status_code, error, detail, exc.headers)


def prompt_set_error(exc: PromptSetError, what: str = "prompt set") -> ApiError:
    """422 naming the problem, or 409 for a fingerprint mismatch (PromptSetError carries both). Paths in the
    message (a backbone file a prompt set was trained on) are cut to file names: no directory leaves the server."""
    return ApiError(exc.http_status, exc.reason, f"invalid {what}: {file_names_only(str(exc))}")


def file_names_only(text: str) -> str:
    """`/srv/models/vit.safetensors` -> `vit.safetensors`, wherever a path appears in a message."""
    return re.sub(r"(?:[\w.~-]*/)+([\w.-]+)", r"\1", text)


def store_error(exc: Exception, task: str) -> ApiError:
    """Map the store's exceptions to statuses; the store's message already says what went wrong."""
    import prompt_store as ps

    table: list[tuple[type[Exception], int, str]] = [
        (ps.InvalidTaskName, 422, "invalid_task_name"),
        (ps.TooLarge, 413, "too_large"),
        (ps.InvalidPromptSet, 422, "invalid_prompt_set"),
        (ps.VersionNotFound, 404, "unknown_version"),
        (ps.TaskNotFound, 404, "unknown_task"),
        (ps.StoreUnavailable, 503, "store_unavailable"),
        (ps.StoreFull, 507, "insufficient_storage"),
    ]
    if isinstance(exc, ps.BrokenRecord):  # this task's record only; the others serve on
        log.error("the stored record of task %r cannot be read: %s", task, exc)
        return ApiError(500, "broken_task", f"the stored record of task {task!r} cannot be read; the other tasks "
                                            "are not affected (an operator can run `promptserve tasks fsck`)")
    for kind, status, code in table:
        if isinstance(exc, kind):
            if status == 503:  # the message names the store's address: log it, answer without it
                log.warning("prompt store unavailable (task %r): %s", task, exc)
                return ApiError(503, code, "the prompt store is unreachable; retry shortly", {"Retry-After": "1"})
            code = getattr(exc, "reason", None) or code  # InvalidPromptSet carries the validator's code
            return ApiError(status, code, str(exc) or f"{code}: {task}")
    # a damaged record: the store's message names files, so it goes to the log only
    log.error("prompt store failed for task %r: %s", task, exc)
    return ApiError(500, "store_error", f"the stored record of task {task!r} cannot be read; the server log "
                                        "says why (`promptserve tasks fsck` repairs the registry)")


class BodyLimitMiddleware:
    """Refuse request bodies over a per-route limit with 413, before and while they stream in.

    A declared Content-Length over the limit is refused without reading the body; a chunked body is
    counted as it arrives and cut off at the limit, so no route ever buffers more than its limit.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int],
                 on_refused: Callable[[Scope], None] | None = None, timeout_s: float | None = None,
                 max_in_flight: int | None = None):
        self.app = app
        self.limit_for = limit_for
        self.on_refused = on_refused
        self.timeout_s = timeout_s  # the whole body must arrive within it (slow-body clients get 408)
        # body bytes of all requests in progress together (declared or received so far): beyond it, 503
        self.max_in_flight, self.in_flight = max_in_flight, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if self.on_refused is not None:
                self.on_refused(scope)
            await error_response(scope, 413, "too_large", _too_large(int(declared), limit))(scope, receive, send)
            return
        seen, held = 0, 0  # held: what this request counts in self.in_flight
        if declared is not None and declared.isdigit() and int(declared) > 0:
            if not self._admit(int(declared)):
                await self._busy(scope, receive, send)
                return
            held = int(declared)
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal seen, held
            if deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise ApiError(408, "body_timeout", f"the request body did not arrive within "
                                                        f"{self.timeout_s:g} s", {"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "too_large", _too_large(seen, limit, at_least=True))
                if seen > held:  # a chunked body (or one longer than declared) is counted as it arrives
                    if not self._admit(seen - held):
                        raise ApiError(503, "busy", self._busy_detail(), {"Retry-After": "1"})
                    held = seen
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.in_flight -= held

    def _admit(self, size: int) -> bool:
        if self.max_in_flight is not None and self.in_flight and self.in_flight + size > self.max_in_flight:
            return False  # one request alone is always admitted (its own route limit bounds it)
        self.in_flight += size
        return True

    def _busy_detail(self) -> str:
        return (f"the server holds {self.in_flight} bytes of request bodies, its limit for all requests together is "
                f"{self.max_in_flight}: retry shortly")

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(scope, 503, "busy", self._busy_detail(), {"Retry-After": "1"})(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (f"request body of {'at least ' if at_least else ''}{size} bytes is over this route's limit "
            f"of {limit} bytes")


class RedactSecrets(logging.Filter):
    """Blank secret-looking query parameters (token=..., api_key=...) in uvicorn's access log: a client that
    put its token in the URL was refused, but the URL itself must not land in the log."""

    SECRET = re.compile(r"(?i)([?&][^=&#]*(?:token|key|secret|password|auth)[^=&#]*=)[^&#\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.SECRET.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.SECRET.sub(r"\1***", record.msg)
        return True

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


@contextmanager
def translated(task: str):
    """Turn the store's and the prompt-set validator's exceptions into ApiErrors with the right status."""
    try:
        yield
    except ApiError:
        raise
    except PromptSetError as e:
        raise prompt_set_error(e) from None
    except Exception as e:
        from prompt_store import StoreError

        if isinstance(e, StoreError):
            raise store_error(e, task) from None
        raise
