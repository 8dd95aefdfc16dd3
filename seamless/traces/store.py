"""The proxy's side of the traces: sessions, their agent keys, and each call's turns, written with
redis.asyncio inside the proxy's event loop (the schema: `traces/keys.py`). Imports no torch/ray/vllm."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from seamless.errors import SessionFinished, UnknownSession
from seamless.traces.codec import SessionRecord, decode_turns, encode_call, encode_turn
from seamless.traces.keys import OPEN_SESSION_TTL_S, Keys
from seamless.types import Turn

# a finished session's keys live until the trainer acknowledges it: only an open one's expire
_VOID_CALL = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], 'status') ~= 'finished' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
"""

# a call's records join the session's turns only while the session is open and the call was not
# voided: one atomic step, so a call still in flight when `finish` hands the episode to the
# trainer can never add to it afterwards (on any worker)
_APPEND_CALL = """
if redis.call('HGET', KEYS[1], 'status') ~= 'open' then return -1 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return -2 end
local length = redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], KEYS[1])
return length
"""

class TraceStore:
    """Async access to one run's traces, for the proxy (redis.asyncio inside the event loop)."""

    def __init__(self, url: str, prefix: str, open_ttl_s: int = OPEN_SESSION_TTL_S):
        self.keys = Keys(prefix)
        self.open_ttl_s = open_ttl_s
        # bounded, and callers wait for a free connection instead of failing under a burst
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=256, timeout=30)
        self.redis = aioredis.Redis(connection_pool=pool)
        self._append_script = self.redis.register_script(_APPEND_CALL)
        self._void_script = self.redis.register_script(_VOID_CALL)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def create_session(self, sid: str, api_key: str, group_id: str | None, task_id: str | None,
                             metadata: dict[str, Any]) -> None:
        fields = {"api_key": api_key, "status": "open", "created_at": time.time(),
                  "metadata": json.dumps(metadata)}
        if group_id is not None:
            fields["group_id"] = group_id
        if task_id is not None:
            fields["task_id"] = task_id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.session(sid), mapping=fields)
            pipe.set(self.keys.apikey(api_key), sid, ex=self.open_ttl_s)
            pipe.expire(self.keys.session(sid), self.open_ttl_s)
            await pipe.execute()

    async def create_sessions(self, sessions: list[tuple[str, str]], group_id: str | None, task_id: str | None,
                              metadata: dict[str, Any]) -> None:
        """`create_session` for several (sid, api_key) of one group: one round trip for all."""
        fields = {"status": "open", "created_at": time.time(), "metadata": json.dumps(metadata)}
        fields |= {k: v for k, v in (("group_id", group_id), ("task_id", task_id)) if v is not None}
        async with self.redis.pipeline(transaction=True) as pipe:
            for sid, api_key in sessions:
                pipe.hset(self.keys.session(sid), mapping=fields | {"api_key": api_key})
                pipe.set(self.keys.apikey(api_key), sid, ex=self.open_ttl_s)
                pipe.expire(self.keys.session(sid), self.open_ttl_s)
            await pipe.execute()

    async def session(self, sid: str) -> SessionRecord:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.session(sid))
            pipe.llen(self.keys.turns(sid))
            fields, num_turns = await pipe.execute()
        if not fields:
            raise UnknownSession(f"no session {sid!r} in this run; create one with POST /sessions")
        return SessionRecord.from_hash(sid, fields, num_turns)

    async def session_of_key(self, api_key: str) -> str | None:
        sid = await self.redis.get(self.keys.apikey(api_key))
        return sid.decode() if sid else None

    async def append_turns(self, sid: str, turns: list[tuple[Turn, dict[str, Any] | None]]) -> None:
        """Append turns as they are, without the checks of `append_call` (tests, imports)."""
        await self.redis.rpush(self.keys.turns(sid), *[encode_turn(t, r) for t, r in turns])

    async def append_call(self, sid: str, call_id: str, turns: list[Turn], request: dict[str, Any] | None,
                          in_doubt: str) -> None:
        """Record the turns of one call (one per choice) atomically, with its request once: one
        round trip on every agent call's critical path. The call joins the hash `in_doubt` (its
        proxy worker's calls recorded and not yet delivered) in the same step. Raises
        SessionFinished once the session finished, and records nothing for a call already voided."""
        records = encode_call(turns, request, call_id)
        keys = [self.keys.session(sid), self.keys.turns(sid), self.keys.void(sid), in_doubt]
        if await self._append_script(keys=keys, args=[call_id, self.open_ttl_s, *records]) == -1:
            raise SessionFinished(f"session {sid} has finished (or does not exist); this call was not "
                                  "recorded: create a new session for new calls")

    async def void_call(self, sid: str, call_id: str) -> None:
        """The call's answer never reached the agent: its turns, recorded or still on the way to
        Redis (a stalled connection), are left out of every read."""
        await self._void_script(keys=[self.keys.void(sid), self.keys.session(sid)], args=[call_id, self.open_ttl_s])

    async def delivered(self, in_doubt: str, call_ids: list[str]) -> None:
        """These calls' answers reached their agents: no longer in doubt."""
        await self.redis.hdel(in_doubt, *call_ids)

    async def void_in_doubt(self, in_doubt: str) -> int:
        """Void every call a dead proxy worker recorded and may not have delivered (it died between
        the record and the end of the answer), then forget the hash. Returns how many."""
        calls = await self.redis.hgetall(in_doubt)
        session_prefix = self.keys.session("")
        for call_id, session_key in calls.items():
            await self.void_call(session_key.decode().removeprefix(session_prefix), call_id.decode())
        await self.redis.delete(in_doubt)
        return len(calls)

    async def turns(self, sid: str) -> list[Turn]:
        return [turn for turn, _ in await self.turns_with_requests(sid)]

    async def turns_with_requests(self, sid: str) -> list[tuple[Turn, dict[str, Any] | None]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.turns(sid), 0, -1)
            pipe.smembers(self.keys.void(sid))
            blobs, voided = await pipe.execute()
        return decode_turns(blobs, voided)

    async def set_reward(self, sid: str, reward: float | None, turn_rewards: list[float] | None) -> None:
        fields: dict[str, Any] = {}
        if reward is not None:
            fields["reward"] = repr(float(reward))
        if turn_rewards is not None:
            fields["turn_rewards"] = json.dumps([float(r) for r in turn_rewards])
        if fields:
            await self.redis.hset(self.keys.session(sid), mapping=fields)

    async def finish(self, sid: str, discard: str | None = None) -> bool:
        """Mark finished and publish to the episode stream, once. False if it was already finished.

        `discard`: why the episode must not train (the agent crashed, the servers were down); it
        is still published, so its GRPO group completes, and `EpisodeQueue.trajectory` gives it
        no training sequences."""
        key = self.keys.session(sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    status, api_key = await pipe.hmget(key, ["status", "api_key"])
                    if status is None:
                        await pipe.unwatch()
                        raise UnknownSession(f"no session {sid!r} in this run")
                    if status == b"finished":
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    fields = {"status": "finished", "finished_at": time.time()}
                    pipe.hset(key, mapping=fields | ({"discarded": discard} if discard else {}))
                    pipe.delete(self.keys.apikey(api_key.decode()))  # the agent's key stops working
                    for kept in (key, self.keys.turns(sid), self.keys.void(sid)):
                        pipe.persist(kept)  # until the trainer acknowledges it (then store.retention_s)
                    pipe.xadd(self.keys.episodes, {"session_id": sid})
                    await pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    async def finish_many(self, episodes: list[EpisodeEnd]) -> list[FinishedEpisode]:
        """Post the rewards of several episodes and finish them in three round trips for all (not
        five each): what `set_reward` then `finish` do, with the same once-only publishing. An
        episode with no recorded call is finished as discarded (nothing the policy sampled)."""
        sessions = [self.keys.session(e.session_id) for e in episodes]
        turns = [self.keys.turns(e.session_id) for e in episodes]
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # a change to any of them (a reward, a finish, a late call) before EXEC: read again
                    await pipe.watch(*sessions, *turns)
                    async with self.redis.pipeline(transaction=False) as reads:
                        for session, turn_list in zip(sessions, turns):
                            reads.hmget(session, ["status", "api_key"])
                            reads.llen(turn_list)
                        read = await reads.execute()
                    pipe.multi()
                    ends = [self._end(pipe, e, *read[2 * i], read[2 * i + 1]) for i, e in enumerate(episodes)]
                    await pipe.execute()
                    return ends
                except redis.WatchError:
                    continue

    def _end(self, pipe: Any, e: EpisodeEnd, status: bytes | None, api_key: bytes | None,
             num_turns: int) -> FinishedEpisode:
        """Queue one episode's reward and finish on `pipe` (in MULTI); what became of it."""
        if status is None:
            raise UnknownSession(f"no session {e.session_id!r} in this run")
        if status == b"finished":
            return FinishedEpisode(e.session_id, num_turns, already_finished=True, discarded=None, api_key=None)
        discard = e.discard or (None if num_turns else "made no LLM call (nothing the policy sampled)")
        key = self.keys.session(e.session_id)
        fields: dict[str, Any] = {"status": "finished", "finished_at": time.time()}
        if e.reward is not None:
            fields["reward"] = repr(float(e.reward))
        if e.turn_rewards is not None:
            fields["turn_rewards"] = json.dumps([float(r) for r in e.turn_rewards])
        pipe.hset(key, mapping=fields | ({"discarded": discard} if discard else {}))
        pipe.delete(self.keys.apikey(api_key.decode()))  # the agent's key stops working
        for kept in (key, self.keys.turns(e.session_id), self.keys.void(e.session_id)):
            pipe.persist(kept)  # until the trainer acknowledges it (then store.retention_s)
        pipe.xadd(self.keys.episodes, {"session_id": e.session_id})
        return FinishedEpisode(e.session_id, num_turns, already_finished=False, discarded=discard,
                               api_key=api_key.decode())


@dataclass(frozen=True, slots=True)
class EpisodeEnd:
    """How the environment ends one episode: its reward (or per-turn rewards) and, when it failed,
    why it must not train."""

    session_id: str
    reward: float | None = None
    turn_rewards: list[float] | None = None
    discard: str | None = None


@dataclass(frozen=True, slots=True)
class FinishedEpisode:
    """What `finish_many` did with one episode."""

    session_id: str
    num_turns: int
    """Turn records of the session (voided calls included)."""
    already_finished: bool
    discarded: str | None
    api_key: str | None
    """The agent key that stopped working (None when it had finished before)."""
