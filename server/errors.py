"""Errors as JSON `{error, detail}` with the right status, and the request-body size guard.

`ApiError` subclasses Starlette's HTTPException so it can be raised anywhere a request is handled,
including from inside the body stream (the size guard does that), and still reach the JSON handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptserve.promptset import PromptSetError


class ApiError(HTTPException):
    def __init__(self, status_code: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.error = error


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error = getattr(exc, "error", None) or f"http_{exc.status_code}"
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return JSONResponse({"error": error, "detail": detail}, status_code=exc.status_code, headers=exc.headers)


def prompt_set_error(exc: PromptSetError, what: str = "prompt set") -> ApiError:
    """422 naming the problem, or 409 for a fingerprint mismatch (PromptSetError carries both)."""
    return ApiError(exc.http_status, exc.reason, f"invalid {what}: {exc}")


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
    ]
    for kind, status, code in table:
        if isinstance(exc, kind):
            headers = {"Retry-After": "1"} if status == 503 else None
            code = getattr(exc, "reason", None) or code  # InvalidPromptSet carries the validator's code
            return ApiError(status, code, str(exc) or f"{code}: {task}", headers)
    return ApiError(500, "store_error", f"the prompt store failed: {exc}")


class BodyLimitMiddleware:
    """Refuse request bodies over a per-route limit with 413, before and while they stream in.

    A declared Content-Length over the limit is refused without reading the body; a chunked body is
    counted as it arrives and cut off at the limit, so no route ever buffers more than its limit.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int],
                 on_refused: Callable[[Scope], None] | None = None):
        self.app = app
        self.limit_for = limit_for
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if self.on_refused is not None:
                self.on_refused(scope)
            await JSONResponse({"error": "too_large", "detail": _too_large(int(declared), limit)},
                               status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "too_large", _too_large(seen, limit, at_least=True))
            return message

        await self.app(scope, limited_receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (f"request body of {'at least ' if at_least else ''}{size} bytes is over this route's limit "
            f"of {limit} bytes")


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
