"""The Redis schema of a run, in one module. Imports no torch/ray/vllm.

Keys (all under the run's prefix `P`):

    P:session:{sid}     hash   api_key, status (open|finished), created_at, finished_at, group_id,
                               task_id, metadata (JSON), reward, turn_rewards (JSON)
    P:apikey:{key}      string session id of an agent key (Bearer auth lookup)
    P:turns:{sid}       list   one binary-encoded Turn per element, in call order (one atomic append
                               per call, refused once the session finished). A call's request and
                               a prompt its choices share are stored once, on its first turn.
    P:void:{sid}        set    call ids whose answer never reached the agent (it disconnected, or
                               the record outlived its deadline): readers skip their turns
    P:episodes          stream one entry per finished session: {session_id}; the trainer reads it
                               with the consumer group `trainer` and acknowledges after use
    P:proxy:state       hash   the proxy's shared pause gate: paused, mode, version, cache_salt
    P:proxy:upstreams   hash   url -> model of every registered rollout server
    P:proxy:metrics     hash   worker pid -> its metrics snapshot (JSON), with several workers
    P:proxy:control     pubsub admin changes every proxy worker applies (proxy/control.py)
    P:proxy:ack:{op}    list   one element per worker that applied change `op`

Token arrays are stored as packed little-endian int32/float32 (4 bytes a token, not JSON
lists). Every multi-key change is one MULTI/EXEC transaction, so a crash never leaves half a
turn or a finished session without its stream entry.
"""

from __future__ import annotations

import json
import struct
import time
from array import array
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from seamless.errors import SeamlessError, SessionFinished, UnknownSession
from seamless.trajectory import merge_turns
from seamless.types import Trajectory, Turn

