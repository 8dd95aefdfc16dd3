"""Who may call what: an agent key reaches only its own session's OpenAI routes; the admin key
reaches everything. Keys are compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from seamless.proxy.errors import ApiError
from seamless.proxy.state import ProxyState


def bearer_of(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def bearer(request: Request) -> str | None:
    return bearer_of(request.headers.get("authorization"))


def is_admin(state: ProxyState, key: str | None) -> bool:
    return key is not None and hmac.compare_digest(key.encode(), state.settings.admin_key.encode())


def require_admin(state: ProxyState, request: Request) -> None:
    if not is_admin(state, bearer(request)):
        raise ApiError(401, "this route needs the proxy's admin key as 'Authorization: Bearer <key>' "
                            "(--admin-key or SEAMLESS_ADMIN_KEY)", "authentication_error")


async def agent_session(state: ProxyState, key: str | None, path_session: str | None) -> str:
    """The session a call with bearer `key` belongs to: from the path (key must match it) or from
    the agent key."""
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
