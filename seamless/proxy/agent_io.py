"""The agent routes' side of the ASGI exchange: reading and checking a request body, sending a JSON
answer or an SSE stream. Shared by every generating route (openai_routes, adapted_routes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from seamless.proxy import delivery
from seamless.proxy.errors import ApiError, parse_json_object
from seamless.proxy.recording import Api
from seamless.traces.constraints import prompt_replacement

log = logging.getLogger("seamless.proxy")

_JSON = [(b"content-type", b"application/json")]
BODY_TIMEOUT_S = 30.0
"""Longest wait for the next part of a request body."""


async def send_json(send: Callable, status: int, payload: dict[str, Any], close: bool = False) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    headers = [*_JSON, (b"content-length", str(len(data)).encode())]
    if status == 409:  # a finished session stays finished: the openai client retries 409 unless told not to
        headers.append((b"x-should-retry", b"false"))
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"connection", b"close")] if close else headers})
    await send({"type": "http.response.body", "body": data})


async def send_answer(send: Callable, payload: dict[str, Any], voids: delivery.VoidLedger, call_id: str) -> None:
    """A recorded call's whole answer to its agent. Once sent, the call is no longer in doubt: one left
    in doubt is voided by the next proxy that finds this worker gone, though its agent got it."""
    await send_json(send, 200, payload)
    voids.delivered(call_id)


async def send_stream(stream: AsyncIterator[bytes], receive: Callable, send: Callable) -> None:
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


async def read_body(declared: bytes | None, receive: Callable, limit: int) -> dict[str, Any]:
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


def validate(api: Api, body: dict[str, Any]) -> None:
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


def check_n(body: dict[str, Any], max_n: int) -> None:
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
