"""The agent-facing OpenAI API: chat/completions, completions, models.

Each call is forwarded to the session's rollout server as a stream with token ids and logprobs,
recorded as turns once it completes (before the agent sees the end of the response, so a turn
the agent got is always in the store), and answered in the shape the agent asked for. A call
the agent abandons (disconnect) records nothing.

The two POST routes are served by `AgentAPI`, a bare ASGI app in front of FastAPI: they carry
every agent call, and FastAPI's request, routing and response layers cost more than the proxy's
own work on them. Everything else (models, sessions, admin) is a FastAPI route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from seamless.errors import SessionFinished, UpstreamUnavailable
from seamless.proxy import continuation, delivery, tito
from seamless.proxy.auth import agent_session, bearer_of
from seamless.proxy.errors import ApiError, parse_json_object, translate
from seamless.proxy.recording import AgentWants, Api, CallRecorder, upstream_body
from seamless.proxy.state import ProxyState
from seamless.proxy.upstream_http import UpstreamConnectionError, UpstreamResponse, UpstreamStreamError
from seamless.proxy.upstreams import Upstream

router = APIRouter()
log = logging.getLogger("seamless.proxy")

_AGENT_POST = re.compile(r"^(?:/sessions/([^/]+))?/v1/(chat/completions|completions)$")
_JSON = [(b"content-type", b"application/json")]
BODY_TIMEOUT_S = 30.0
"""Longest wait for the next part of a request body."""


class _UpstreamFailed(Exception):
    """The server broke the call off (connection lost, or it died mid-stream)."""


def _state(request: Request) -> ProxyState:
    return request.app.state.proxy


@router.get("/v1/models")
@router.get("/sessions/{session_id}/v1/models")
async def models(request: Request, session_id: str | None = None) -> Response:
    state = _state(request)
    await agent_session(state, bearer_of(request.headers.get("authorization")), session_id)
    names = sorted({u.model for u in state.pool.upstreams.values()})
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "seamless"} for name in names]})


class AgentAPI:
    """POST chat/completions and completions (at /v1 and under a session's base URL); any other
    request goes on to `app`, the FastAPI app whose lifespan makes the proxy's state."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _AGENT_POST.match(scope["path"])
            if match is not None:
                api: Api = "chat" if match.group(2) == "chat/completions" else "completion"
                await _call(self.app.state.proxy, api, match.group(1), scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _call(state: ProxyState, api: Api, path_session: str | None, scope: dict, receive: Callable,
                send: Callable) -> None:
    started = time.perf_counter()
    route = "chat" if api == "chat" else "completions"
    headers = dict(scope["headers"])
    try:
        session_id = await agent_session(state, bearer_of(headers.get(b"authorization", b"").decode("latin-1")),
                                         path_session)
        body = await _read_body(headers.get(b"content-length"), receive, state.settings.max_body_bytes)
        _validate(api, body)
        _check_n(body, state.settings.max_n)
        wants = AgentWants.of(body)
        await state.pool.wait_running()
        if wants.stream:
            upstream, response = await _open(state, api, body, session_id)
            stream = _stream_to_agent(state, api, body, wants, session_id, upstream, response)
            await _send_stream(stream, receive, send)
            state.metrics.observe(route, 200, time.perf_counter() - started)
            return
        recorder = await delivery.until_disconnect(_complete(state, api, body, session_id), receive)
        state.metrics.observe(route, 200, time.perf_counter() - started)
        await _send_json(send, 200, recorder.response(wants))
    except Exception as exc:  # every failure becomes an OpenAI-shaped error
        error = translate(exc)
        state.metrics.observe(route, error.status, time.perf_counter() - started)
        state.metrics.errors[error.type] += 1
        # a body cut off (too slow, too big) leaves the connection mid-request: close it
        await _send_json(send, error.status, error.body(), close=error.status in (408, 413))


async def _send_json(send: Callable, status: int, payload: dict[str, Any], close: bool = False) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    headers = [*_JSON, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"connection", b"close")] if close else headers})
    await send({"type": "http.response.body", "body": data})


