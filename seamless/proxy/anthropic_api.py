"""The Anthropic Messages API (`/v1/messages`) served on top of the chat route.

vLLM 0.32 serves `/v1/messages` by turning the request into a chat request and the chat answer
into a Message (its `anthropic/serving.py`). The proxy does the same (`to_chat` mirrors vLLM's
`to_chat_completion_request`, `from_chat` its `messages_full_converter`, `EventStream` its
`message_stream_converter`), so the call runs on the chat path: token ids, logprobs and weight
versions recorded, pause/resume and failover, and the agent gets the Message vLLM would send.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from seamless.proxy.errors import ApiError
from seamless.proxy.recording import CallRecorder

_ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                "rate_limit_error", "api_error", "overloaded_error"}
_BILLING_HEADER = "x-anthropic-billing-header"  # a per-request hash that defeats prefix caching (vLLM drops it)


def error_body(error: ApiError) -> dict[str, Any]:
    """An error in Anthropic's shape, which its SDK parses."""
    kind = error.type if error.type in _ERROR_TYPES else ("api_error" if error.status >= 500 else
                                                         "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request vLLM's Messages route would run for `body`."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        raise ApiError(400, "'max_tokens' is required (an integer), as in Anthropic's API", param="max_tokens")
    messages = _system(body.get("system"))
    for message in body["messages"]:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "every message must be an object with a string 'role'", param="messages")
        messages += _messages_of(message)
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages, "max_tokens": body["max_tokens"],
                            "max_completion_tokens": body["max_tokens"]}
    for ours, theirs in (("stop", "stop_sequences"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("top_k", "top_k"), ("cache_salt", "cache_salt"), ("vllm_xargs", "vllm_xargs"),
                         ("chat_template_kwargs", "chat_template_kwargs"),
                         ("kv_transfer_params", "kv_transfer_params")):
        if body.get(theirs) is not None:
            chat[ours] = body[theirs]
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("json_schema"):
        chat["response_format"] = {"type": fmt.get("type"), "json_schema": {"schema": fmt["json_schema"],
                                                                           "name": fmt.get("type")}}
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled" and thinking.get("budget_tokens") is not None:
        chat["thinking_token_budget"] = thinking["budget_tokens"]
    _tools(body, chat)
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        parts = [system] if system else []
    else:
        parts = [b.get("text") for b in system or [] if isinstance(b, dict) and b.get("type") == "text"
                 and b.get("text") and not b["text"].startswith(_BILLING_HEADER)]
    return [{"role": "system", "content": "".join(parts)}] if parts else []


def _messages_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become tool messages (before it)."""
    role, content = message["role"], message.get("content")
    if role == "system":
        return _system(content)
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    before: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for block in content or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and block.get("text"):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and block.get("source"):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block["source"])}})
        elif kind == "thinking" and block.get("thinking") is not None:
            reasoning.append(block["thinking"])
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name") or "",
                                       "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            before.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "",
                           "content": _tool_text(block.get("content"))})
        elif kind == "tool_result":
            parts.append({"type": "text", "text": f"Tool result: {block.get('content') or ''}"})
        elif kind not in ("redacted_thinking", "tool_reference", "text"):
            raise ApiError(400, f"content block type {kind!r} is not supported through the seamless proxy",
                           param="messages")
    chat: dict[str, Any] = {"role": role}
    if reasoning:
        chat["reasoning"] = "".join(reasoning)
    if calls:
        chat["tool_calls"] = calls
    if parts:
        chat["content"] = parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts
    empty_user = role == "user" and "content" not in chat
    return before if empty_user else [*before, chat]


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"
    return source.get("url", "")


def _tool_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(item.get("text", "") for item in content or [] if isinstance(item, dict)
                     and item.get("type") == "text")


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        chat["parallel_tool_calls"] = not choice.get("disable_parallel_tool_use", False)
        kind = choice.get("type")
        chat["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name")}} if kind == "tool"
                               else {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto"))
    if body.get("tools") is None:
        return
    chat["tools"] = [{"type": "function", "function": {k: v for k, v in {
        "name": tool.get("name"), "description": tool.get("description"), "parameters": tool.get("input_schema"),
        "strict": tool.get("strict")}.items() if v is not None}} for tool in body["tools"] if isinstance(tool, dict)]
    chat.setdefault("tool_choice", "auto")


# the answer -----------------------------------------------------------------------------------


def stop_reason(finish_reason: str | None, stop: Any, tool_used: bool,
                tool_complete: bool) -> tuple[str | None, str | None]:
    """Anthropic's (stop_reason, stop_sequence) of a chat finish (vLLM's _to_anthropic_stop_reason)."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason not in ("stop", "tool_calls"):
        return None, None
    if tool_complete:
        return "tool_use", None
    if isinstance(stop, str):
        return "stop_sequence", stop
    if finish_reason == "tool_calls" or tool_used:
        return "tool_use", None
    return "end_turn", None


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    chat_usage = chat_usage or {}
    usage_out: dict[str, Any] = {"input_tokens": chat_usage.get("prompt_tokens", 0),
                                 "output_tokens": chat_usage.get("completion_tokens") or 0}
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        usage_out["input_tokens"] = max(0, usage_out["input_tokens"] - cached)
        usage_out["cache_read_input_tokens"] = cached
    return usage_out


