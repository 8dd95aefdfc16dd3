"""The agent-facing API: chat/completions, completions, models, and the routes served by
translating to those two (Responses, Anthropic messages, vLLM's token-in generate).

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
from seamless.proxy import anthropic_api, continuation, delivery, episodes, generate_api, responses_api, tito
from seamless.proxy.auth import agent_session, bearer_of
from seamless.proxy.errors import ApiError, parse_json_object, translate
from seamless.proxy.recording import RECEIVED_AT, AgentWants, Api, CallRecorder, upstream_body
from seamless.proxy.state import ProxyState
from seamless.proxy.upstream_http import UpstreamConnectionError, UpstreamResponse, UpstreamStreamError
from seamless.proxy.upstreams import Upstream
from seamless.traces.constraints import prompt_replacement

router = APIRouter()
log = logging.getLogger("seamless.proxy")

_AGENT_POST = re.compile(r"^(?:/sessions/([^/]+))?/(v1/chat/completions|v1/completions|v1/responses|v1/messages"
                         r"|inference/v1/generate)$")
_ROUTES = {"v1/chat/completions": "chat", "v1/completions": "completions", "v1/responses": "responses",
           "v1/messages": "messages", "inference/v1/generate": "generate"}
_JSON = [(b"content-type", b"application/json")]
_NO_DERENDER: set[str] = set()  # servers without /v1/chat/completions/derender
_RESPONSE_TTL_S = 24 * 3600  # how long previous_response_id can refer to a response
BODY_TIMEOUT_S = 30.0
"""Longest wait for the next part of a request body."""


class _UpstreamFailed(Exception):
    """The server broke the call off (connection lost, or it died mid-stream)."""


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
        body = await _read_body(headers.get(b"content-length"), receive, state.settings.max_body_bytes)
        if route in _ADAPTED:
            await _ADAPTED[route](state, session_id, body, receive, send)
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
        await _send_json(send, error.status, payload, close=error.status in (408, 413))


async def _chat_or_completion(api: Api, state: ProxyState, session_id: str, body: dict[str, Any],
                              receive: Callable, send: Callable) -> None:
    _validate(api, body)
    _check_n(body, state.settings.max_n)
    wants = AgentWants.of(body)
    await state.pool.wait_running()
    echo_texts = await _echo_texts(state, session_id, body) if api == "completion" and not wants.token_ids else None
    if wants.stream:
        upstream, response = await _open(state, api, body, session_id)
        shape = _ChatSSE(wants)
        stream = _stream_to_agent(state, api, body, session_id, upstream, response, shape, echo_texts)
        await _send_stream(stream, receive, send)
        return
    recorder = await delivery.until_disconnect(_complete(state, api, body, session_id, echo_texts), receive)
    await _send_json(send, 200, await _answer(state, api, body, recorder, wants))
    state.voids.delivered(recorder.call_id)


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
        raise _upstream_error(reply.status_code, reply.content)
    return reply.json()["prompt"]


async def _responses(state: ProxyState, session_id: str, body: dict[str, Any], receive: Callable,
                     send: Callable) -> None:
    """POST /v1/responses: run as the chat call vLLM's Responses route would make (responses_api)."""
    history = await _stored_response(state, session_id, body.get("previous_response_id"))
    chat = responses_api.to_chat(body, history)
    _validate("chat", chat)
    response_id = responses_api.new_id("resp")
    await state.pool.wait_running()
    if body.get("stream"):
        upstream, response = await _open(state, "chat", chat, session_id)
        shape = _ResponsesSSE(state, session_id, body, chat, response_id)
        await _send_stream(_stream_to_agent(state, "chat", chat, session_id, upstream, response, shape), receive, send)
        return
    recorder = await delivery.until_disconnect(_complete(state, "chat", chat, session_id), receive)
    wants = AgentWants(model=body.get("model"), stream=False, logprobs=True, token_ids=False, usage=True)
    result = responses_api.from_chat(body, response_id, await _answer(state, "chat", chat, recorder, wants))
    await _store_response(state, session_id, body, chat, result)
    await _send_json(send, 200, result)
    state.voids.delivered(recorder.call_id)


