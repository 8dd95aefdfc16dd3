"""Identical calls of different sessions go to vLLM as one request with `n` choices
(`proxy.coalesce_window_ms`).

A GRPO group's episodes start together and their first calls carry the same messages and sampling
settings. Sent one by one, each pays vLLM's per-request cost (request parsing, chat template,
tokenization, prefill scheduling, output handling in its API process) and the proxy's (one upstream
request and stream each). Sent as one request with n = k, vLLM samples k independent choices from
one prompt and pays that cost once: 128 three-token answers took 0.17 s as 16 requests of n=8 and
0.62 s as 128 requests on this repo's CPU machine (2026-11-30).

Only the first calls of sessions started together (POST /sessions/batch with `start_together`, as
the runner makes a GRPO group whose episodes it admits at once) wait to merge; every other call
goes straight on. And only calls that cannot differ except in their sampling are merged: chat calls
with n = 1, no seed (a seeded call asks for its own reproducible sample), and no assistant message in
their history. A streamed call merges too, with streamed ones alike; its agent then gets its choice
as a stream once the merged call is whole (`calls.stream_call`), not token by token. The first such
call opens a batch; identical ones join it; it goes upstream once it holds its whole group, when the
window ends (a member that never sends an identical call), or when it reaches `proxy.max_n` calls.
The merged call is folded by one recorder as any n-choice call (partial rollout continues each
aborted choice); each member then gets the choice of its own as a one-choice call, recorded in its
own session and answered to its own agent. A member whose agent leaves records nothing; the others are unaffected.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from seamless.proxy.errors import ApiError
from seamless.proxy.metrics import Metrics
from seamless.proxy.recording import RECEIVED_AT, Api, CallRecorder

_MAX_REMEMBERED = 1 << 16
"""Groups' sessions remembered until their first call (the oldest forgotten first: sessions that
never call, or call first in a way that cannot merge)."""

Generate = Callable[[dict[str, Any], str], Awaitable[CallRecorder]]
"""Runs one call upstream (body, the session that picks the server) and returns its recorder, unrecorded."""


def mergeable(api: Api, body: dict[str, Any]) -> bool:
    """Whether this call may share one upstream request with identical calls of other sessions."""
    if api != "chat" or body.get("n", 1) not in (1, None):
        return False
    if body.get("seed") is not None or body.get("kv_transfer_params") is not None:
        return False
    messages = body.get("messages")
    return isinstance(messages, list) and not any(
        isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


def _key(body: dict[str, Any]) -> str:
    """Calls with equal keys ask for the same thing (`user` names the caller, not the request)."""
    return json.dumps({k: v for k, v in body.items() if k != "user"}, sort_keys=True, separators=(",", ":"))


@dataclass
class _Member:
    session_id: str
    received_at: float | None
    answer: asyncio.Future[CallRecorder]


@dataclass
class _Batch:
    body: dict[str, Any]
    members: list[_Member] = field(default_factory=list)
    expected: int = 0
    """The largest group among its members' (0: none known); the batch goes once it holds that many."""
    task: asyncio.Task[None] | None = None


class Coalescer:
    """Batches of identical calls waiting for the window to close (one proxy process's)."""

    def __init__(self, window_s: float, max_calls: int, metrics: Metrics) -> None:
        self.window_s = window_s
        self.max_calls = max_calls
        self.metrics = metrics
        self._open: dict[str, _Batch] = {}
        self._made_with: dict[str, int] = {}
        """Session -> the size of its group (POST /sessions/batch with start_together), until its
        first call: only these calls wait to merge, and a batch that holds a whole group goes at once."""

    def expects(self, session_id: str) -> bool:
        """Whether the session was started with a group and has not made its first call yet."""
        return session_id in self._made_with

    def made_together(self, session_ids: list[str]) -> None:
        """These sessions are one group: their first calls are likely to be identical."""
        for sid in session_ids:
            self._made_with[sid] = len(session_ids)
        while len(self._made_with) > _MAX_REMEMBERED:  # sessions that never made a mergeable call
            del self._made_with[next(iter(self._made_with))]

    async def call(self, body: dict[str, Any], session_id: str, generate: Generate) -> CallRecorder:
        """This session's one-choice call, generated alone or with identical ones; not yet recorded."""
        loop = asyncio.get_running_loop()
        key = _key(body)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(body)
            loop.call_later(self.window_s, self._close, key, batch, generate)
        member = _Member(session_id, RECEIVED_AT.get(), loop.create_future())
        batch.members.append(member)
        batch.expected = max(batch.expected, self._made_with.pop(session_id))
        if len(batch.members) >= min(self.max_calls, batch.expected or self.max_calls):
            self._close(key, batch, generate)
        try:
            # shielded: one agent leaving must not cancel the answer the others share
            return await asyncio.shield(member.answer)
        except asyncio.CancelledError:
            batch.members.remove(member)
            if batch.task is not None and not batch.members:
                batch.task.cancel()  # nobody waits for it any more
            raise

    def _close(self, key: str, batch: _Batch, generate: Generate) -> None:
        if self._open.get(key) is not batch:
            return  # already gone upstream: full before its window ended
        del self._open[key]
        if batch.members:  # else every agent left during the window
            batch.task = asyncio.get_running_loop().create_task(self._run(list(batch.members), batch.body, generate))

    async def _run(self, members: list[_Member], body: dict[str, Any], generate: Generate) -> None:
        try:
            if len(members) == 1:
                answers = [await generate(body, members[0].session_id)]
            else:
                merged = await generate({**body, "n": len(members)}, members[0].session_id)
                if len(merged.choices) != len(members):
                    raise ApiError(502, f"the rollout server answered {len(merged.choices)} choices where "
                                        f"{len(members)} were asked (n); is it vLLM?", "upstream_error")
                self.metrics.coalesced_calls += len(members)
                self.metrics.coalesced_requests += 1
                answers = [one_choice(merged, i, m.session_id, m.received_at) for i, m in enumerate(members)]
        except Exception as exc:
            for member in members:
                if not member.answer.done():
                    member.answer.set_exception(exc)
                    member.answer.exception()  # marked retrieved: an agent that left never reads it
            return
        for member, answer in zip(members, answers):
            if not member.answer.done():
                member.answer.set_result(answer)


def one_choice(merged: CallRecorder, index: int, session_id: str, received_at: float | None) -> CallRecorder:
    """Choice `index` of a merged call, as the one-choice call of `session_id` it stands for."""
    trace = merged.choices[sorted(merged.choices)[index]]
    call = CallRecorder(merged.api, session_id, merged.upstream)
    call.sent_at, call.answered_at, call.first_token_at = merged.sent_at, merged.answered_at, merged.first_token_at
    call.started_at = min(received_at or merged.sent_at, merged.sent_at)
    call.prompt_token_ids = merged.prompt_token_ids
    call.choices = {0: trace}
    call.continued = merged.continued
    prompt = len(trace.prompt_token_ids if trace.prompt_token_ids is not None else merged.prompt_token_ids or [])
    call.usage = {"prompt_tokens": prompt, "completion_tokens": len(trace.token_ids),
                  "total_tokens": prompt + len(trace.token_ids)}
    first = dict(merged.first_chunk or {})
    first["id"] = f"{first.get('id', 'chatcmpl')}-{secrets.token_hex(4)}"  # one id per agent's call
    call.first_chunk = first
    return call
