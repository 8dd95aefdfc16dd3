"""The trainer's side of the traces: the stream of finished episodes, read synchronously by the main
loop, each merged into training sequences (`traces/merge.py`) and acknowledged once trained.

Redis going away (restarted, stopped, a network blip) does not end the run: every command is
retried with backoff, each wait logged, until Redis answers or `outage_s` has passed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from seamless.errors import ServiceError, UnknownSession
from seamless.traces.codec import SessionRecord, decode_turns
from seamless.traces.keys import CONSUMER_GROUP, Keys
from seamless.traces.merge import merge_turns
from seamless.types import Trajectory

log = logging.getLogger("seamless.run")

T = TypeVar("T")
RETRY_FIRST_S = 0.2
"""First wait before retrying a command Redis did not answer; doubles up to RETRY_MAX_S."""
RETRY_MAX_S = 5.0


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

    def __init__(self, url: str, prefix: str, consumer: str = "trainer-0", *, outage_s: float = 600.0,
                 socket_timeout_s: float = 15.0, train_constrained: bool = False):
        self.keys = Keys(prefix)
        self.train_constrained = train_constrained
        self.url, self.outage_s = url, outage_s
        # a stopped Redis never answers: the socket timeout turns that into an error we retry and
        # log (a blocking read must ask for less than it); redis-py's own silent retries are off
        self.socket_timeout_s = socket_timeout_s
        self.redis = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=5,
                                          retry=Retry(NoBackoff(), 0))
        self.consumer = consumer
        self._retrying("XGROUP CREATE", self._create_group)
        # where the replay of entries delivered to a previous life stands: reading pending entries
        # from "0" again would return the same ones until they are acknowledged (a resumed run that
        # takes twice before its next checkpoint would get duplicates, or spin forever on entries
        # it skips), so each read continues after the last pending id it returned
        self._replay_after: str | None = "0"
        # entries this life took and has not acknowledged: a read whose reply was lost (Redis
        # stalled past the socket timeout) may have delivered entries we never saw; the pending
        # list is then read again, skipping these
        self._taken: set[str] = set()

    def _create_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.episodes, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def take(self, count: int, block_ms: int | None = 1000) -> list[EpisodeEntry]:
        """Up to `count` entries: unacknowledged ones from a previous life first (each once), then
        new ones; `block_ms=None` never waits."""
        deadline = time.monotonic() + (block_ms or 0) / 1000
        while True:
            # a blocking read waits in pieces well inside the socket timeout, or a quiet stream
            # would read as a stalled Redis
            piece = None if block_ms is None else max(1, min(int((deadline - time.monotonic()) * 1000),
                                                             int(self.socket_timeout_s * 500)))
            entries = self._replayed(count) or self._read(">", count, piece)
            waited = block_ms is None or time.monotonic() >= deadline
            if entries or (waited and self._replay_after is None):
                self._taken.update(e.entry_id for e in entries)
                return entries

    def _replayed(self, count: int) -> list[EpisodeEntry]:
        """Pending entries (delivered, not acknowledged) this life has not taken yet."""
        while self._replay_after is not None:
            pending = self._read(self._replay_after, count, block_ms=None)
            if not pending:
                self._replay_after = None
                break
            self._replay_after = pending[-1].entry_id
            if fresh := [e for e in pending if e.entry_id not in self._taken]:
                return fresh
        return []

    def backlog(self) -> list[EpisodeEntry]:
        """Every entry waiting now (replayed and new), without blocking: what a previous life of
        the run left in the stream, read before this life adds its own."""
        entries: list[EpisodeEntry] = []
        while batch := self.take(1000, block_ms=None):
            entries += batch
        return entries

    def _read(self, start: str, count: int, block_ms: int | None) -> list[EpisodeEntry]:
        def read():
            try:
                return self.redis.xreadgroup(CONSUMER_GROUP, self.consumer, {self.keys.episodes: start},
                                             count=count, block=block_ms)
            except (redis.ConnectionError, redis.TimeoutError):
                if start == ">":  # Redis may have delivered entries whose reply we lost
                    self._replay_after = "0"
                raise
        reply = self._retrying("XREADGROUP", read)
        entries = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                entries.append(EpisodeEntry(entry_id.decode(), fields[b"session_id"].decode()))
        return entries

    def in_stream(self) -> list[EpisodeEntry]:
        """Every entry the stream holds now, delivered or not: finished episodes not acknowledged
        (trained entries are deleted when acknowledged). For the end-of-run audit (traces/audit.py)."""
        items = self._retrying("XRANGE", lambda: self.redis.xrange(self.keys.episodes, "-", "+"))
        return [EpisodeEntry(entry_id.decode(), fields[b"session_id"].decode()) for entry_id, fields in items]

    def trajectory(self, session_id: str) -> Trajectory:
        """A finished session's turns merged into training sequences (reads Redis, no proxy needed)."""
        def read():
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.session(session_id))
                pipe.lrange(self.keys.turns(session_id), 0, -1)
                pipe.smembers(self.keys.void(session_id))
                return pipe.execute()
        fields, blobs, voided = self._retrying(f"the trajectory of {session_id}", read)
        if not fields:
            raise UnknownSession(f"episode {session_id} has no session record (expired? raise store.retention_s)")
        turns = [turn for turn, _ in decode_turns(blobs, voided)]
        record = SessionRecord.from_hash(session_id, fields, len(turns))
        sequences, branches = merge_turns(turns, reward=record.reward or 0.0, group_id=record.group_id,
                                          task_id=record.task_id, train_constrained=self.train_constrained)
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

        def acknowledge() -> None:  # idempotent: a retry after a lost reply changes nothing more
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.episodes, CONSUMER_GROUP, *ids)
                pipe.xdel(self.keys.episodes, *ids)
                for entry in entries:
                    pipe.expire(self.keys.session(entry.session_id), retention_s)
                    pipe.expire(self.keys.turns(entry.session_id), retention_s)
                    pipe.expire(self.keys.void(entry.session_id), retention_s)
                pipe.execute()
        self._retrying("XACK", acknowledge)
        self._taken.difference_update(ids)

    def _retrying(self, what: str, command: Callable[[], T]) -> T:
        """`command()`, retried with backoff while Redis is unreachable or does not answer (each wait
        logged); ServiceError once that has lasted `outage_s`."""
        started, delay, failed = time.monotonic(), RETRY_FIRST_S, False
        while True:
            try:
                result = command()
            except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError: a ConnectionError
                waited = time.monotonic() - started
                if waited + delay > self.outage_s:
                    raise ServiceError(f"Redis at {self.url} did not answer {what} for {waited:.0f} s ({exc!r}); "
                                       "is it running? (store.outage_s sets how long the run waits)") from exc
                log.warning("Redis did not answer %s (%r); retrying in %.1f s (%.0f of %g s waited, "
                            "store.outage_s)", what, exc, delay, waited, self.outage_s)
                time.sleep(delay)
                delay, failed = min(2 * delay, RETRY_MAX_S), True
                continue
            if failed:
                log.warning("Redis answered %s again after %.1f s; the run goes on", what,
                            time.monotonic() - started)
            return result

    def close(self) -> None:
        self.redis.close()