async def _send_stream(stream: AsyncIterator[bytes], receive: Callable, send: Callable) -> None:
    """SSE to the agent. A disconnect stops the stream, which closes the upstream call (the
    server aborts the request) and records nothing."""

    async def pump() -> None:
        async with contextlib.aclosing(stream) as parts:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            async for part in parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            task.cancel()
        await asyncio.gather(pumping, watching, return_exceptions=True)
    if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
        # the response has started, so no error response can follow: log our bug, end the stream
        log.error("streaming to the agent failed", exc_info=pumping.exception())


async def _read_body(declared: bytes | None, receive: Callable, limit: int) -> dict[str, Any]:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared.decode()} bytes; the limit is {limit} "
                            "(proxy.max_body_bytes)")
    raw = bytearray()
    while True:
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a client that dribbles its body holds no slot
                message = await receive()
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s") from None
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client disconnected while sending the request")
        raw += message.get("body", b"")
        if len(raw) > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes (proxy.max_body_bytes)")
        if not message.get("more_body"):
            return parse_json_object(bytes(raw))


def _validate(api: Api, body: dict[str, Any]) -> None:
    """The checks the proxy itself relies on; everything else is the server's to judge."""
    if api == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects",
                           param="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(400, f"messages[{i}] must be an object with a string 'role'",
                               param=f"messages[{i}]")
    else:
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
            raise ApiError(400, "'prompt' must be a string, a list of strings or a list of token ids",
                           param="prompt")
    for name, kinds in (("n", int), ("max_tokens", int), ("max_completion_tokens", int),
                        ("temperature", (int, float)), ("top_p", (int, float)), ("stream", bool)):
        value = body.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and kinds is not bool):
            raise ApiError(400, f"'{name}' has the wrong type ({type(value).__name__})", param=name)
    if isinstance(body.get("n"), int) and body["n"] < 1:
        raise ApiError(400, "'n' must be at least 1", param="n")


def _check_n(body: dict[str, Any], max_n: int) -> None:
    """Bound what one call can make the proxy generate, hold and store (n choices, each recorded)."""
    prompt = body.get("prompt")
    # completions take a batch of prompts (a list of strings or of token-id lists): n choices each
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    for name in ("n", "best_of"):
        value = body.get(name)
        choices = prompts * (value if isinstance(value, int) and not isinstance(value, bool) else 1)
        if choices > max_n:
            raise ApiError(400, f"this call asks for {choices} choices ({prompts} prompt(s) x {name}={value}); "
                                f"this proxy allows at most {max_n} per call (proxy setting max_n): make "
                                "several calls instead", param=name)


async def _open(state: ProxyState, api: Api, body: dict[str, Any],
                session_id: str) -> tuple[Upstream, UpstreamResponse]:
    """Start the upstream stream on the session's server, failing over while none has answered."""
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    tried: set[str] = set()
    while True:
        try:
            upstream = state.pool.pick(session_id, exclude=tried)
        except UpstreamUnavailable:
            if not tried:
                # every server is down: wait a little for one to come back (a restart) before 503
                with contextlib.suppress(asyncio.TimeoutError):
                    await state.pool.wait_for_healthy(state.settings.failover_wait_s)
                    continue
            raise
        # counted from the pick, not from the answer: a burst of new sessions arrives before any
        # server has answered, and must still spread over the servers (least-loaded pick)
        upstream.inflight += 1
        upstream.calls += 1
        try:
            sent_body = upstream_body(api, body, upstream.model, state.pool.cache_salt)
            if api == "chat" and state.settings.token_in_token_out:
                await _token_in(state, session_id, upstream, body, sent_body)
            sent = json.dumps(sent_body, separators=(",", ":")).encode()
            response = await state.upstream_http.post(upstream.url + path, sent, state.settings.upstream_timeout_s)
        except (UpstreamConnectionError, UpstreamStreamError) as exc:
            upstream.inflight -= 1
            state.pool.mark_failed(upstream, f"{exc!r}")
            state.metrics.failovers += 1
            tried.add(upstream.url)
            state.pool.unpin(session_id)
            continue
        except BaseException:
            upstream.inflight -= 1
            raise
        if response.status_code != 200:
            upstream.inflight -= 1
            detail = await response.aread()
            await response.aclose()
            raise _upstream_error(response.status_code, detail)
        return upstream, response