async def _messages(state: ProxyState, session_id: str, body: dict[str, Any], receive: Callable,
                    send: Callable) -> None:
    """POST /v1/messages (Anthropic): run as the chat call vLLM's Messages route makes (anthropic_api)."""
    chat = anthropic_api.to_chat(body)
    _validate("chat", chat)
    await state.pool.wait_running()
    if body.get("stream"):
        upstream, response = await _open(state, "chat", chat, session_id)
        shape = anthropic_api.SSE(body.get("model"))
        await _send_stream(_stream_to_agent(state, "chat", chat, session_id, upstream, response, shape), receive, send)
        return
    recorder = await delivery.until_disconnect(_complete(state, "chat", chat, session_id), receive)
    wants = AgentWants(model=body.get("model"), stream=False, logprobs=False, token_ids=False, usage=True)
    await _send_json(send, 200, anthropic_api.from_chat(await _answer(state, "chat", chat, recorder, wants),
                                                        body.get("model")))


async def _generate(state: ProxyState, session_id: str, body: dict[str, Any], receive: Callable,
                    send: Callable) -> None:
    """POST /inference/v1/generate (token in, token out): run as a completions call on the same
    token ids (generate_api)."""
    completion = generate_api.to_completion(body)
    _validate("completion", completion)
    _check_n(completion, state.settings.max_n)
    await state.pool.wait_running()
    if body.get("stream"):
        upstream, response = await _open(state, "completion", completion, session_id)
        shape = generate_api.SSE(body)
        stream = _stream_to_agent(state, "completion", completion, session_id, upstream, response, shape)
        await _send_stream(stream, receive, send)
        return
    recorder = await delivery.until_disconnect(_complete(state, "completion", completion, session_id), receive)
    upstream = state.pool.upstreams.get(recorder.upstream)
    await _send_json(send, 200, generate_api.response(body, recorder, body.get("model") or (
        upstream.model if upstream else "")))


def _response_key(state: ProxyState, session_id: str, response_id: str) -> str:
    # under the session: a response id from another session is simply not found
    return f"{state.settings.key_prefix}:responses:{session_id}:{response_id}"


async def _stored_response(state: ProxyState, session_id: str, response_id: Any) -> list[dict[str, Any]] | None:
    if response_id is None:
        return None
    if not isinstance(response_id, str):
        raise ApiError(400, "'previous_response_id' must be a string", param="previous_response_id")
    raw = await state.store.redis.get(_response_key(state, session_id, response_id))
    if raw is None:
        raise ApiError(404, f"response {response_id!r} is not stored in this session (was it made with "
                            "store=false, or by another session?)", "not_found_error", param="previous_response_id")
    return json.loads(raw)


async def _store_response(state: ProxyState, session_id: str, body: dict[str, Any], chat: dict[str, Any],
                          result: dict[str, Any]) -> None:
    if body.get("store", True) is False:
        return
    history = responses_api.history_of(chat, result["output"])
    await state.store.redis.set(_response_key(state, session_id, result["id"]), json.dumps(history),
                                ex=_RESPONSE_TTL_S)


