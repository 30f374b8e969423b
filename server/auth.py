"""Bearer tokens: the admin token guards every write (a route dependency); the optional API token, when set,
guards every endpoint but the probes (/healthz, /readyz), the docs and metrics included (an ASGI guard, since
FastAPI's own /docs and /openapi.json routes take no dependencies). The admin token opens everything."""

from __future__ import annotations

import re
import secrets

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from promptserve.naming import TASK_NAME_PATTERN
from server.errors import ApiError, error_response
from server.state import ServerState, get_state

# auto_error=False: a missing header becomes our own JSON 401 rather than FastAPI's 403
admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                          description="The admin token (PROMPTSERVE_ADMIN_TOKEN, or the one printed at start).")


def _check(expected: str, credentials: HTTPAuthorizationCredentials | None, needs: str, wrong: str) -> None:
    if credentials is None:
        raise ApiError(401, "unauthorized", f"this endpoint needs `Authorization: Bearer <{needs}>`",
                       headers={"WWW-Authenticate": "Bearer"})
    # constant-time comparison: response timing must not leak the token
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise ApiError(403, "forbidden", wrong)


WRONG_API_TOKEN = "the bearer token is neither the API token nor the admin token"


def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(admin_bearer),
                  state: ServerState = Depends(get_state)) -> None:
    _check(state.admin_token, credentials, "admin token", "the bearer token is not the admin token")


# orchestrator probes carry no tokens (the Open Inference Protocol's too)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
# the web page's shell: HTML, CSS and JS with no data in them (a browser cannot send a bearer header when it
# navigates); its scripts ask for the token and send it with every API call, /ui/live.json included; the API docs'
# scripts and styles (/docs-static, fastapi-offline's files) hold no data either. Matched whole (fullmatch).
PUBLIC_PAGE = re.compile(rf"/(ui/(tasks(/{TASK_NAME_PATTERN})?|live|static/[A-Za-z0-9._-]+)"
                         r"|docs-static/[A-Za-z0-9._-]+)?")


class ApiTokenGuard:
    """401/403 for any request without the API token (or the admin token) while one is configured."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = self.state.api_token
        path = scope.get("path", "")
        if scope["type"] != "http" or expected is None or path in PUBLIC_PATHS or PUBLIC_PAGE.fullmatch(path):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        try:
            if token is None:
                _check(expected, None, "API token", WRONG_API_TOKEN)
            elif not secrets.compare_digest(token.encode(), self.state.admin_token.encode()):
                _check(expected, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token), "API token",
                       WRONG_API_TOKEN)
        except ApiError as e:
            await error_response(scope, e.status_code, e.error, e.detail, e.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None
