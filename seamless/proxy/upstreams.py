"""The proxy's pool of rollout servers: routing, health, pause/resume, weight version.

Sessions are sticky (every call of an episode goes to the same server, so its prefix cache is
reused); a new session goes to the healthy server with the fewest calls in flight. A server that
fails a call or a health check is taken out of rotation and its sessions are re-pinned on their
next call. Pausing gates new calls (they wait, they do not fail) and pauses every server;
resuming stamps the new weight version first, so tokens that arrive afterwards carry it. Those
changes reach every worker's pool as ControlOps (`apply`); `PoolControl` below orders them with
the calls to the servers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx

from seamless.errors import UpstreamUnavailable
from seamless.proxy.control import ControlBus, ControlOp

log = logging.getLogger("seamless.proxy")

PauseMode = Literal["keep", "abort"]


@dataclass
class Upstream:
    url: str
    model: str
    healthy: bool = True
    inflight: int = 0
    calls: int = 0
    failures: int = 0
    last_error: str = ""

    def as_dict(self) -> dict:
        return {"url": self.url, "model": self.model, "healthy": self.healthy, "inflight": self.inflight,
                "calls": self.calls, "failures": self.failures, "last_error": self.last_error}


@dataclass
class FailoverEvent:
    session_id: str
    from_url: str
    to_url: str | None
    reason: str
    at: float = field(default_factory=time.time)


class UpstreamPool:
    def __init__(self, client: httpx.AsyncClient, control_timeout_s: float = 30.0):
        self.client = client
        self.control_timeout_s = control_timeout_s
        self.upstreams: dict[str, Upstream] = {}
        self.pins: dict[str, str] = {}  # session id -> upstream url
        self.version = 0
        self.paused = False
        self.pause_mode: PauseMode = "keep"
        self.continuations = 0  # calls resumed after an abort (partial rollout)
        self.cache_salt: str | None = None
        """Added to every upstream request (per weight version), so no KV of old weights is reused."""
        self._running = asyncio.Event()
        self._running.set()
        self._changed = asyncio.Condition()  # notified when an upstream is added or recovers
        self.failovers: list[FailoverEvent] = []
        self.last_health_round = time.monotonic()
        """When the health loop last finished a round (time.monotonic)."""

    # membership -----------------------------------------------------------------------------

    async def probe(self, url: str) -> str:
        """The model a server serves; it must be up and answer GET /v1/models."""
        try:
            response = await self.client.get(f"{url}/v1/models", timeout=self.control_timeout_s)
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise UpstreamUnavailable(f"upstream {url} did not answer GET /v1/models ({exc!r}); "
                                      "is it a running vLLM server?") from exc

    async def apply(self, op: ControlOp, stored: bool = False) -> None:
        """A change every worker makes to its own pool (control.py publishes it to all). `stored`:
        read back from Redis (start, reconnect), where a known server keeps the health it has."""
        if op.kind == "add" and stored and op.url in self.upstreams:
            self.upstreams[op.url].model = op.model
        elif op.kind == "add":
            upstream = self.upstreams.get(op.url) or Upstream(url=op.url, model=op.model)
            upstream.model, upstream.healthy = op.model, True
            self.upstreams[op.url] = upstream
            async with self._changed:
                self._changed.notify_all()
        elif op.kind == "remove":
            self.upstreams.pop(op.url, None)
            for sid in [s for s, u in self.pins.items() if u == op.url]:
                del self.pins[sid]
        elif op.kind == "gate":
            self.paused, self.pause_mode = bool(op.paused), op.mode or "keep"
            if self.paused:
                self._running.clear()
            else:
                self._running.set()
        elif op.kind == "version":
            if op.version is not None:
                self.version = op.version
            if op.cache_salt is not None:
                self.cache_salt = op.cache_salt or None  # "" turns salting off

    def unpin(self, session_id: str) -> None:
        self.pins.pop(session_id, None)

    def pin(self, session_id: str, url: str) -> None:
        """Send the session's next calls to `url` (where its last call ran), while it is registered."""
        if url in self.upstreams:
            self.pins[session_id] = url

    # routing ---------------------------------------------------------------------------------

    def pick(self, session_id: str, exclude: set[str] = frozenset()) -> Upstream:
        """The session's pinned server if healthy, else the least-loaded healthy one (re-pinned)."""
        pinned = self.pins.get(session_id)
        if pinned and pinned not in exclude:
            upstream = self.upstreams.get(pinned)
            if upstream and upstream.healthy:
                return upstream
        candidates = [u for u in self.upstreams.values() if u.healthy and u.url not in exclude]
        if not candidates:
            raise UpstreamUnavailable(
                f"no healthy rollout server ({len(self.upstreams)} registered); register one with "
                "POST /admin/upstreams or check the servers' logs")
        upstream = min(candidates, key=lambda u: (u.inflight, u.calls))
        if pinned and pinned != upstream.url:
            self.failovers.append(FailoverEvent(session_id, pinned, upstream.url, "pinned server unhealthy"))
        self.pins[session_id] = upstream.url
        return upstream

    def mark_failed(self, upstream: Upstream, error: str) -> None:
        upstream.healthy = False
        upstream.failures += 1
        upstream.last_error = error
        log.warning("upstream %s failed: %s", upstream.url, error)

    async def wait_for_healthy(self, timeout_s: float) -> None:
        """Wait until some server is healthy (e.g. a restarted one re-registers)."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: any(u.healthy for u in self.upstreams.values())), timeout_s)

    async def check_health(self) -> None:
        async def check(upstream: Upstream) -> None:
            try:
                ok = (await self.client.get(f"{upstream.url}/health", timeout=5.0)).status_code == 200
            except httpx.HTTPError as exc:
                ok, upstream.last_error = False, repr(exc)
            if ok and not upstream.healthy:
                log.info("upstream %s is healthy again", upstream.url)
                upstream.healthy = True
                async with self._changed:
                    self._changed.notify_all()
            elif not ok and upstream.healthy:
                self.mark_failed(upstream, upstream.last_error or "health check failed")

        await asyncio.gather(*(check(u) for u in list(self.upstreams.values())))

    async def health_loop(self, interval_s: float) -> None:
        """Check every server each `interval_s`, forever: a failed round is logged and the next one
        runs (a server that comes back is only re-admitted by a round that runs)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_health()
            except Exception:  # CancelledError is no Exception: cancelling still ends the loop
                log.exception("upstream health check failed; retrying in %.1f s", interval_s)
                continue
            self.last_health_round = time.monotonic()

    def health_checks_current(self, interval_s: float) -> bool:
        """Whether a health round finished recently (one round may take a 5 s check)."""
        return time.monotonic() - self.last_health_round < 2 * interval_s + 10.0

    # pause / resume --------------------------------------------------------------------------

    async def wait_running(self) -> None:
        """Block a new call while rollout is paused for a weight update."""
        await self._running.wait()

    async def pause_servers(self, mode: PauseMode, only: str | None = None) -> None:
        await asyncio.gather(*(self._control(u, "pause", params={"mode": mode})
                               for u in self.upstreams.values() if u.healthy and only in (None, u.url)))

    async def resume_servers(self) -> None:
        await asyncio.gather(*(self._control(u, "resume") for u in self.upstreams.values() if u.healthy))

    async def _control(self, upstream: Upstream, route: str, params: dict | None = None) -> None:
        try:
            response = await self.client.post(f"{upstream.url}/{route}", params=params,
                                              timeout=self.control_timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.mark_failed(upstream, f"POST /{route} failed: {exc!r}")


class PoolControl:
    """The admin operations on the pool, in the order that keeps every worker consistent: shared
    state first (all workers applied it), then the servers."""

    def __init__(self, pool: UpstreamPool, bus: ControlBus) -> None:
        self.pool = pool
        self.bus = bus

    async def add(self, url: str) -> Upstream:
        url = url.rstrip("/")
        model = await self.pool.probe(url)
        await self.bus.broadcast(ControlOp("add", url=url, model=model))
        if self.pool.paused:  # a server joining during a weight update must not generate on old weights
            await self.pool.pause_servers(self.pool.pause_mode, only=url)
        return self.pool.upstreams[url]

    async def remove(self, url: str) -> bool:
        url = url.rstrip("/")
        known = url in self.pool.upstreams
        if known:
            await self.bus.broadcast(ControlOp("remove", url=url))
        return known

    async def pause(self, mode: PauseMode = "keep") -> None:
        await self.bus.broadcast(ControlOp("gate", paused=True, mode=mode))
        await self.pool.pause_servers(mode)

    async def resume(self, version: int | None = None, cache_salt: str | None = None) -> None:
        # every worker stamps the new version before any server produces a token with it
        await self.bus.broadcast(ControlOp("version", version=version, cache_salt=cache_salt))
        await self.pool.resume_servers()
        await self.bus.broadcast(ControlOp("gate", paused=False, mode=self.pool.pause_mode))