async def _token_in(state: ProxyState, session_id: str, upstream: Upstream, body: dict[str, Any],
                    sent_body: dict[str, Any]) -> None:
    """Give the server the prompt as token ids when this call continues a recorded one."""
    recorded = await state.store.turns_with_requests(session_id)
    try:
        ids = await tito.prompt_ids(state.client, upstream.url, upstream.model, body, recorded)
    except (tito.TemplateDrift, httpx.HTTPError, KeyError, ValueError) as exc:
        state.metrics.token_in_fallbacks += 1
        log.info("session %s: rendering this call's prompt from messages (%s)", session_id, exc)
        return
    if ids is not None:
        state.metrics.token_in_prompts += 1
        sent_body["kv_transfer_params"] = {**(body.get("kv_transfer_params") or {}), "prompt_token_ids": ids}


def _upstream_error(status: int, detail: bytes) -> ApiError:
    """The server refused the request (prompt too long, bad token ids, ...): pass its reason on."""
    try:
        error = json.loads(detail).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (json.JSONDecodeError, AttributeError):
        message = detail.decode(errors="replace")[:2000]
    if status >= 500:
        return ApiError(502, f"the rollout server failed: {message}", "upstream_error")
    return ApiError(status, message or f"rejected by the rollout server ({status})")


async def _chunks(response: UpstreamResponse) -> AsyncIterator[dict[str, Any]]:
    """Parsed SSE chunks of an upstream stream, until [DONE].

    Events are split on raw bytes (vLLM sends one `data: {...}` line per event): several times
    cheaper than httpx's text line iterator, and this loop runs once per generated token.
    """
    done = False
    pending = b""
    try:
        # read to the very end, past [DONE]: a response left unread closes its connection
        # instead of returning it to the keep-alive pool (a new TCP connect per call)
        async for data in response.aiter_raw():
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if done or not event.startswith(b"data: "):
                    continue
                if event == b"data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(event[6:])
                if "error" in chunk and "choices" not in chunk:
                    raise _stream_error(chunk["error"])
                yield chunk
    except UpstreamStreamError as exc:
        raise _UpstreamFailed(str(exc)) from exc
    if not done:
        raise _UpstreamFailed("the stream ended without [DONE]")


def _stream_error(error: Any) -> ApiError:
    if isinstance(error, dict):
        return ApiError(int(error.get("code") or 500), error.get("message", str(error)), "upstream_error")
    return ApiError(500, str(error), "upstream_error")


async def _complete(state: ProxyState, api: Api, body: dict[str, Any], session_id: str) -> CallRecorder:
    """A whole call for a non-streaming agent; retried on another server if one dies mid-call."""
    while True:
        upstream, response = await _open(state, api, body, session_id)
        recorder = CallRecorder(api, session_id, upstream.url)
        try:
            async with contextlib.aclosing(_fold(state, session_id, upstream, response, recorder)) as chunks:
                async for _ in chunks:
                    pass
        except _UpstreamFailed:
            state.metrics.failovers += 1
            continue
        break
    async with contextlib.aclosing(_continue_aborted(state, api, body, session_id, recorder)) as rest:
        async for _ in rest:
            pass
    await _record(state, recorder, body)
    return recorder


async def _fold(state: ProxyState, session_id: str, upstream: Upstream, response: UpstreamResponse,
                recorder: CallRecorder) -> AsyncIterator[dict[str, Any]]:
    """The upstream's chunks, each folded into the recorder (stamped with the pool's version) first."""
    async with _upstream_call(state, session_id, upstream, response):
        async for chunk in _chunks(response):
            recorder.add_chunk(chunk, state.pool.version)
            yield chunk


@contextlib.asynccontextmanager
async def _upstream_call(state: ProxyState, session_id: str, upstream: Upstream,
                         response: UpstreamResponse) -> AsyncIterator[None]:
    """What ends every upstream call: a broken server leaves the rotation (and the session's pin),
    and the response is closed, which on a client disconnect also aborts the server's request."""
    try:
        yield
    except _UpstreamFailed as exc:
        state.pool.mark_failed(upstream, str(exc))
        state.pool.unpin(session_id)
        raise
    finally:
        upstream.inflight -= 1
        await response.aclose()


