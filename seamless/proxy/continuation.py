"""Continuing a call whose server request was aborted (partial rollout, `abort` mode).

When rollout pauses with `mode=abort` (or a server is drained), vLLM ends every in-flight request
with finish_reason "abort". The tokens generated so far are already recorded, so the proxy waits
for rollout to resume and asks any healthy server for the rest: a tokens-in `/v1/completions`
call whose prompt is the original prompt ids plus the partial completion ids, with what is left
of max_tokens. Its chunks are reshaped into the original call's API and choice index, so the
recorder and the agent see one call; each token keeps the version it was stamped with.

Left out on purpose: structured-output grammars and tool-call parsing restart from scratch on the
continued text (vLLM cannot resume their state), so the continued part is plain text.
"""

from __future__ import annotations

from typing import Any

from seamless.proxy.recording import Api, CallRecorder

ABORT = "abort"
MAX_CONTINUATIONS = 16
"""A call cut off more often than this (a weight update per few tokens) fails instead of looping."""

# sampling parameters that mean the same in a continuation; everything else (messages, tools,
# n, stream, logprobs shape, ...) is the proxy's to set or cannot carry over
_CARRIED = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
            "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos",
            "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
            "logit_bias", "bad_words", "allowed_token_ids", "cache_salt", "priority", "user")


def aborted(recorder: CallRecorder) -> list[int]:
    """Choice indexes the server cut off."""
    return [i for i, trace in sorted(recorder.choices.items()) if trace.finish_reason == ABORT]


def hide_abort(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The chunk as the agent may see it mid-call: no "abort" finish, nothing if that was all."""
    choices = []
    for choice in chunk.get("choices") or []:
        if choice.get("finish_reason") == ABORT:
            choice = {**choice, "finish_reason": None, "stop_reason": None}
            if not (choice.get("text") or (choice.get("delta") or {}).get("content") or choice.get("token_ids")):
                continue
        choices.append(choice)
    if chunk.get("choices") and not choices:
        return None
    return {**chunk, "choices": choices}


def continuation_body(api: Api, body: dict[str, Any], recorder: CallRecorder, index: int) -> dict[str, Any] | None:
    """The tokens-in completions request that finishes choice `index`, or None if nothing is left."""
    trace = recorder.choices[index]
    prompt = trace.prompt_token_ids if trace.prompt_token_ids is not None else recorder.prompt_token_ids
    assert prompt is not None, "an aborted call always had its prompt ids in the first chunk"
    sent: dict[str, Any] = {key: body[key] for key in _CARRIED if key in body}
    sent["prompt"] = list(prompt) + trace.token_ids
    sent["n"] = 1
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        if limit - len(trace.token_ids) <= 0:
            return None
        sent["max_tokens"] = limit - len(trace.token_ids)
    if body.get("min_tokens"):
        sent["min_tokens"] = max(0, body["min_tokens"] - len(trace.token_ids))
    top = body.get("top_logprobs") if api == "chat" else body.get("logprobs")
    sent["logprobs"] = top if isinstance(top, int) and not isinstance(top, bool) else 0
    return sent


def as_call_chunk(chunk: dict[str, Any], api: Api, index: int, call_id: str) -> dict[str, Any]:
    """A continuation's completions chunk, reshaped into the original call's API and choice."""
    out = {key: value for key, value in chunk.items() if key not in ("prompt_token_ids", "choices")}
    out["id"] = call_id or chunk.get("id", "")
    out["choices"] = []
    for choice in chunk.get("choices") or []:
        shaped: dict[str, Any] = {"index": index, "finish_reason": choice.get("finish_reason"),
                                  "stop_reason": choice.get("stop_reason"), "token_ids": choice.get("token_ids")}
        if api == "chat":
            shaped["delta"] = {"content": choice.get("text") or ""}
            shaped["logprobs"] = {"content": _chat_logprobs(choice.get("logprobs") or {})}
        else:
            shaped["text"] = choice.get("text") or ""
            shaped["logprobs"] = choice.get("logprobs")
        out["choices"].append(shaped)
    if api == "chat":
        out["object"] = "chat.completion.chunk"
    return out


def _chat_logprobs(logprobs: dict[str, Any]) -> list[dict[str, Any]]:
    """Completions-API logprobs (parallel lists) as chat-API entries (one object per token)."""
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [{"token": token, "logprob": value if value is not None else 0.0,
             "bytes": list(token.encode()),
             "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in (top or {}).items()]}
            for token, value, top in zip(tokens, values, tops)]


def usage_of(recorder: CallRecorder) -> dict[str, int]:
    """Usage of a continued call as if it had been one request."""
    completion = sum(len(trace.token_ids) for trace in recorder.choices.values())
    prompt = len(recorder.prompt_token_ids or next(
        (t.prompt_token_ids for t in recorder.choices.values() if t.prompt_token_ids), []))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
