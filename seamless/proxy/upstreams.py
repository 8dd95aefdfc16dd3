"""The proxy's pool of rollout servers: routing, health, pause/resume, weight version.

Sessions are sticky (every call of an episode goes to the same server, so its prefix cache is
reused); a new session goes to the healthy server with the fewest calls in flight. A server that
fails a call or a health check is taken out of rotation and its sessions are re-pinned on their
next call. Pausing gates new calls (they wait, they do not fail) and pauses every server;
resuming stamps the new weight version first, so tokens that arrive afterwards carry it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx

from seamless.errors import UpstreamUnavailable

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

    # membership -----------------------------------------------------------------------------

    async def add(self, url: str) -> Upstream:
        """Register a server; asks it for its model name, so it must be up."""
        url = url.rstrip("/")
        try:
            response = await self.client.get(f"{url}/v1/models", timeout=self.control_timeout_s)
            response.raise_for_status()
            model = response.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise UpstreamUnavailable(f"upstream {url} did not answer GET /v1/models ({exc!r}); "
                                      "is it a running vLLM server?") from exc
        upstream = self.upstreams.get(url) or Upstream(url=url, model=model)
        upstream.model, upstream.healthy = model, True
        self.upstreams[url] = upstream
        if self.paused:  # a server joining during a weight update must not generate on old weights
            await self._control(upstream, "pause", params={"mode": self.pause_mode})
        async with self._changed:
            self._changed.notify_all()
        return upstream

    def remove(self, url: str) -> bool:
        url = url.rstrip("/")
        removed = self.upstreams.pop(url, None) is not None
        for sid in [s for s, u in self.pins.items() if u == url]:
            del self.pins[sid]
        return removed

    def unpin(self, session_id: str) -> None:
        self.pins.pop(session_id, None)

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
        while True:
            await asyncio.sleep(interval_s)
            await self.check_health()

    # pause / resume --------------------------------------------------------------------------

    async def wait_running(self) -> None:
        """Block a new call while rollout is paused for a weight update."""
        await self._running.wait()

    async def pause(self, mode: PauseMode = "keep") -> None:
        self.paused, self.pause_mode = True, mode
        self._running.clear()
        await asyncio.gather(*(self._control(u, "pause", params={"mode": mode})
                               for u in self.upstreams.values() if u.healthy))

    async def resume(self, version: int | None = None, cache_salt: str | None = None) -> None:
        if version is not None:
            self.version = version  # before /resume: tokens arriving from now on are the new version
        if cache_salt is not None:
            self.cache_salt = cache_salt or None  # "" turns salting off
        await asyncio.gather(*(self._control(u, "resume") for u in self.upstreams.values() if u.healthy))
        self.paused = False
        self._running.set()

    async def _control(self, upstream: Upstream, route: str, params: dict | None = None) -> None:
        try:
            response = await self.client.post(f"{upstream.url}/{route}", params=params,
                                              timeout=self.control_timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.mark_failed(upstream, f"POST /{route} failed: {exc!r}")
