"""vLLM's own routes that agents use besides the OpenAI ones, under the same auth: `/tokenize` and
`/detokenize` (forwarded to the session's server; they generate nothing, so nothing is recorded),
and the admin's list of a session's `X-Session-ID` episodes."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from seamless.proxy import episodes
from seamless.proxy.auth import agent_session, bearer, require_admin
from seamless.proxy.errors import ApiError, parse_json_object, translate
from seamless.proxy.state import ProxyState

router = APIRouter()


def _state(request: Request) -> ProxyState:
    return request.app.state.proxy


@router.post("/tokenize")
@router.post("/detokenize")
@router.post("/sessions/{session_id}/tokenize")
@router.post("/sessions/{session_id}/detokenize")
@router.post("/sessions/{session_id}/v1/tokenize")
@router.post("/sessions/{session_id}/v1/detokenize")
async def tokenizer_route(request: Request, session_id: str | None = None) -> Response:
    """Forward to the server the session is pinned to (same tokenizer and chat template)."""
    state = _state(request)
    try:
        sid = await agent_session(state, bearer(request), session_id)
        body = parse_json_object(await request.body())
        upstream = state.pool.pick(sid)
        body["model"] = upstream.model
        route = request.url.path.rsplit("/", 1)[1]
        try:
            reply = await state.client.post(f"{upstream.url}/{route}", json=body, timeout=60.0)
        except httpx.HTTPError as exc:
            state.pool.mark_failed(upstream, f"POST /{route} failed: {exc!r}")
            raise ApiError(502, f"the rollout server failed: {exc!r}", "upstream_error") from exc
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")
    except Exception as exc:
        return translate(exc).response()


@router.get("/sessions/{session_id}/episodes")
async def list_episodes(request: Request, session_id: str) -> Response:
    """The episode sessions an agent started with `X-Session-ID` under this session (admin only)."""
    state = _state(request)
    try:
        require_admin(state, request)
        await state.store.session(session_id)  # 404 for an unknown session
        return JSONResponse({"session_id": session_id, "episodes": await episodes.list_episodes(state, session_id)})
    except Exception as exc:
        return translate(exc).response()
