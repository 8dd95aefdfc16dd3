"""The non-streaming answer to an agent: what vLLM itself would have answered for the call's tokens.

The proxy always streams from vLLM (to record every token with its logprob), but vLLM's streaming
tool and reasoning parsers differ from its non-streaming ones (a tool call cut off by max_tokens
comes back as text from one and as an empty call from the other), so the message of a whole
answer comes from vLLM's derender route when the server has one, for calls that offer tools
(`proxy.derender: tools`) or for every call (`always`: servers with a reasoning parser). A call
without tools has nothing to parse, and its streamed text is what vLLM answers (tests/proxy/
test_same_answer.py). The second request per call it saves took a tenth of vLLM's API process on
the long-answer recipe (py-spy, 2026-11-30).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from seamless.proxy.recording import AgentWants, Api, CallRecorder
from seamless.proxy.state import ProxyState
from seamless.proxy.upstream_http import UpstreamConnectionError, UpstreamStreamError

log = logging.getLogger("seamless.proxy")

_NO_DERENDER: set[str] = set()  # servers without /v1/chat/completions/derender


async def answer(state: ProxyState, api: Api, body: dict[str, Any], recorder: CallRecorder,
                  wants: AgentWants) -> dict[str, Any]:
    """The non-streaming answer: what vLLM itself answers for these tokens (its derender route parses
    them with the non-streaming tool and reasoning parsers, which differ from the streaming ones,
    e.g. for a tool call cut off by max_tokens); assembled from the stream where vLLM has no such
    route (started without --enable-scale-out) or the call was continued after an abort."""
    assembled = recorder.response(wants)
    if api != "chat" or recorder.continued or len(recorder.choices) == 0:
        return assembled
    if state.settings.derender == "tools" and not _offers_tools(body):
        return assembled  # nothing for a parser to find: the streamed text is vLLM's answer
    derendered = await _derender(state, body, recorder)
    if derendered is None:
        return assembled
    for mine, theirs in zip(assembled["choices"], derendered["choices"]):
        mine["message"] = theirs["message"]
        mine["finish_reason"] = theirs.get("finish_reason", mine["finish_reason"])
    return assembled


def _offers_tools(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


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
