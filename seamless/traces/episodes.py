"""The trainer's side of the traces: the stream of finished episodes, read synchronously by the main
loop, each merged into training sequences (`traces/merge.py`) and acknowledged once trained."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from seamless.errors import UnknownSession
from seamless.traces.codec import SessionRecord, decode_turns
from seamless.traces.keys import CONSUMER_GROUP, Keys
from seamless.traces.merge import merge_turns
from seamless.types import Trajectory


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
