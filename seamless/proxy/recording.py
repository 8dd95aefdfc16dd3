"""Turning vLLM's streamed chunks into token-exact turns and into the response the agent asked for.

The proxy always asks the server for a stream with `return_token_ids` and logprobs, whatever the
agent asked: streaming is what lets it stamp every token with the weight version current when
the token arrived (a call that spans pause → weight update → resume gets two versions), and it
is also where the partial tokens of an interrupted call live. The agent then gets either the
same stream, less the fields it did not ask for, or one assembled non-streaming response.
"""

from __future__ import annotations

import contextvars
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from seamless.types import Turn

if TYPE_CHECKING:
    from seamless.proxy.upstream_http import UpstreamResponse

Api = Literal["chat", "completion"]

RECEIVED_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar("received_at", default=None)
"""Wall clock when the agent's request reached the proxy; the route sets it on arrival, so a call's
trace counts the proxy's queueing (a paused pool, failover) and vLLM's as LLM time, not agent time."""

# fields the proxy adds to upstream requests; removed from what the agent sees unless it asked
_ADDED_TOP = ("prompt_token_ids",)
_ADDED_CHOICE = ("token_ids", "prompt_token_ids")  # completions put prompt ids on each choice


@dataclass
class ChoiceTrace:
    """What one choice produced so far."""

    prompt_token_ids: list[int] | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: Any = None
    text: str = ""
    reasoning: str = ""
    role: str = "assistant"
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprob_entries: list[Any] = field(default_factory=list)  # as the API returned them (chat)
    completion_logprobs: dict[str, list] = field(default_factory=dict)  # completions API shape
    echo_skipped: int = 0  # prompt logprobs skipped from the first chunk (completions with echo)

    def message(self) -> dict[str, Any]:
        """The chat message this choice produced (whole answers; a replayed stream's one delta)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text or None}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[k] for k in sorted(self.tool_calls)]
        return message


class CallRecorder:
    """Accumulates the chunks of one upstream call (all its choices)."""

    def __init__(self, api: Api, session_id: str, upstream: str, echo: bool = False,
                 opened: UpstreamResponse | None = None, echo_texts: dict[int, str] | None = None):
        self.api = api
        self.echo = echo
        """Completions with echo: each choice's first chunk starts with the prompt's logprobs (its
        token_ids are the generated ones only; the prompt's come as prompt_token_ids)."""
        self.echo_texts = echo_texts or {}
        """Choice index -> the prompt text vLLM would echo. Asked for token ids (as the proxy always
        asks) vLLM echoes no prompt text; this puts it back for an agent that did not ask for them."""
        self.session_id = session_id
        self.upstream = upstream
        now = time.time()
        # `opened`: the upstream response this recorder folds, which knows when it was sent and answered
        self.sent_at = opened.sent_at if opened is not None else now
        self.answered_at = opened.answered_at if opened is not None else now
        self.started_at = min(RECEIVED_AT.get() or self.sent_at, self.sent_at)
        self.first_token_at: float | None = None
        self.call_id = secrets.token_hex(8)
        """Names the call's turns in the store (to void them if the answer never reaches the agent)."""
        self.prompt_token_ids: list[int] | None = None
        self.choices: dict[int, ChoiceTrace] = {}
        self.usage: dict[str, Any] | None = None
        self.first_chunk: dict[str, Any] | None = None
        self.continued = False
        """Some choice was finished by a continuation after an abort (partial rollout)."""

    def add_chunk(self, chunk: dict[str, Any], version: int) -> None:
        """Fold one parsed SSE chunk in; its new tokens are stamped with `version`."""
        if self.first_chunk is None:
            self.first_chunk = chunk
        if chunk.get("prompt_token_ids") is not None and self.prompt_token_ids is None:
            self.prompt_token_ids = chunk["prompt_token_ids"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            trace = self.choices.setdefault(choice.get("index", 0), ChoiceTrace())
            if choice.get("prompt_token_ids") is not None and trace.prompt_token_ids is None:
                trace.prompt_token_ids = choice["prompt_token_ids"]
            ids = choice.get("token_ids") or []
            echoed = 0
            if self.echo and not trace.token_ids and not trace.echo_skipped and self._prompt_of(trace) is not None:
                echoed = trace.echo_skipped = len(self._prompt_of(trace))
                choice["text"] = self.echo_texts.get(choice.get("index", 0), "") + (choice.get("text") or "")
            if ids and self.first_token_at is None:
                self.first_token_at = time.time()
            trace.token_ids += ids
            trace.versions += [version] * len(ids)
            if self.api == "chat":
                self._add_chat_delta(trace, choice)
            else:
                self._add_completion_delta(trace, choice, echoed)
            if choice.get("finish_reason") is not None:
                trace.finish_reason = choice["finish_reason"]
                trace.stop_reason = choice.get("stop_reason")

    @staticmethod
    def _add_chat_delta(trace: ChoiceTrace, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        trace.role = delta.get("role") or trace.role
        trace.text += delta.get("content") or ""
        trace.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
        for call in delta.get("tool_calls") or []:
            slot = trace.tool_calls.setdefault(call.get("index", 0), {
                "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            slot["id"] = call.get("id") or slot["id"]
            slot["type"] = call.get("type") or slot["type"]
            function = call.get("function") or {}
            slot["function"]["name"] += function.get("name") or ""
            slot["function"]["arguments"] += function.get("arguments") or ""
        entries = (choice.get("logprobs") or {}).get("content") or []
        trace.logprob_entries += entries
        trace.logprobs += [entry["logprob"] for entry in entries]

    @staticmethod
    def _add_completion_delta(trace: ChoiceTrace, choice: dict[str, Any], echoed: int = 0) -> None:
        trace.text += choice.get("text") or ""
        logprobs = choice.get("logprobs") or {}
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            trace.completion_logprobs.setdefault(key, []).extend(logprobs.get(key) or [])
        # the echoed prompt's logprobs are the agent's to see, not generated tokens to record
        trace.logprobs += [lp if lp is not None else 0.0 for lp in (logprobs.get("token_logprobs") or [])[echoed:]]

    def check_complete(self) -> str | None:
        """Why the recording is not token-exact, or None when it is."""
        for index, trace in self.choices.items():
            if self._prompt_of(trace) is None:
                return "the server returned no prompt_token_ids (is it vLLM with return_token_ids support?)"
            if len(trace.logprobs) != len(trace.token_ids):
                return (f"choice {index}: {len(trace.token_ids)} token ids but {len(trace.logprobs)} "
                        "logprobs")
        return None

    def turns(self) -> list[Turn]:
        """One Turn per choice, in choice order (the store gives each its index: list position)."""
        ended = time.time()
        return [Turn(session_id=self.session_id, index=i,
                     prompt_token_ids=list(self._prompt_of(trace) or []),
                     completion_token_ids=trace.token_ids, completion_logprobs=trace.logprobs,
                     weight_versions=trace.versions, finish_reason=trace.finish_reason,
                     upstream=self.upstream, started_at=self.started_at, ended_at=ended,
                     sent_at=self.sent_at, answered_at=self.answered_at,
                     first_token_at=self.first_token_at or ended)
                for i, (_, trace) in enumerate(sorted(self.choices.items()))]

    def _prompt_of(self, trace: ChoiceTrace) -> list[int] | None:
        return trace.prompt_token_ids if trace.prompt_token_ids is not None else self.prompt_token_ids

    @property
    def prompt_tokens(self) -> int:
        return sum(len(self._prompt_of(t) or []) for t in self.choices.values())

    # what the agent sees ------------------------------------------------------------------------

    def response(self, wants: AgentWants) -> dict[str, Any]:
        """The non-streaming response assembled from the chunks."""
        first = self.first_chunk or {}
        body: dict[str, Any] = {"id": first.get("id", ""), "created": first.get("created", int(time.time())),
                                "model": wants.model or first.get("model", ""),
                                "object": "chat.completion" if self.api == "chat" else "text_completion",
                                "choices": [self._choice_response(i, t, wants)
                                            for i, t in sorted(self.choices.items())]}
        if self.usage is not None:
            body["usage"] = self.usage
        if wants.token_ids:
            body["prompt_token_ids"] = self.prompt_token_ids
        return body

    def _choice_response(self, index: int, trace: ChoiceTrace, wants: AgentWants) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": trace.finish_reason,
                                  "stop_reason": trace.stop_reason}
        if self.api == "chat":
            choice["message"] = trace.message()
            choice["logprobs"] = {"content": trace.logprob_entries} if wants.logprobs else None
        else:
            choice["text"] = trace.text
            choice["logprobs"] = trace.completion_logprobs if wants.logprobs else None
        if wants.token_ids:
            choice["token_ids"] = trace.token_ids
            if trace.prompt_token_ids is not None:
                choice["prompt_token_ids"] = trace.prompt_token_ids
        return choice

    def agent_chunk(self, chunk: dict[str, Any], wants: AgentWants) -> dict[str, Any] | None:
        """The chunk as the agent should see it, or None to drop it (usage it did not ask for)."""
        if not chunk.get("choices") and chunk.get("usage") is not None and not wants.usage:
            return None
        if self.api == "chat" and chunk.get("choices") and not (wants.token_ids or wants.logprobs):
            # vLLM sends a chunk for a token that adds nothing (a tool-call tag the parser holds back)
            # only because the proxy asked for token ids: the agent would not have seen it
            chunk["choices"] = [c for c in chunk["choices"] if _shows_something(c)]
            if not chunk["choices"]:
                return None
        if wants.model:
            chunk["model"] = wants.model
        if not wants.token_ids:
            for key in _ADDED_TOP:
                chunk.pop(key, None)
        for choice in chunk.get("choices") or []:
            if not wants.token_ids:
                for key in _ADDED_CHOICE:
                    choice.pop(key, None)
            if not wants.logprobs:
                choice["logprobs"] = None
        if not wants.usage and chunk.get("usage") is not None:
            chunk["usage"] = None
        return chunk


def _shows_something(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return choice.get("finish_reason") is not None or any(v not in (None, [], {}) for v in delta.values())


@dataclass(frozen=True)
class AgentWants:
    """What the agent asked for, so the proxy can hide what it added for itself."""

    model: str | None
    stream: bool
    logprobs: bool
    token_ids: bool
    usage: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> AgentWants:
        stream_options = body.get("stream_options") or {}
        logprobs = body.get("logprobs")
        return cls(model=body.get("model"), stream=bool(body.get("stream")),
                   # chat: true/false; completions: a count where 0 still means "the sampled one"
                   logprobs=logprobs is not None and logprobs is not False,
                   token_ids=bool(body.get("return_token_ids")),
                   usage=bool(stream_options.get("include_usage")) if body.get("stream") else True)


def upstream_body(api: Api, body: dict[str, Any], model: str, cache_salt: str | None = None,
                  stream_interval: int = 1) -> dict[str, Any]:
    """The agent's request as the proxy sends it: streamed (chunks of `stream_interval` tokens, or
    the agent's coarser interval), with token ids and logprobs, and the pool's cache salt (per
    weight version) joined to any salt the agent gave."""
    sent = dict(body)
    if stream_interval > 1:
        asked = body.get("stream_interval")
        sent["stream_interval"] = max(stream_interval, asked) if isinstance(asked, int) else stream_interval
    sent["model"] = model
    if cache_salt is not None:
        sent["cache_salt"] = f"{body['cache_salt']}:{cache_salt}" if body.get("cache_salt") else cache_salt
    sent["stream"] = True
    sent["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    sent["return_token_ids"] = True
    if api == "chat":
        sent["logprobs"] = True
    elif not isinstance(body.get("logprobs"), int) or isinstance(body.get("logprobs"), bool):
        sent["logprobs"] = 0  # completions API: number of top logprobs; 0 still gives the sampled one
    return sent