async def _send_json(send: Callable, status: int, payload: dict[str, Any], close: bool = False) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    headers = [*_JSON, (b"content-length", str(len(data)).encode())]
    if status == 409:  # a finished session stays finished: the openai client retries 409 unless told not to
        headers.append((b"x-should-retry", b"false"))
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

    try:
        await delivery.until_disconnect(pump(), receive)
    except delivery.ClientGone:
        pass  # the stream is closed, and with it the upstream call
    except Exception:
        # the response has started, so no error response can follow: log our bug, end the stream
        log.error("streaming to the agent failed", exc_info=True)


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
    if body.get("stream_options") and not body.get("stream"):
        # vLLM refuses it too; the proxy streams from vLLM either way, so it must check for itself
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", param="stream_options")
    if (replaced := prompt_replacement(body)) is not None:
        raise ApiError(400, replaced[1], param=replaced[0])
    if body.get("prompt_logprobs") not in (None, 0):
        raise ApiError(400, "'prompt_logprobs' is not served through the seamless proxy (it records every call "
                            "from vLLM's stream, which has no prompt logprobs); for scoring use echo=true with "
                            "logprobs, which gives the prompt's logprobs", param="prompt_logprobs")


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
            sent_body = upstream_body(api, body, upstream.model, state.pool.cache_salt, state.settings.stream_interval)
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


async def _complete(state: ProxyState, api: Api, body: dict[str, Any], session_id: str,
                    echo_texts: dict[int, str] | None = None) -> CallRecorder:
    """A whole call for a non-streaming agent; retried on another server if one dies mid-call."""
    while True:
        upstream, response = await _open(state, api, body, session_id)
        recorder = CallRecorder(api, session_id, upstream.url, echo=api == "completion" and bool(body.get("echo")),
                                opened=response, echo_texts=echo_texts)
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
        recorder.continued = True
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


class _ChatSSE:
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


class _ResponsesSSE:
    """The Responses event stream of a chat stream (responses_api.EventStream)."""

    def __init__(self, state: ProxyState, session_id: str, body: dict[str, Any], chat: dict[str, Any],
                 response_id: str) -> None:
        self.state, self.session_id, self.body, self.chat = state, session_id, body, chat
        self.events = responses_api.EventStream(body, response_id)

    def start(self, recorder: CallRecorder) -> list[bytes]:
        self.recorder = recorder
        return self.events.start()

    def chunk(self, chunk: dict[str, Any] | None) -> list[bytes]:
        return [] if chunk is None else self.events.feed(chunk)

    async def end(self, continued: bool) -> list[bytes]:
        events, response = self.events.finish(self.recorder.usage)
        await _store_response(self.state, self.session_id, self.body, self.chat, response)
        return events

    def error(self, error: ApiError) -> bytes:
        return b"event: error\ndata: " + json.dumps({"type": "error", "sequence_number": self.events.sequence,
                                                      **error.body()["error"]}).encode() + b"\n\n"


async def _stream_to_agent(state: ProxyState, api: Api, body: dict[str, Any], session_id: str, upstream: Upstream,
                           response: UpstreamResponse,
                           shape: _ChatSSE | _ResponsesSSE | anthropic_api.SSE | generate_api.SSE,
                           echo_texts: dict[int, str] | None = None) -> AsyncIterator[bytes]:
    recorder = CallRecorder(api, session_id, upstream.url, echo=api == "completion" and bool(body.get("echo")),
                            opened=response, echo_texts=echo_texts)
    try:
        for part in shape.start(recorder):
            yield part
        async with contextlib.aclosing(_fold(state, session_id, upstream, response, recorder)) as chunks:
            async for chunk in chunks:
                if continuation.aborted(recorder):
                    # the rest comes from a continuation: hide the abort and the partial usage
                    chunk = None if not chunk.get("choices") else continuation.hide_abort(chunk)
                for part in shape.chunk(chunk):
                    yield part
        continued = bool(continuation.aborted(recorder))
        if continued:
            async with contextlib.aclosing(_continue_aborted(state, api, body, session_id, recorder)) as rest:
                async for chunk in rest:
                    for part in shape.chunk(chunk):
                        yield part
        await _record(state, recorder, body)
        with delivery.voided_unless_delivered(state.voids, session_id, recorder.call_id):
            for part in await shape.end(continued):
                yield part
    except (_UpstreamFailed, ApiError, SessionFinished) as exc:
        # tokens were already sent, so the call cannot move to another server: end it visibly
        error = translate(exc) if not isinstance(exc, _UpstreamFailed) else ApiError(
            502, f"the rollout server failed mid-stream: {exc}", "upstream_error")
        state.metrics.errors[error.type] += 1
        yield shape.error(error)


