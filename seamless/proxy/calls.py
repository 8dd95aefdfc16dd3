"""One generating call on a rollout server, for every agent route: open the upstream stream on the
session's server (failing over while none has answered), fold its chunks into a `CallRecorder`,
continue choices a weight update aborted, record the turns, and answer the agent — whole
(`complete`, then `answers.answer`) or as a stream in the shape its route speaks (`stream_call`: token
by token, `stream_to_agent`; or, for a call merged with its group's (coalesce), once it is whole).

A turn is recorded once the call completes, before the agent sees the end of the response, so a
turn the agent got is always in the store; a call the agent abandons records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx

from seamless.errors import SessionFinished, UpstreamUnavailable
from seamless.proxy import coalesce, continuation, delivery, tito
from seamless.proxy.agent_io import send_stream
from seamless.proxy.errors import ApiError, translate
from seamless.proxy.recording import Api, CallRecorder, upstream_body
from seamless.proxy.state import ProxyState
from seamless.proxy.upstream_http import UpstreamConnectionError, UpstreamResponse, UpstreamStreamError
from seamless.proxy.upstreams import Upstream

log = logging.getLogger("seamless.proxy")

class Shape(Protocol):
    """How a route shows a streamed call to its agent (chat SSE, Responses events, Anthropic events, ...)."""

    def start(self, recorder: CallRecorder) -> list[bytes]: ...

    def chunk(self, chunk: dict[str, Any] | None) -> list[bytes]: ...

    async def end(self, continued: bool) -> list[bytes]: ...

    def error(self, error: ApiError) -> bytes: ...


class _UpstreamFailed(Exception):
    """The server broke the call off (connection lost, or it died mid-stream)."""


async def open_call(state: ProxyState, api: Api, body: dict[str, Any],
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
            raise upstream_error(response.status_code, detail)
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


def upstream_error(status: int, detail: bytes) -> ApiError:
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


def _merges(state: ProxyState, api: Api, body: dict[str, Any], session_id: str) -> bool:
    """Whether this call waits for identical calls of its group to share one upstream request."""
    return state.coalescer is not None and state.coalescer.expects(session_id) and coalesce.mergeable(api, body)


async def stream_call(state: ProxyState, api: Api, body: dict[str, Any], session_id: str, shape: Shape,
                      receive: Callable, send: Callable, echo_texts: dict[int, str] | None = None) -> None:
    """A call for an agent that streams: straight from the server, token by token; or, when it merges
    with its group's identical first calls (coalesce), the agent's choice of the merged call, as a
    stream once that call is whole (waiting for the group costs less than a request of its own)."""
    if not _merges(state, api, body, session_id):
        upstream, response = await open_call(state, api, body, session_id)
        await send_stream(stream_to_agent(state, api, body, session_id, upstream, response, shape, echo_texts),
                          receive, send)
        return
    recorder = await delivery.until_disconnect(complete(state, api, body, session_id, echo_texts), receive)
    replay = _Replay(state, recorder, shape)
    await send_stream(replay.parts(), receive, send)
    if not replay.began:  # the agent left before its stream began: the recorded call never reached it
        state.voids.void(session_id, recorder.call_id)


class _Replay:
    """A recorded one-choice chat call as its agent's stream: the answer in one delta, then its end.
    The call was recorded before the first byte, so it is voided unless the end reaches the agent."""

    def __init__(self, state: ProxyState, recorder: CallRecorder, shape: Shape) -> None:
        self.state, self.recorder, self.shape = state, recorder, shape
        self.began = False

    async def parts(self) -> AsyncIterator[bytes]:
        self.began = True
        with delivery.voided_unless_delivered(self.state.voids, self.recorder.session_id, self.recorder.call_id):
            for part in self.shape.start(self.recorder):
                yield part
            for chunk in _whole_chunks(self.recorder):
                for part in self.shape.chunk(chunk):
                    yield part
            for part in await self.shape.end(False):
                yield part


def _whole_chunks(recorder: CallRecorder) -> list[dict[str, Any]]:
    """The chunks of a whole one-choice chat call, as vLLM would stream them in one go: the answer's
    delta (text, reasoning, tool calls; with its logprobs and token ids, which the shape keeps only
    when the agent asked), the finish, the usage."""
    [trace] = recorder.choices.values()
    first = recorder.first_chunk or {}
    head = {"id": first.get("id", ""), "object": "chat.completion.chunk",
            "created": first.get("created", int(time.time())), "model": first.get("model", "")}
    delta = trace.message()  # as a stream sends it: tool calls with their index, no text beside them, "" for none
    if trace.tool_calls:
        delta["tool_calls"] = [{"index": k, **trace.tool_calls[k]} for k in sorted(trace.tool_calls)]
    if not trace.text:
        if trace.tool_calls:
            del delta["content"]
        else:
            delta["content"] = ""
    answer = {"index": 0, "delta": delta, "logprobs": {"content": trace.logprob_entries}, "finish_reason": None,
              "token_ids": trace.token_ids}
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": trace.finish_reason,
              "stop_reason": trace.stop_reason}
    return [{**head, "prompt_token_ids": recorder.prompt_token_ids, "choices": [answer]},
            {**head, "choices": [finish]}, {**head, "choices": [], "usage": recorder.usage}]


async def complete(state: ProxyState, api: Api, body: dict[str, Any], session_id: str,
                   echo_texts: dict[int, str] | None = None) -> CallRecorder:
    """A whole call, recorded; identical calls of other sessions arriving together may share its
    upstream request (coalesce)."""
    if _merges(state, api, body, session_id):
        recorder = await state.coalescer.call(body, session_id, lambda sent, sid: generate(state, api, sent, sid))
        state.pool.pin(session_id, recorder.upstream)  # its next calls find the prompt in that server's cache
    else:
        recorder = await generate(state, api, body, session_id, echo_texts)
    await _record(state, recorder, body)
    return recorder


async def generate(state: ProxyState, api: Api, body: dict[str, Any], session_id: str,
                   echo_texts: dict[int, str] | None = None) -> CallRecorder:
    """A whole call, not yet recorded; retried on another server if one dies mid-call."""
    while True:
        upstream, response = await open_call(state, api, body, session_id)
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
            upstream, response = await open_call(state, "completion", sent, session_id)
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


async def stream_to_agent(state: ProxyState, api: Api, body: dict[str, Any], session_id: str, upstream: Upstream,
                           response: UpstreamResponse,
                           shape: Shape,
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
