"""A call is in the trace exactly when its answer reached the agent.

The proxy records a call's turns before the agent gets the end of the answer (so an answer the
agent got is always recorded). If the answer then does not reach the agent, because it
disconnected (its client timed out, it was cancelled) or because Redis did not take the record
within `store_timeout_s` (a stalled Redis: the agent gets a 503 and may retry), the call is
*voided*: its id joins the session's void set and every reader skips its turns. That holds even
for a record still on its way to a stalled Redis, which lands after the void: readers filter,
whatever the order. A void that cannot reach Redis yet is kept and retried (`VoidLedger`), and a
session is only finished once its voids are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
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

    def void(self, session_id: str, call_id: str) -> None:
        self.pending.add((session_id, call_id))
        self._wake.set()

    async def run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self._store(sorted(self.pending)):
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
            await store.append_call(session_id, call_id, turns, request)
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
    """Void a recorded call if what follows (sending the end of its answer) does not complete."""
    try:
        yield
    except BaseException:
        ledger.void(session_id, call_id)
        raise


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
