"""A call is in the trace exactly when its answer reached the agent.

The proxy records a call's turns before the agent gets the end of the answer (so an answer the
agent got is always recorded). If the answer then does not reach the agent, because it
disconnected (its client timed out, it was cancelled) or because Redis did not take the record
within `store_timeout_s` (a stalled Redis: the agent gets a 503 and may retry), the call is
*voided*: its id joins the session's void set and every reader skips its turns. That holds even
for a record still on its way to a stalled Redis, which lands after the void: readers filter,
whatever the order. A void that cannot reach Redis yet is kept and retried (`VoidLedger`), and a
session is only finished once its voids are stored.

A proxy killed between the record and the end of the answer cannot void anything itself, so each
call is also *in doubt* (in its worker's hash in Redis, in the same step as the record) until its
answer is sent. Workers beat a heartbeat, and any worker that finds another dead (on this host: its
process is gone; elsewhere: its heartbeat expired) voids that worker's calls still in doubt; a
restarted proxy does so before it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import redis

from seamless.errors import SessionFinished
from seamless.proxy.control import RETRY_FIRST_S, RETRY_MAX_S
from seamless.proxy.errors import ApiError
from seamless.traces.store import TraceStore
from seamless.types import Turn

log = logging.getLogger("seamless.proxy")
T = TypeVar("T")

_VOID_ATTEMPT_S = 2.0
"""How long one attempt to store a void may take (a stalled Redis would hold it forever)."""
HEARTBEAT_S = 5.0
"""How often a worker renews its heartbeat and looks for dead workers' calls in doubt."""
HEARTBEAT_TTL_S = 60
"""A worker on another host is taken for dead once its heartbeat is this old."""


class ClientGone(ApiError):
    """The agent disconnected before its answer was sent (nobody reads this error)."""

    def __init__(self, message: str) -> None:
        super().__init__(499, message, "client_disconnected")


class VoidLedger:
    """Voids not yet stored in Redis, retried with backoff by `run` (owned by the app's task group)."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.pending: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self.worker = _worker_id()
        keys = store.keys.proxy
        self.in_doubt = keys.in_doubt(self.worker)
        """This worker's hash of calls recorded and not yet delivered."""
        self._delivered: list[str] = []

    def void(self, session_id: str, call_id: str) -> None:
        self.pending.add((session_id, call_id))
        self._wake.set()

    def delivered(self, call_id: str) -> None:
        """The call's answer was sent: it leaves the in-doubt hash (in the background)."""
        self._delivered.append(call_id)
        self._wake.set()

    async def run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self._store(sorted(self.pending)) and await self._store_delivered():
                delay = RETRY_FIRST_S
                continue
            self._wake.set()  # some are left: try again after a pause
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)

    async def flush(self, session_id: str) -> None:
        """Store the session's pending voids now; 503 while Redis cannot take them."""
        if not await self._store([p for p in sorted(self.pending) if p[0] == session_id]):
            raise ApiError(503, f"session {session_id} has calls to void that the trace store (Redis) "
                                "cannot take yet; retry the finish", "store_unavailable")

    async def flush_delivered(self) -> None:
        """Store the pending delivered marks now (a clean stop), if Redis takes them."""
        if not await self._store_delivered():
            log.warning("%d delivered call(s) stay in doubt (Redis did not answer); a later proxy voids them",
                        len(self._delivered))

    async def _store_delivered(self) -> bool:
        calls, self._delivered = self._delivered, []
        if not calls:
            return True
        try:
            async with asyncio.timeout(_VOID_ATTEMPT_S):
                await self.store.delivered(self.in_doubt, calls)
            return True
        except (TimeoutError, redis.RedisError, OSError):
            self._delivered = calls + self._delivered
            return False

    async def watch_workers(self) -> None:
        """Beat this worker's heartbeat; void the calls in doubt of workers found dead. Runs until
        cancelled (a Redis outage only delays a round)."""
        while True:
            try:
                await self.recover()
            except (redis.RedisError, OSError) as exc:
                log.debug("looking for dead workers' calls failed: %r", exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def recover(self) -> int:
        """One round of `watch_workers`; returns how many calls it voided."""
        keys, redis_ = self.store.keys.proxy, self.store.redis
        await redis_.set(keys.alive(self.worker), "1", ex=HEARTBEAT_TTL_S)
        voided = 0
        async for key in redis_.scan_iter(match=keys.in_doubt_prefix + "*", count=1000):
            worker = key.decode().removeprefix(keys.in_doubt_prefix)
            here = _runs_here(worker)  # on this host the process table says; elsewhere the heartbeat
            if worker != self.worker and (here is False or here is None and not await redis_.exists(keys.alive(worker))):
                count = await self.store.void_in_doubt(key.decode())
                if count:
                    log.warning("voided %d call(s) that proxy worker %s recorded and may not have delivered "
                                "before it died", count, worker)
                voided += count
        return voided

    async def _store(self, voids: list[tuple[str, str]]) -> bool:
        stored = True
        for void in voids:
            try:
                async with asyncio.timeout(_VOID_ATTEMPT_S):
                    await self.store.void_call(*void)
                self.pending.discard(void)
            except (TimeoutError, redis.RedisError, OSError) as exc:
                log.warning("cannot void call %s of session %s yet (%r); retrying", void[1], void[0], exc)
                stored = False
        return stored


async def record(store: TraceStore, ledger: VoidLedger, timeout_s: float, session_id: str, call_id: str,
                 turns: list[Turn], request: dict) -> None:
    """Record one call within `timeout_s`; any way it does not complete voids it."""
    try:
        async with asyncio.timeout(timeout_s):
            await store.append_call(session_id, call_id, turns, request, ledger.in_doubt)
    except SessionFinished:
        raise  # refused whole by the store: nothing to void
    except BaseException as exc:  # timeout, cancel (the agent left), a lost connection: maybe applied
        ledger.void(session_id, call_id)
        if isinstance(exc, TimeoutError):
            raise ApiError(503, f"the trace store (Redis) did not record this call within {timeout_s:g} s, "
                                "so it was dropped; retry it", "store_unavailable") from None
        raise


@contextlib.contextmanager
def voided_unless_delivered(ledger: VoidLedger, session_id: str, call_id: str):
    """Void a recorded call if what follows (sending the end of its answer) does not complete;
    once it completes, the call is no longer in doubt."""
    try:
        yield
    except BaseException:
        ledger.void(session_id, call_id)
        raise
    ledger.delivered(call_id)


def _worker_id() -> str:
    """host:pid:start: unique per process, and checkable on this host after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}:{secrets.token_hex(2)}"


def _start_time(pid: int) -> str:
    try:  # field 22 of /proc/PID/stat; the fields after the command name (which may hold spaces)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _runs_here(worker: str) -> bool | None:
    """Whether the worker's process still runs, when it ran on this host; None when that cannot be
    told (another host, no /proc)."""
    try:
        host, pid, start, _ = worker.rsplit(":", 3)
        if host != socket.gethostname() or start == "?":
            return None
        return _start_time(int(pid)) == start
    except ValueError:
        return None


async def until_disconnect(work: Awaitable[T], receive: Callable) -> T:
    """`work`'s result, unless the agent disconnects first: then it is cancelled (a call being
    recorded is voided by `record`) and ClientGone is raised."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    working = asyncio.ensure_future(work)
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((working, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (working, watching):
            task.cancel()
        await asyncio.gather(working, watching, return_exceptions=True)
    if working.cancelled():
        raise ClientGone("the agent disconnected before its answer was ready")
    return working.result()
