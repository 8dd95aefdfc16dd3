"""The agent-facing API: chat/completions, completions and models, plus the entry of the routes
served by translating to those two (adapted_routes: Responses, Anthropic messages, vLLM's
token-in generate).

Each call is forwarded to the session's rollout server as a stream with token ids and logprobs,
recorded as turns once it completes, and answered in the shape the agent asked for (calls).

The generating POST routes are served by `AgentAPI`, a bare ASGI app in front of FastAPI: they carry
every agent call, and FastAPI's request, routing and response layers cost more than the proxy's
own work on them. Everything else (models, sessions, admin) is a FastAPI route.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from seamless.proxy import anthropic_api, delivery, episodes
from seamless.proxy.adapted_routes import ADAPTED
from seamless.proxy.agent_io import check_n, read_body, send_answer, send_json, validate
from seamless.proxy.answers import answer
from seamless.proxy.auth import agent_session, bearer_of
from seamless.proxy.calls import complete, stream_call, upstream_error
from seamless.proxy.errors import ApiError, translate
from seamless.proxy.recording import RECEIVED_AT, AgentWants, Api, CallRecorder
from seamless.proxy.state import ProxyState

router = APIRouter()

_AGENT_POST = re.compile(r"^(?:/sessions/([^/]+))?/(v1/chat/completions|v1/completions|v1/responses|v1/messages"
                         r"|inference/v1/generate)$")
_ROUTES = {"v1/chat/completions": "chat", "v1/completions": "completions", "v1/responses": "responses",
           "v1/messages": "messages", "inference/v1/generate": "generate"}


def _state(request: Request) -> ProxyState:
    return request.app.state.proxy


@router.get("/v1/models")
@router.get("/sessions/{session_id}/v1/models")
async def models(request: Request, session_id: str | None = None) -> Response:
    """The models as the servers report them (max_model_len included), one entry per model."""
    state = _state(request)
    await agent_session(state, bearer_of(request.headers.get("authorization")), session_id)
    entries: dict[str, dict[str, Any]] = {}
    for upstream in [u for u in state.pool.upstreams.values() if u.healthy]:
        if upstream.model in entries:
            continue
        try:
            reply = await state.client.get(f"{upstream.url}/v1/models", timeout=10.0)
            entries.update({m["id"]: m for m in reply.json()["data"]})
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            continue  # the health check will take it out; another server may answer
    for upstream in state.pool.upstreams.values():  # servers that did not answer: their name at least
        entries.setdefault(upstream.model, {"id": upstream.model, "object": "model", "created": 0,
                                            "owned_by": "vllm"})
    return JSONResponse({"object": "list", "data": [entries[k] for k in sorted(entries)]})


class AgentAPI:
    """The generating POST routes (at the root and under a session's URL); any other request goes
    on to `app`, the FastAPI app whose lifespan makes the proxy's state."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _AGENT_POST.match(scope["path"])
            if match is not None:
                await _call(self.app.state.proxy, _ROUTES[match.group(2)], match.group(1), scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _call(state: ProxyState, route: str, path_session: str | None, scope: dict, receive: Callable,
                send: Callable) -> None:
    started = time.perf_counter()
    RECEIVED_AT.set(time.time())
    headers = dict(scope["headers"])
    try:
        # Anthropic's SDK sends its key as x-api-key
        key = bearer_of(headers.get(b"authorization", b"").decode("latin-1")) or \
            (headers.get(b"x-api-key", b"").decode("latin-1") or None)
        session_id = await agent_session(state, key, path_session)
        session_id = await episodes.resolve(state, session_id, headers.get(episodes.HEADER))
        body = await read_body(headers.get(b"content-length"), receive, state.settings.max_body_bytes)
        if route in ADAPTED:
            await ADAPTED[route](state, session_id, body, receive, send)
        else:
            await _chat_or_completion("chat" if route == "chat" else "completion", state, session_id, body,
                                      receive, send)
        state.metrics.observe(route, 200, time.perf_counter() - started)
    except Exception as exc:  # every failure becomes an OpenAI-shaped error (Anthropic-shaped on its route)
        error = translate(exc)
        state.metrics.observe(route, error.status, time.perf_counter() - started)
        state.metrics.errors[error.type] += 1
        payload = anthropic_api.error_body(error) if route == "messages" else error.body()
        # a body cut off (too slow, too big) leaves the connection mid-request: close it
        await send_json(send, error.status, payload, close=error.status in (408, 413))


async def _chat_or_completion(api: Api, state: ProxyState, session_id: str, body: dict[str, Any],
                              receive: Callable, send: Callable) -> None:
    validate(api, body)
    check_n(body, state.settings.max_n)
    wants = AgentWants.of(body)
    await state.pool.wait_running()
    echo_texts = await _echo_texts(state, session_id, body) if api == "completion" and not wants.token_ids else None
    if wants.stream:
        await stream_call(state, api, body, session_id, ChatSSE(wants), receive, send, echo_texts)
        return
    recorder = await delivery.until_disconnect(complete(state, api, body, session_id, echo_texts), receive)
    await send_answer(send, await answer(state, api, body, recorder, wants), state.voids, recorder.call_id)


async def _echo_texts(state: ProxyState, session_id: str, body: dict[str, Any]) -> dict[int, str] | None:
    """Choice index -> the prompt text vLLM echoes for a completions call with echo=true (a string
    prompt as given; a token-id prompt as the server's tokenizer decodes it)."""
    if not body.get("echo"):
        return None
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
    n = body.get("n") or 1
    texts = {}
    for p, one in enumerate(prompts):
        text = one if isinstance(one, str) else await _detokenize(state, session_id, one)
        texts.update({p * n + i: text for i in range(n)})  # vLLM numbers choices prompt by prompt
    return texts


async def _detokenize(state: ProxyState, session_id: str, ids: Any) -> str:
    upstream = state.pool.pick(session_id)
    try:
        reply = await state.client.post(f"{upstream.url}/detokenize", json={"model": upstream.model, "tokens": ids},
                                        timeout=state.settings.upstream_timeout_s)
    except httpx.HTTPError as exc:
        raise ApiError(502, f"the rollout server failed to decode the prompt to echo: {exc!r}",
                       "upstream_error") from exc
    if reply.status_code != 200:
        raise upstream_error(reply.status_code, reply.content)
    return reply.json()["prompt"]


class ChatSSE:
    """The chat/completions stream as the agent asked for it: vLLM's chunks less what the proxy added."""

    def __init__(self, wants: AgentWants) -> None:
        self.wants = wants

    def start(self, recorder: CallRecorder) -> list[bytes]:
        self.recorder = recorder
        return []

    def chunk(self, chunk: dict[str, Any] | None) -> list[bytes]:
        shown = None if chunk is None else self.recorder.agent_chunk(chunk, self.wants)
        return [] if shown is None else [b"data: " + json.dumps(shown, separators=(",", ":")).encode() + b"\n\n"]

    async def end(self, continued: bool) -> list[bytes]:
        usage = []
        if continued and self.wants.usage:  # the continuation hid the partial usage: send the call's
            usage = self.chunk({"id": (self.recorder.first_chunk or {}).get("id", ""), "choices": [],
                                "usage": self.recorder.usage})
        return [*usage, b"data: [DONE]\n\n"]

    def error(self, error: ApiError) -> bytes:
        return b"data: " + json.dumps(error.body()).encode() + b"\n\n"