CONSUMER_GROUP = "trainer"
# a finished session's keys live until the trainer acknowledges it: only an open one's expire
_VOID_CALL = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], 'status') ~= 'finished' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
"""
OPEN_SESSION_TTL_S = 7 * 24 * 3600
"""How long an open session's keys live (its turns: after its last call): evaluation sessions (never
finished) and sessions an agent abandoned expire; `finish` keeps the keys until the trainer
acknowledges the episode (then `store.retention_s`)."""

# a call's records join the session's turns only while the session is open and the call was not
# voided: one atomic step, so a call still in flight when `finish` hands the episode to the
# trainer can never add to it afterwards (on any worker)
_APPEND_CALL = """
if redis.call('HGET', KEYS[1], 'status') ~= 'open' then return -1 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return -2 end
local length = redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return length
"""
_HEADER = struct.Struct("<I")  # length of the JSON header of an encoded turn


class CorruptRecord(SeamlessError):
    """Data in Redis that does not decode as seamless wrote it (another program's keys, or a bug)."""


@dataclass(frozen=True)
class Keys:
    prefix: str

    def session(self, sid: str) -> str:
        return f"{self.prefix}:session:{sid}"

    def apikey(self, key: str) -> str:
        return f"{self.prefix}:apikey:{key}"

    def turns(self, sid: str) -> str:
        return f"{self.prefix}:turns:{sid}"

    def void(self, sid: str) -> str:
        return f"{self.prefix}:void:{sid}"

    @property
    def episodes(self) -> str:
        return f"{self.prefix}:episodes"

    @property
    def proxy(self) -> ProxyKeys:
        """The keys the proxy's workers share (proxy/control.py)."""
        base = f"{self.prefix}:proxy"
        return ProxyKeys(state=f"{base}:state", upstreams=f"{base}:upstreams", metrics=f"{base}:metrics",
                         channel=f"{base}:control", finished_keys=f"{base}:finished-keys",
                         ack_prefix=f"{base}:ack:")


@dataclass(frozen=True)
class ProxyKeys:
    state: str
    upstreams: str
    metrics: str
    channel: str
    finished_keys: str
    """channel: agent keys of finished sessions, for every worker to drop from its cache"""
    ack_prefix: str

    def acks(self, op_id: str) -> str:
        return self.ack_prefix + op_id


def _packed(values: list[int] | list[float], typecode: str) -> bytes:
    arr = array(typecode, values)
    if arr.itemsize != 4:  # 'i' is 4 bytes on every platform seamless runs on; say so if not
        raise SeamlessError(f"array typecode {typecode!r} is {arr.itemsize} bytes here, expected 4")
    return arr.tobytes()


def encode_turn(turn: Turn, request: dict[str, Any] | None = None, call_id: str | None = None,
                same_prompt: bool = False) -> bytes:
    """Turn → bytes: a JSON header (scalars, the request as sent) followed by packed arrays.

    `call_id` groups the turns (choices) of one call; `same_prompt` leaves out a prompt equal to
    the one of the call's previous turn (decode_turns restores it), so n choices store it once."""
    # no index in the record: a turn's index is its position in the session's list (the append
    # is atomic, so concurrent calls of one session can never collide on an index)
    header = {"session_id": turn.session_id, "finish_reason": turn.finish_reason,
              "upstream": turn.upstream, "started_at": turn.started_at, "ended_at": turn.ended_at,
              "n_prompt": len(turn.prompt_token_ids), "n_completion": len(turn.completion_token_ids),
              "request": request}
    if call_id is not None:
        header["call"] = call_id
    if same_prompt:
        header["same_prompt"] = True
    head = json.dumps(header, separators=(",", ":")).encode()
    prompt = b"" if same_prompt else _packed(turn.prompt_token_ids, "i")
    return b"".join([_HEADER.pack(len(head)), head, prompt, _packed(turn.completion_token_ids, "i"),
                     _packed(turn.completion_logprobs, "f"), _packed(turn.weight_versions, "i")])


def encode_call(turns: list[Turn], request: dict[str, Any] | None, call_id: str) -> list[bytes]:
    """The records of one call's turns: the request on the first only, a shared prompt once."""
    return [encode_turn(turn, request if i == 0 else None, call_id,
                        same_prompt=i > 0 and turn.prompt_token_ids == turns[i - 1].prompt_token_ids)
            for i, turn in enumerate(turns)]


def decode_turn(blob: bytes, index: int, previous: Turn | None = None) -> tuple[Turn, dict[str, Any] | None]:
    """Inverse of encode_turn (index: position in the list; `previous`: the turn before it, whose
    prompt a `same_prompt` record shares); raises CorruptRecord on anything else."""
    return _decode(blob, index, previous)[:2]


def decode_turns(blobs: list[bytes], voided: set[bytes] | set[str] = frozenset()
                 ) -> list[tuple[Turn, dict[str, Any] | None]]:
    """A session's records as turns with their calls' requests, skipping voided calls; indexes
    count the turns kept."""
    voided = {v.decode() if isinstance(v, bytes) else v for v in voided}
    kept: list[tuple[Turn, dict[str, Any] | None]] = []
    previous: Turn | None = None
    requests: dict[str, Any] = {}
    for blob in blobs:
        turn, request, call = _decode(blob, len(kept), previous)
        previous = turn
        if call is not None:
            request = requests.setdefault(call, request)
            if call in voided:
                continue
        kept.append((turn, request))
    return kept


def _decode(blob: bytes, index: int, previous: Turn | None) -> tuple[Turn, dict[str, Any] | None, str | None]:
    try:
        (head_len,) = _HEADER.unpack_from(blob)
        header = json.loads(blob[_HEADER.size:_HEADER.size + head_len])
        n_p, n_c = header["n_prompt"], header["n_completion"]
        shared = bool(header.get("same_prompt"))
        if shared and (previous is None or len(previous.prompt_token_ids) != n_p):
            raise CorruptRecord("turn record shares the prompt of a turn that is not before it")
        offset = _HEADER.size + head_len
        expected = offset + 4 * ((0 if shared else n_p) + 3 * n_c)
        if len(blob) != expected:
            raise CorruptRecord(f"turn record is {len(blob)} bytes, expected {expected}")

        def take(typecode: str, count: int) -> list:
            nonlocal offset
            arr = array(typecode)
            arr.frombytes(blob[offset:offset + 4 * count])
            offset += 4 * count
            return arr.tolist()

        prompt = list(previous.prompt_token_ids) if shared else take("i", n_p)
        completion = take("i", n_c)
        logprobs, versions = take("f", n_c), take("i", n_c)
        turn = Turn(session_id=header["session_id"], index=index, prompt_token_ids=prompt,
                    completion_token_ids=completion, completion_logprobs=logprobs,
                    weight_versions=versions, finish_reason=header["finish_reason"],
                    upstream=header["upstream"], started_at=header["started_at"],
                    ended_at=header["ended_at"])
        return turn, header.get("request"), header.get("call")
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptRecord(f"turn record does not decode ({exc}); was it written by seamless?") from exc


@dataclass(frozen=True)
class SessionRecord:
    """What the store knows about a session."""

    session_id: str
    api_key: str
    status: str
    created_at: float
    group_id: str | None
    task_id: str | None
    metadata: dict[str, Any]
    reward: float | None
    turn_rewards: list[float] | None
    num_turns: int

    @classmethod
    def from_hash(cls, sid: str, fields: dict[bytes, bytes], num_turns: int) -> SessionRecord:
        get = lambda name: fields.get(name.encode(), b"").decode() or None  # noqa: E731
        try:
            return cls(session_id=sid, api_key=get("api_key") or "", status=get("status") or "open",
                       created_at=float(get("created_at") or 0.0), group_id=get("group_id"),
                       task_id=get("task_id"), metadata=json.loads(get("metadata") or "{}"),
                       reward=float(r) if (r := get("reward")) is not None else None,
                       turn_rewards=json.loads(t) if (t := get("turn_rewards")) else None,
                       num_turns=num_turns)
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(f"session {sid} hash does not decode ({exc})") from exc


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

    async def append_call(self, sid: str, call_id: str, turns: list[Turn], request: dict[str, Any] | None) -> None:
        """Record the turns of one call (one per choice) atomically, with its request once: one
        round trip on every agent call's critical path. Raises SessionFinished once the session
        finished, and records nothing for a call already voided."""
        records = encode_call(turns, request, call_id)
        keys = [self.keys.session(sid), self.keys.turns(sid), self.keys.void(sid)]
        if await self._append_script(keys=keys, args=[call_id, self.open_ttl_s, *records]) == -1:
            raise SessionFinished(f"session {sid} has finished (or does not exist); this call was not "
                                  "recorded: create a new session for new calls")

    async def void_call(self, sid: str, call_id: str) -> None:
        """The call's answer never reached the agent: its turns, recorded or still on the way to
        Redis (a stalled connection), are left out of every read."""
        await self._void_script(keys=[self.keys.void(sid), self.keys.session(sid)], args=[call_id, self.open_ttl_s])

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


@dataclass(frozen=True)
class EpisodeEntry:
    """One finished session delivered by the episode stream; ack its `entry_id` after training."""

    entry_id: str
    session_id: str


class EpisodeQueue:
    """Synchronous consumer side of the episode stream, for the trainer's main loop.

    Entries delivered but not acknowledged (the trainer crashed mid-step) are delivered again
    to the same consumer name on restart, before any new entry.
    """

    def __init__(self, url: str, prefix: str, consumer: str = "trainer-0"):
        self.keys = Keys(prefix)
        self.redis = redis.Redis.from_url(url)
        self.consumer = consumer
        try:
            self.redis.xgroup_create(self.keys.episodes, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # where the replay of entries delivered to a previous life stands: reading pending entries
        # from "0" again would return the same ones until they are acknowledged (a resumed run that
        # takes twice before its next checkpoint would get duplicates, or spin forever on entries
        # it skips), so each read continues after the last pending id it returned
        self._replay_after: str | None = "0"

    def take(self, count: int, block_ms: int | None = 1000) -> list[EpisodeEntry]:
        """Up to `count` entries: unacknowledged ones from a previous life first (each once), then
        new ones; `block_ms=None` never waits."""
        if self._replay_after is not None:
            pending = self._read(self._replay_after, count, block_ms=None)
            if pending:
                self._replay_after = pending[-1].entry_id
                return pending
            self._replay_after = None
        return self._read(">", count, block_ms)

    def backlog(self) -> list[EpisodeEntry]:
        """Every entry waiting now (replayed and new), without blocking: what a previous life of
        the run left in the stream, read before this life adds its own."""
        entries: list[EpisodeEntry] = []
        while batch := self.take(1000, block_ms=None):
            entries += batch
        return entries

    def _read(self, start: str, count: int, block_ms: int | None) -> list[EpisodeEntry]:
        reply = self.redis.xreadgroup(CONSUMER_GROUP, self.consumer, {self.keys.episodes: start},
                                      count=count, block=block_ms)
        entries = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                entries.append(EpisodeEntry(entry_id.decode(), fields[b"session_id"].decode()))
        return entries

    def trajectory(self, session_id: str) -> Trajectory:
        """A finished session's turns merged into training sequences (reads Redis, no proxy needed)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.session(session_id))
            pipe.lrange(self.keys.turns(session_id), 0, -1)
            pipe.smembers(self.keys.void(session_id))
            fields, blobs, voided = pipe.execute()
        if not fields:
            raise UnknownSession(f"episode {session_id} has no session record (expired? raise store.retention_s)")
        turns = [turn for turn, _ in decode_turns(blobs, voided)]
        record = SessionRecord.from_hash(session_id, fields, len(turns))
        sequences, branches = merge_turns(turns, reward=record.reward or 0.0, group_id=record.group_id,
                                          task_id=record.task_id)
        if discarded := fields.get(b"discarded", b"").decode():
            sequences = []  # a failed episode is no evidence about the policy: nothing of it trains
        return Trajectory(session_id=session_id, turns=turns, sequences=sequences, reward=record.reward or 0.0,
                          group_id=record.group_id, task_id=record.task_id, num_branches=branches,
                          metadata={k: str(v) for k, v in record.metadata.items()}
                          | ({"discarded": discarded} if discarded else {}))

    def ack(self, entries: list[EpisodeEntry], retention_s: int) -> None:
        """Acknowledge trained entries; their session data expires after `retention_s`."""
        if not entries:
            return
        ids = [e.entry_id for e in entries]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.episodes, CONSUMER_GROUP, *ids)
            pipe.xdel(self.keys.episodes, *ids)
            for entry in entries:
                pipe.expire(self.keys.session(entry.session_id), retention_s)
                pipe.expire(self.keys.turns(entry.session_id), retention_s)
                pipe.expire(self.keys.void(entry.session_id), retention_s)
            pipe.execute()

    def close(self) -> None:
        self.redis.close()