async def _continue_aborted(state: ProxyState, api: Api, body: dict[str, Any], session_id: str,
                            recorder: CallRecorder) -> AsyncIterator[dict[str, Any]]:
    """Finish the choices a server aborted (partial rollout): after resume, prompt + partial tokens
    go to any healthy server; yields the new chunks in the call's API shape, already recorded."""
    call_id = (recorder.first_chunk or {}).get("id", "")
    for _ in range(continuation.MAX_CONTINUATIONS):
        pending = continuation.aborted(recorder)
        if not pending:
            return
        await state.pool.wait_running()
        for index in pending:
            sent = continuation.continuation_body(api, body, recorder, index)
            if sent is None:  # the abort came with the last allowed token
                recorder.choices[index].finish_reason = "length"
                continue
            upstream, response = await _open(state, "completion", sent, session_id)
            state.pool.continuations += 1
            try:
                async with contextlib.aclosing(_fold_continuation(state, session_id, upstream, response,
                                                                  recorder, api, index, call_id)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            except _UpstreamFailed:
                state.metrics.failovers += 1  # tokens so far are kept; the next round continues them
        recorder.usage = continuation.usage_of(recorder)
    raise ApiError(502, f"the call was cut off more than {continuation.MAX_CONTINUATIONS} times by "
                        "weight updates; lower the update rate or use partial_rollout=keep", "upstream_error")


async def _fold_continuation(state: ProxyState, session_id: str, upstream: Upstream, response: UpstreamResponse,
                             recorder: CallRecorder, api: Api, index: int, call_id: str) -> AsyncIterator[dict[str, Any]]:
    async with _upstream_call(state, session_id, upstream, response):
        async for chunk in _chunks(response):
            if not chunk.get("choices"):
                continue  # its usage counts the partial tokens as prompt; the call's usage is rebuilt
            shaped = continuation.as_call_chunk(chunk, api, index, call_id)
            recorder.add_chunk(shaped, state.pool.version)
            yield shaped


async def _stream_to_agent(state: ProxyState, api: Api, body: dict[str, Any], wants: AgentWants,
                           session_id: str, upstream: Upstream, response: UpstreamResponse) -> AsyncIterator[bytes]:
    recorder = CallRecorder(api, session_id, upstream.url)

    def sse(chunk: dict[str, Any] | None) -> bytes:
        shown = None if chunk is None else recorder.agent_chunk(chunk, wants)
        return b"" if shown is None else b"data: " + json.dumps(shown, separators=(",", ":")).encode() + b"\n\n"

    try:
        async with contextlib.aclosing(_fold(state, session_id, upstream, response, recorder)) as chunks:
            async for chunk in chunks:
                if continuation.aborted(recorder):
                    # the rest comes from a continuation: hide the abort and the partial usage
                    chunk = None if not chunk.get("choices") else continuation.hide_abort(chunk)
                if part := sse(chunk):
                    yield part
        if continuation.aborted(recorder):
            async with contextlib.aclosing(_continue_aborted(state, api, body, session_id, recorder)) as rest:
                async for chunk in rest:
                    if part := sse(chunk):
                        yield part
            if wants.usage:
                yield sse({"id": (recorder.first_chunk or {}).get("id", ""), "choices": [],
                           "usage": recorder.usage})
        await _record(state, recorder, body)
        with delivery.voided_unless_delivered(state.voids, session_id, recorder.call_id):
            yield b"data: [DONE]\n\n"
    except (_UpstreamFailed, ApiError, SessionFinished) as exc:
        # tokens were already sent, so the call cannot move to another server: end it visibly
        error = translate(exc) if not isinstance(exc, _UpstreamFailed) else ApiError(
            502, f"the rollout server failed mid-stream: {exc}", "upstream_error")
        state.metrics.errors[error.type] += 1
        yield b"data: " + json.dumps(error.body()).encode() + b"\n\n"


async def _record(state: ProxyState, recorder: CallRecorder, body: dict[str, Any]) -> None:
    problem = recorder.check_complete()
    if problem is not None:
        raise ApiError(502, f"cannot record this call token-exactly: {problem}", "upstream_error")
    turns = recorder.turns()
    await delivery.record(state.store, state.voids, state.settings.store_timeout_s, recorder.session_id,
                          recorder.call_id, turns, body)
    state.metrics.prompt_tokens += recorder.prompt_tokens
    state.metrics.completion_tokens += sum(len(t.completion_token_ids) for t in turns)
