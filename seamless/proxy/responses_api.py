"""The Responses API (`/v1/responses`) served on top of the chat route.

vLLM 0.32 serves `/v1/responses` itself, but it cannot return what the proxy records: it gives the
prompt and output token ids (`enable_response_messages`) and logprobs only for `output_text`
tokens, none for tool-call or reasoning tokens. So the proxy turns a Responses request into the
chat request vLLM's own Responses route builds (same messages, same template: `to_chat` mirrors
vLLM's `construct_input_messages`), runs it on the chat path (token ids, logprobs, weight
versions, pause/resume, failover), and turns the chat answer back into a Response object, or
into the Responses event stream (`EventStream`).

`previous_response_id` works within the session that made the response: the proxy keeps each
stored response's conversation in Redis under the session, so one session cannot read another's.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from seamless.proxy.errors import ApiError

# sampling fields that mean the same on both routes
_SAME = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "presence_penalty",
         "frequency_penalty", "repetition_penalty", "logit_bias", "ignore_eos", "skip_special_tokens",
         "include_stop_str_in_output", "parallel_tool_calls", "chat_template_kwargs", "structured_outputs",
         "cache_salt", "priority", "user", "metadata", "kv_transfer_params", "vllm_xargs")
_UNSUPPORTED = ("background", "previous_input_messages", "prompt", "conversation")
_LOGPROBS = "message.output_text.logprobs"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The chat request that vLLM's Responses route would run for `body`; `history` is the stored
    conversation of `previous_response_id` (its messages and its answer)."""
    for name in _UNSUPPORTED:
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported through the seamless proxy; send the whole input",
                           param=name)
    if "input" not in body:
        raise ApiError(400, "'input' is required: a string or a list of input items", param="input")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += [m for m in history or [] if m.get("role") != "system"]  # instructions do not carry over
    messages += input_messages(body["input"])
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    chat.update({k: body[k] for k in _SAME if body.get(k) is not None})
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    tools = [_chat_tool(t) for t in body.get("tools") or []]
    choice = body.get("tool_choice", "auto")
    if tools:
        chat["tools"] = tools
        chat["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name")}}
                               if isinstance(choice, dict) else choice)
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.get("name", "schema"), "schema": fmt.get("schema"), "strict": fmt.get("strict")}}
    elif fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if _LOGPROBS in (body.get("include") or []):
        chat["logprobs"] = True
        chat["top_logprobs"] = body.get("top_logprobs") or 0
    return chat


def _chat_tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise ApiError(400, f"tool type {kind!r} is not supported; only function tools "
                            "({'type': 'function', 'name': ..., 'parameters': ...}) are", param="tools")
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type" and v is not None}}


def input_messages(items: Any) -> list[dict[str, Any]]:
    """Chat messages of a Responses `input` (vLLM's construct_chat_messages_with_tool_call): a
    function call joins the assistant message before it; reasoning and text join it too."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ApiError(400, "'input' must be a string or a list of input items", param="input")
    messages: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(400, "every input item must be an object", param="input")
        _add_item(messages, item)
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    last = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
        if last is not None:
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append({"role": "tool", "content": output if isinstance(output, str) else json.dumps(output),
                         "tool_call_id": item.get("call_id")})
    elif kind == "reasoning":
        parts = item.get("content") or item.get("summary") or []
        text = parts[0].get("text", "") if parts else ""
        if last is not None and last.get("reasoning") is None:
            last["reasoning"] = text
        else:
            messages.append({"role": "assistant", "reasoning": text})
    elif kind == "message" and item.get("role") == "assistant":
        content = item.get("content")
        text = content if isinstance(content, str) else (content[0].get("text") if content else "")
        if last is not None and last.get("content") is None:
            last["content"] = text
        else:
            messages.append({"role": "assistant", "content": text})
    elif kind == "message":
        messages.append({k: v for k, v in item.items() if k not in ("type", "id", "status")})
    else:
        raise ApiError(400, f"input item type {kind!r} is not supported", param="input")


# the answer -----------------------------------------------------------------------------------


def output_items(message: dict[str, Any], logprobs: list[Any] | None) -> list[dict[str, Any]]:
    """Response output items of one chat answer: reasoning, then text, then function calls."""
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    if reasoning:
        items.append({"id": new_id("rs"), "type": "reasoning", "summary": [],
                      "content": [{"type": "reasoning_text", "text": reasoning}]})
    if message.get("content"):
        items.append(_message_item(new_id("msg"), message["content"], logprobs, "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append({"id": new_id("fc"), "type": "function_call", "status": "completed",
                      "call_id": call.get("id") or new_id("call"), "name": function.get("name", ""),
                      "arguments": function.get("arguments", "")})
    return items


def _message_item(item_id: str, text: str, logprobs: list[Any] | None, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         **({"logprobs": _logprobs(logprobs)} if logprobs is not None else {})}]}


def _logprobs(entries: list[Any]) -> list[dict[str, Any]]:
    return [{"token": e.get("token", ""), "logprob": e.get("logprob"), "bytes": e.get("bytes") or [],
             "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob"), "bytes": t.get("bytes") or []}
                              for t in e.get("top_logprobs") or []]} for e in entries]


def response_object(body: dict[str, Any], response_id: str, created: int, output: list[dict[str, Any]],
                    finish_reason: str | None, usage: dict[str, Any] | None, status: str | None = None) -> dict[str, Any]:
    """A Response as vLLM's route fills it."""
    status = status or ("incomplete" if finish_reason == "length" else "completed")
    return {
        "id": response_id, "object": "response", "created_at": created, "model": body.get("model") or "",
        "status": status, "output": output, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "max_output_tokens": body.get("max_output_tokens"), "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning"), "text": body.get("text"), "truncation": body.get("truncation", "disabled"),
        "top_logprobs": body.get("top_logprobs"), "user": body.get("user"), "background": False,
        "service_tier": body.get("service_tier", "auto"), "store": body.get("store", True),
        "usage": _usage(usage) if status != "in_progress" else None,
    }


