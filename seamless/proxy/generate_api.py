"""vLLM's token-in/token-out route (`/inference/v1/generate`) served on top of the completions route.

The request's token ids go to the server as a completions prompt of token ids with the same
sampling parameters (same engine, same sampler, so the same tokens), which runs on the
completions path: recorded token-exactly with the proxy's weight versions, paused and resumed,
failed over. The answer is put back into the generate shape (`output_mode` "tokens" or "text"),
with `weight_versions` spans from what the proxy recorded.

Not served: logprobs in "text" mode (chat-shaped entries), multimodal `features`, and the
sampled token's `rank` (the completions stream does not carry it; it is left out).
"""

from __future__ import annotations

import json
from typing import Any

from seamless.proxy.errors import ApiError
from seamless.proxy.recording import CallRecorder, ChoiceTrace

# GenerateRequest fields that mean the same on the completions route
_SAME = ("model", "cache_salt", "priority", "kv_transfer_params", "stream")
# SamplingParams fields the proxy cannot honour through the completions route
_REFUSED = ("prompt_logprobs", "output_kind", "detokenize")


def to_completion(body: dict[str, Any]) -> dict[str, Any]:
    """The completions request that samples what `body` would."""
    ids = body.get("token_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                       for i in ids):
        raise ApiError(400, "'token_ids' must be a non-empty list of non-negative integers", param="token_ids")
    params = body.get("sampling_params")
    if not isinstance(params, dict):
        raise ApiError(400, "'sampling_params' is required (an object of vLLM SamplingParams fields)",
                       param="sampling_params")
    for name in _REFUSED:
        if params.get(name) not in (None, 0, False) and not (name == "detokenize" and params[name] is True):
            raise ApiError(400, f"sampling_params.{name} is not served through the seamless proxy",
                           param=f"sampling_params.{name}")
    if body.get("features"):
        raise ApiError(400, "multimodal 'features' are not served through the seamless proxy", param="features")
    if body.get("output_mode") == "text" and params.get("logprobs") is not None:
        raise ApiError(400, "logprobs with output_mode='text' are not served through the seamless proxy; use "
                            "output_mode='tokens'", param="sampling_params.logprobs")
    sent: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
    sent.update({k: body[k] for k in _SAME if body.get(k) is not None})
    sent["prompt"] = ids
    sent.setdefault("max_tokens", 16)  # SamplingParams' default
    sent["return_tokens_as_token_ids"] = True  # top logprobs keyed "token_id:N", whatever the tokenizer
    if isinstance(body.get("stream_options"), dict):
        sent["stream_options"] = body["stream_options"]
    return sent


def spans(versions: list[int], offset: int = 0) -> list[dict[str, Any]]:
    """vLLM's weight_versions: runs of one version over output tokens [start, end)."""
    out: list[dict[str, Any]] = []
    for i, version in enumerate(versions, start=offset):
        if out and out[-1]["version"] == str(version):
            out[-1]["end"] = i + 1
        else:
            out.append({"version": str(version), "start": i, "end": i + 1})
    return out


def _logprobs(ids: list[int], logprobs: list[float], top: list[Any]) -> dict[str, Any]:
    content = []
    for token, logprob, alternatives in zip(ids, logprobs, top + [None] * (len(ids) - len(top))):
        entries = [{"token_id": int(str(k).rsplit(":", 1)[-1]), "logprob": max(v, -9999.0), "rank": None}
                   for k, v in (alternatives or {}).items()]
        content.append({"token_id": token, "logprob": max(logprob, -9999.0), "rank": None, "top_logprobs": entries})
    return {"content": content}


def shape_choice(body: dict[str, Any], index: int, trace: ChoiceTrace, start: int, finish_reason: str | None,
           text: str) -> dict[str, Any]:
    """One choice (or, streaming, the delta of its tokens [start:]) in the generate shape."""
    ids = trace.token_ids[start:]
    out: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "stop_reason": trace.stop_reason,
                           "token_ids": ids,
                           "logprobs": None, "routed_experts": None, "sampling_mask": None,
                           "weight_versions": spans(trace.versions[start:], start)}
    if (body.get("sampling_params") or {}).get("logprobs") is not None:
        top = (trace.completion_logprobs.get("top_logprobs") or [])[start:]
        out["logprobs"] = _logprobs(ids, trace.logprobs[start:], top)
    if body.get("output_mode") == "text":
        out["text"] = text
    return out


def prompt_ids(recorder: CallRecorder) -> list[int] | None:
    return next((t.prompt_token_ids for t in recorder.choices.values() if t.prompt_token_ids is not None),
                recorder.prompt_token_ids)


def stream_event(body: dict[str, Any], recorder: CallRecorder, piece: dict[str, Any], first: bool) -> dict[str, Any]:
    """One streamed generate event around one choice's delta (the prompt ids on the first, if asked)."""
    event: dict[str, Any] = {"request_id": body.get("request_id") or (recorder.first_chunk or {}).get("id", ""),
                             "output_mode": body.get("output_mode", "tokens"), "usage": None, "choices": [piece]}
    if first and body.get("return_token_ids"):
        event["prompt_token_ids"] = prompt_ids(recorder)
    return event


def response(body: dict[str, Any], recorder: CallRecorder, model: str) -> dict[str, Any]:
    """The non-streaming generate response."""
    first = recorder.first_chunk or {}
    return {"request_id": body.get("request_id") or first.get("id", ""), "created": first.get("created"),
            "model": model, "output_mode": body.get("output_mode", "tokens"),
            "choices": [shape_choice(body, i, t, 0, t.finish_reason or "stop", t.text)
                        for i, t in sorted(recorder.choices.items())],
            "usage": recorder.usage, "prompt_logprobs": None, "prompt_token_id_logprobs": None,
            "prompt_token_ids": prompt_ids(recorder) if body.get("return_token_ids") else None,
            "mm_placeholders": None, "metrics": None, "kv_transfer_params": None, "ec_transfer_params": None}


class SSE:
    """The generate event stream of a completions stream: each chunk's new tokens, per choice."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.sent: dict[int, int] = {}  # choice index -> tokens already sent

    def start(self, recorder: CallRecorder) -> list[bytes]:
        self.recorder = recorder
        return []

    def chunk(self, chunk: dict[str, Any] | None) -> list[bytes]:
        parts = []
        for choice in (chunk or {}).get("choices") or []:
            index = choice.get("index", 0)
            trace, start = self.recorder.choices[index], self.sent.get(index, 0)
            if len(trace.token_ids) == start and choice.get("finish_reason") is None:
                continue  # as vLLM: a chunk with no new token and no finish is not sent
            piece = shape_choice(self.body, index, trace, start, choice.get("finish_reason"), choice.get("text") or "")
            event = stream_event(self.body, self.recorder, piece, first=not self.sent)
            self.sent[index] = len(trace.token_ids)
            parts.append(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
        return parts

    async def end(self, continued: bool) -> list[bytes]:
        usage = []
        if (self.body.get("stream_options") or {}).get("include_usage"):
            event = {"request_id": self.body.get("request_id") or (self.recorder.first_chunk or {}).get("id", ""),
                     "output_mode": self.body.get("output_mode", "tokens"), "choices": [], "usage": self.recorder.usage}
            usage = [b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"]
        return [*usage, b"data: [DONE]\n\n"]

    def error(self, error: ApiError) -> bytes:
        return b"data: " + json.dumps(error.body()).encode() + b"\n\n"
