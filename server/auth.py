"""Bearer-token dependencies: the admin token guards every write; the optional API token guards classify."""

from __future__ import annotations

import secrets

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError
from server.state import ServerState, get_state

# auto_error=False: a missing header becomes our own JSON 401 rather than FastAPI's 403
admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                          description="The admin token (PROMPTSERVE_ADMIN_TOKEN, or the one printed at start).")
api_bearer = HTTPBearer(auto_error=False, scheme_name="ApiToken",
                        description="Only when the server sets PROMPTSERVE_API_TOKEN.")


def _check(expected: str, credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
    if credentials is None:
        raise ApiError(401, "unauthorized", f"this endpoint needs `Authorization: Bearer <{what}>`",
                       headers={"WWW-Authenticate": "Bearer"})
    # constant-time comparison: response timing must not leak the token
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise ApiError(403, "forbidden", f"the bearer token is not the {what}")


def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(admin_bearer),
                  state: ServerState = Depends(get_state)) -> None:
    _check(state.admin_token, credentials, "admin token")


def require_api_token(credentials: HTTPAuthorizationCredentials | None = Depends(api_bearer),
                      state: ServerState = Depends(get_state)) -> None:
    if state.api_token is not None:
        _check(state.api_token, credentials, "API token")
