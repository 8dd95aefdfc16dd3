"""The routes served by translating to the chat or completions path and back: OpenAI's Responses
(`responses_api`), Anthropic's messages (`anthropic_api`) and vLLM's token-in generate
(`generate_api`). Each runs as the call vLLM's own route would make, so it is recorded like any
chat or completions call."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from seamless.proxy import anthropic_api, delivery, generate_api, responses_api
from seamless.proxy.agent_io import check_n, send_answer, validate
from seamless.proxy.answers import answer
from seamless.proxy.calls import complete, stream_call
from seamless.proxy.errors import ApiError
from seamless.proxy.recording import AgentWants, CallRecorder
from seamless.proxy.state import ProxyState

_RESPONSE_TTL_S = 24 * 3600  # how long previous_response_id can refer to a response


async def responses(state: ProxyState, session_id: str, body: dict[str, Any], receive: Callable,
                     send: Callable) -> None:
    """POST /v1/responses: run as the chat call vLLM's Responses route would make (responses_api)."""
    history = await _stored_response(state, session_id, body.get("previous_response_id"))
    chat = responses_api.to_chat(body, history)
    validate("chat", chat)
    response_id = responses_api.new_id("resp")
    await state.pool.wait_running()
    if body.get("stream"):
        await stream_call(state, "chat", chat, session_id, ResponsesSSE(state, session_id, body, chat, response_id),
                          receive, send)
        return
    recorder = await delivery.until_disconnect(complete(state, "chat", chat, session_id), receive)
    wants = AgentWants(model=body.get("model"), stream=False, logprobs=True, token_ids=False, usage=True)
    result = responses_api.from_chat(body, response_id, await answer(state, "chat", chat, recorder, wants))
    await _store_response(state, session_id, body, chat, result)
    await send_answer(send, result, state.voids, recorder.call_id)


async def messages(state: ProxyState, session_id: str, body: dict[str, Any], receive: Callable,
                    send: Callable) -> None:
    """POST /v1/messages (Anthropic): run as the chat call vLLM's Messages route makes (anthropic_api)."""
    chat = anthropic_api.to_chat(body)
    validate("chat", chat)
    await state.pool.wait_running()
    if body.get("stream"):
        await stream_call(state, "chat", chat, session_id, anthropic_api.SSE(body.get("model")), receive, send)
        return
    recorder = await delivery.until_disconnect(complete(state, "chat", chat, session_id), receive)
    wants = AgentWants(model=body.get("model"), stream=False, logprobs=False, token_ids=False, usage=True)
    reply = anthropic_api.from_chat(await answer(state, "chat", chat, recorder, wants), body.get("model"))
    await send_answer(send, reply, state.voids, recorder.call_id)


async def generate(state: ProxyState, session_id: str, body: dict[str, Any], receive: Callable,
                    send: Callable) -> None:
    """POST /inference/v1/generate (token in, token out): run as a completions call on the same
    token ids (generate_api)."""
    completion = generate_api.to_completion(body)
    validate("completion", completion)
    check_n(completion, state.settings.max_n)
    await state.pool.wait_running()
    if body.get("stream"):
        await stream_call(state, "completion", completion, session_id, generate_api.SSE(body), receive, send)
        return
    recorder = await delivery.until_disconnect(complete(state, "completion", completion, session_id), receive)
    upstream = state.pool.upstreams.get(recorder.upstream)
    await send_answer(send, generate_api.response(body, recorder, body.get("model") or (
        upstream.model if upstream else "")), state.voids, recorder.call_id)


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


class ResponsesSSE:
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


ADAPTED = {"responses": responses, "messages": messages, "generate": generate}
"""Routes served by translating to the chat or completions path and back."""