def from_chat(chat: dict[str, Any], model: Any) -> dict[str, Any]:
    """The Message of a non-streaming chat answer (one choice)."""
    choice = chat["choices"][0]
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": chat.get("id", "")})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError:
            raise ApiError(500, f"the tool call's arguments are not JSON: {function.get('arguments')!r} "
                                "(vLLM's own Messages route fails on them too)", "api_error") from None
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), bool(calls), bool(calls))
    return {"id": chat.get("id", ""), "type": "message", "role": "assistant", "model": model or chat.get("model"),
            "content": content or [{"type": "text", "text": ""}], "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage(chat.get("usage"))}


class EventStream:
    """Chat stream chunks in, Anthropic SSE events out: message_start, content blocks (text,
    thinking, tool_use with input_json deltas), message_delta with the stop reason, message_stop."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.started = False
        self.index = 0
        self.block: str | None = None  # the open block's type
        self.tool_id: str | None = None
        self.tool_ids: dict[int, str] = {}
        self.tool_args: list[str] = []
        self.tool_used = False
        self.pending: list[str] = []  # text that came inside a tool_use block: its own block after it
        self.finish_reason: str | None = None
        self.stop: Any = None

    @staticmethod
    def _event(kind: str, **fields: Any) -> bytes:
        data = json.dumps({"type": kind, **fields}, separators=(",", ":")).encode()
        return f"event: {kind}\ndata: ".encode() + data + b"\n\n"

    def _start(self, chunk: dict[str, Any]) -> bytes:
        # as vLLM: the message opens with the first chunk (the role), input tokens counted
        self.started = True
        return self._event("message_start", message={
            "id": chunk.get("id", ""), "type": "message", "role": "assistant", "content": [], "model": self.model,
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": len(chunk.get("prompt_token_ids") or []), "output_tokens": 0}})

    def _open(self, block: dict[str, Any]) -> list[bytes]:
        events = self._flush()
        self.block = block["type"]
        self.tool_id = block.get("id")
        return [*events, self._event("content_block_start", index=self.index, content_block=block)]

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        events = []
        if self.block == "thinking":
            events.append(self._delta({"type": "signature_delta", "signature": secrets.token_hex(16)}))
        events.append(self._event("content_block_stop", index=self.index))
        self.block, self.tool_id = None, None
        self.index += 1
        return events

    def _flush(self) -> list[bytes]:
        """Close the open block, then give text held back during a tool_use block its own block."""
        events, text = self._close(), "".join(self.pending)
        self.pending.clear()
        if not text:
            return events
        events.append(self._event("content_block_start", index=self.index, content_block={"type": "text", "text": ""}))
        self.block = "text"
        return [*events, self._delta({"type": "text_delta", "text": text}), *self._close()]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if not self.started:
            return [self._start(chunk)]
        events: list[bytes] = []
        for choice in (chunk.get("choices") or [])[:1]:
            if choice.get("finish_reason") is not None:
                self.finish_reason, self.stop = choice["finish_reason"], choice.get("stop_reason")
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                if self.block != "thinking":
                    events += self._open({"type": "thinking", "thinking": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            if delta.get("content") and self.block == "tool_use":
                self.pending.append(delta["content"])
            elif delta.get("content"):
                if self.block != "text":
                    events += self._open({"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
        return events

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", index=self.index, delta=delta)

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        function = call.get("function") or {}
        if call.get("id") is not None:
            self.tool_ids[call.get("index", 0)] = call["id"]
            if self.tool_id != call["id"] and function.get("name") is not None:
                self.tool_used, self.tool_args = True, []
                events += self._open({"type": "tool_use", "id": call["id"], "name": function["name"], "input": {}})
        call_id = call.get("id") or self.tool_ids.get(call.get("index", 0))
        if function.get("arguments") and call_id is not None and call_id == self.tool_id:
            self.tool_args.append(function["arguments"])
            events.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return events

    def finish(self, chat_usage: dict[str, Any] | None) -> list[bytes]:
        complete = self.tool_used and _is_json("".join(self.tool_args))
        reason, sequence = stop_reason(self.finish_reason or "stop", self.stop, self.tool_used, complete)
        return [*self._flush(),
                self._event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                            usage=usage(chat_usage)),
                self._event("message_stop")]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


class SSE:
    """The Anthropic event stream of a chat stream (EventStream)."""

    def __init__(self, model: Any) -> None:
        self.events = EventStream(model)

    def start(self, recorder: CallRecorder) -> list[bytes]:
        self.recorder = recorder
        return []

    def chunk(self, chunk: dict[str, Any] | None) -> list[bytes]:
        return [] if chunk is None else self.events.feed(chunk)

    async def end(self, continued: bool) -> list[bytes]:
        return self.events.finish(self.recorder.usage)

    def error(self, error: ApiError) -> bytes:
        return b"event: error\ndata: " + json.dumps(error_body(error)).encode() + b"\n\n"