async def _answer(state: ProxyState, api: Api, body: dict[str, Any], recorder: CallRecorder,
                  wants: AgentWants) -> dict[str, Any]:
    """The non-streaming answer: what vLLM itself answers for these tokens (its derender route parses
    them with the non-streaming tool and reasoning parsers, which differ from the streaming ones,
    e.g. for a tool call cut off by max_tokens); assembled from the stream where vLLM has no such
    route (started without --enable-scale-out) or the call was continued after an abort."""
    assembled = recorder.response(wants)
    if api != "chat" or recorder.continued or len(recorder.choices) == 0:
        return assembled
    derendered = await _derender(state, body, recorder)
    if derendered is None:
        return assembled
    for mine, theirs in zip(assembled["choices"], derendered["choices"]):
        mine["message"] = theirs["message"]
        mine["finish_reason"] = theirs.get("finish_reason", mine["finish_reason"])
    return assembled


async def _derender(state: ProxyState, body: dict[str, Any], recorder: CallRecorder) -> dict[str, Any] | None:
    upstream = state.pool.upstreams.get(recorder.upstream)
    if upstream is None or upstream.url in _NO_DERENDER:
        return None
    choices = [{"index": i, "token_ids": t.token_ids, "finish_reason": t.finish_reason, "stop_reason": t.stop_reason}
               for i, t in sorted(recorder.choices.items())]
    request = {"model": upstream.model, "prompt_token_ids": recorder.prompt_token_ids,
               "generate_response": {"output_mode": "tokens", "choices": choices,
                                     "prompt_token_ids": recorder.prompt_token_ids},
               "chat_request": {**body, "model": upstream.model, "stream": False, "stream_options": None}}
    # through the proxy's own upstream client, as the call itself: on httpx this one request per
    # call cost the proxy more CPU than all the rest of the call (its connection pool's bookkeeping)
    sent = json.dumps(request, separators=(",", ":")).encode()
    try:
        response = await state.upstream_http.post(f"{upstream.url}/v1/chat/completions/derender", sent,
                                                  state.settings.upstream_timeout_s)
        try:
            detail = await response.aread()
        finally:
            await response.aclose()
    except (UpstreamConnectionError, UpstreamStreamError) as exc:
        log.warning("derender on %s failed (%r): answering from the stream", upstream.url, exc)
        return None
    if response.status_code in (404, 405, 501):
        _NO_DERENDER.add(upstream.url)  # a server without --enable-scale-out: do not ask again
        return None
    if response.status_code != 200:
        log.warning("derender on %s answered %s: %s", upstream.url, response.status_code,
                    detail[:300].decode(errors="replace"))
        return None
    return json.loads(detail)


async def _record(state: ProxyState, recorder: CallRecorder, body: dict[str, Any]) -> None:
    if body.get("max_tokens") == 0 or body.get("max_completion_tokens") == 0:
        return  # scoring a prompt (echo): nothing was generated, nothing to train on
    problem = recorder.check_complete()
    if problem is not None:
        raise ApiError(502, f"cannot record this call token-exactly: {problem}", "upstream_error")
    turns = recorder.turns()
    await delivery.record(state.store, state.voids, state.settings.store_timeout_s, recorder.session_id,
                          recorder.call_id, turns, body)
    state.metrics.prompt_tokens += recorder.prompt_tokens
    state.metrics.completion_tokens += sum(len(t.completion_token_ids) for t in turns)


_ADAPTED = {"responses": _responses, "messages": _messages, "generate": _generate}
"""Routes served by translating to the chat or completions path and back."""