def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": cached}, "output_tokens_details": {"reasoning_tokens": 0}}


def from_chat(body: dict[str, Any], response_id: str, chat: dict[str, Any]) -> dict[str, Any]:
    """The Response of a non-streaming chat answer (one choice)."""
    choice = chat["choices"][0]
    logprobs = (choice.get("logprobs") or {}).get("content") if _LOGPROBS in (body.get("include") or []) else None
    return response_object(body, response_id, int(chat.get("created") or time.time()),
                           output_items(choice.get("message") or {}, logprobs), choice.get("finish_reason"),
                           chat.get("usage"))


def history_of(chat_body: dict[str, Any], output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `previous_response_id` continues: the call's messages and its answer as chat messages."""
    return [*chat_body["messages"], *input_messages(output)]


class EventStream:
    """Chat stream chunks in, Responses SSE events out (created, item/part added, deltas, done,
    completed), numbered as the OpenAI SDK expects."""

    def __init__(self, body: dict[str, Any], response_id: str) -> None:
        self.body = body
        self.response_id = response_id
        self.created = int(time.time())
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # output items so far (the open one last)
        self.open: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its output item
        self.logprobs = _LOGPROBS in (body.get("include") or [])
        self.finish_reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def start(self) -> list[bytes]:
        shell = response_object(self.body, self.response_id, self.created, [], None, None, "in_progress")
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"], (choice.get("logprobs") or {}).get("content") or [])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return events

    def _text(self, text: str, entries: list[Any]) -> list[bytes]:
        events = []
        if self.open is None or self.open["type"] != "message":
            events += self._close()
            self.open = _message_item(new_id("msg"), "", [] if self.logprobs else None, "in_progress")
            self.items.append(self.open)
            events.append(self._event("response.output_item.added", output_index=len(self.items) - 1,
                                      item={**self.open, "content": []}))
            events.append(self._event("response.content_part.added", output_index=len(self.items) - 1,
                                      item_id=self.open["id"], content_index=0,
                                      part={"type": "output_text", "text": "", "annotations": []}))
        part = self.open["content"][0]
        part["text"] += text
        logprobs = _logprobs(entries) if self.logprobs else []
        if self.logprobs:
            part["logprobs"] += logprobs
        events.append(self._event("response.output_text.delta", output_index=len(self.items) - 1,
                                  item_id=self.open["id"], content_index=0, delta=text, logprobs=logprobs))
        return events

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        events = []
        function = call.get("function") or {}
        item = self.calls.get(call.get("index", 0))
        if item is None:
            events += self._close()
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                    "call_id": call.get("id") or new_id("call"), "name": function.get("name") or "", "arguments": ""}
            self.calls[call.get("index", 0)] = self.open = item
            self.items.append(item)
            events.append(self._event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item)))
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(self._event("response.function_call_arguments.delta", output_index=self.items.index(item),
                                      item_id=item["id"], delta=function["arguments"]))
        return events

    def _close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.items.index(item)
        item["status"] = "completed"
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", output_index=index, item_id=item["id"],
                                      content_index=0, text=part["text"], logprobs=part.get("logprobs") or []))
            events.append(self._event("response.content_part.done", output_index=index, item_id=item["id"],
                                      content_index=0, part=part))
        else:
            events.append(self._event("response.function_call_arguments.done", output_index=index,
                                      item_id=item["id"], name=item["name"], arguments=item["arguments"]))
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def finish(self, usage: dict[str, Any] | None) -> tuple[list[bytes], dict[str, Any]]:
        """The closing events and the whole Response (also for `previous_response_id`)."""
        events = self._close()
        response = response_object(self.body, self.response_id, self.created, self.items, self.finish_reason, usage)
        events.append(self._event("response.completed", response=response))
        return events, response
