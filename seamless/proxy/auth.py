"""Who may call what: an agent key reaches only its own session's OpenAI routes; the admin key
reaches everything. Keys are compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from seamless.proxy.errors import ApiError
from seamless.proxy.state import ProxyState


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_admin(state: ProxyState, key: str | None) -> bool:
    return key is not None and hmac.compare_digest(key.encode(), state.settings.admin_key.encode())


def require_admin(state: ProxyState, request: Request) -> None:
    if not is_admin(state, bearer(request)):
        raise ApiError(401, "this route needs the proxy's admin key as 'Authorization: Bearer <key>' "
                            "(--admin-key or SEAMLESS_ADMIN_KEY)", "authentication_error")


async def agent_session(state: ProxyState, request: Request, path_session: str | None) -> str:
    """The session a call belongs to: from the path (key must match it) or from the agent key."""
    key = bearer(request)
    if key is None:
        raise ApiError(401, "missing 'Authorization: Bearer <session api_key>'; use the api_key that "
                            "POST /sessions returned (OPENAI_API_KEY)", "authentication_error")
    if path_session is not None and is_admin(state, key):
        await _require_open(state, path_session)
        return path_session
    sid = state.session_of_key.get(key)
    if sid is None:
        sid = await state.store.session_of_key(key)
        if sid is None:
            raise ApiError(401, "unknown api key: the session does not exist or has finished",
                           "authentication_error")
        state.session_of_key[key] = sid
    if path_session is not None and path_session != sid:
        raise ApiError(403, "this api key belongs to another session", "permission_error")
    return sid


async def _require_open(state: ProxyState, sid: str) -> None:
    record = await state.store.session(sid)  # raises UnknownSession -> 404
    if record.status != "open":
        raise ApiError(409, f"session {sid} has finished; create a new one", "conflict")
