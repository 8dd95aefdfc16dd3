"""The rollout fleet: vLLM servers as Ray actors behind the proxy, and weight updates to them.

One `VLLMFleet` owns every server of a run. It places a server actor on a leased rollout
resource, registers the server with the proxy over its admin API, restarts servers that die
(with backoff, each death and restart reported as a `ServerEvent`), and hands every weight update
to its `WeightPublisher` (rollout/publisher.py: the one sequence and the one version), for the
servers in rotation (`publish`) and for each server that (re)joins.

Rollout capacity comes and goes with Ray's nodes. A server whose node dies is dropped from the
update in progress, taken out of the proxy's rotation (its in-flight calls continue on the other
servers) and waits, without counting failures, until Ray has a node for its resource again (Ray
re-places the resource's bundle on a matching node that joins); then it starts there, warms up,
loads the current weights and rejoins the proxy. An elastic resource (cluster.resources.N.elastic)
whose node is not there yet starts the same way: registered as waiting (`waiting`), no capacity
counted, and served from the moment a node that offers it joins. Nodes joining and leaving (`cluster/node_watch.py`)
and every server event go to `listeners` as they happen (the run's timeline) and wait in
`take_events()` for the next step's log row. The scheduler drives its
servers' roles through `scheduler.adapters.FleetOnLeases`; the main loop publishes weights with it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from seamless.config import ModelConfig, RolloutConfig
from seamless.cluster.devices import DeviceMap, DeviceSlot
from seamless.cluster.node_watch import NodeEvent, NodeWatch
from seamless.errors import ConfigError, ServiceError
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.publisher import WeightPublisher
from seamless.rollout.records import CAPACITY_KINDS, Lease, ServerEvent, ServerStats, WeightUpdateMetrics
from seamless.rollout.server_actor import ServerActor
from seamless.rollout.server_http import post_each
from seamless.rollout.server_metrics import read_metrics
from seamless.rollout.switch import NO_SWITCH, MemorySwitch
from seamless.rollout.transport import DiskTransport, PushPlan, RankTransport, WeightPusher, WeightTransport
from seamless.rollout.weights import WeightSource
from seamless.services.http import control_client
from seamless.services.network import LOOPBACK, server_headers, server_key
from seamless.services.vllm_server import VLLMServerOptions, cuda_available

log = logging.getLogger("seamless.rollout")


@dataclass
class _Server:
    resource_id: int
    lease: Lease | None
    actor: Any
    url: str
    pid: int
    started_at: float
    failures: int = 0
    restart_at: float = 0.0
    state: str = "up"  # up | down (waiting to restart) | starting (restarting) | gone (gave up) | parked
    version: int = 0
    """Weights the server holds."""
    sleeps: bool = False
    """It shares its GPU with a trainer rank and sleeps while the rank trains (vLLM sleep mode)."""
    transfer: str = "disk"
    """How the trainer's weights reach it: `ipc` (from the rank on its GPU), `nccl`, or `disk`."""
    tokens: int = 0
    tokens_at: float = 0.0
    spawned_on: str | None = None
    """The Ray node of the resource's bundle when its latest restart began."""


def server_options(model: ModelConfig, rollout: RolloutConfig) -> VLLMServerOptions:
    """What every server of a run is started with, from the recipe: the model's dtype and context
    length (vLLM would otherwise serve fp32 with its own default length, cutting answers short), the
    memory share and tensor-parallel size (GPUs), the KV cache size (CPU), the cap on sequences
    decoded at once and extra flags."""
    return VLLMServerOptions(dtype=model.dtype, max_model_len=model.max_model_len,
                             kv_cache_memory_bytes=rollout.kv_cache_memory_bytes,
                             max_num_seqs=rollout.max_num_seqs,
                             gpu_memory_utilization=rollout.gpu_memory_utilization,
                             tensor_parallel_size=rollout.tensor_parallel_size,
                             extra_args=list(rollout.extra_server_args))


def make_transport(config: RolloutConfig, run_dir: Path) -> WeightTransport:
    """The transport `rollout.weight_sync` names: on GPUs (`auto`) the trainer's ranks send,
    with safetensors as the fallback; on CPU safetensors alone."""
    root = Path("/dev/shm") / f"seamless-{os.getpid()}-{run_dir.name}" if config.weight_dir == "shm" else run_dir / "weights"
    disk = DiskTransport(root)
    if config.weight_sync == "auto" and cuda_available():
        return RankTransport(disk)
    return disk


class VLLMFleet:
    """vLLM servers on rollout resources, registered with the proxy at `proxy`.

    `devices` places each server on its resource's device (a resident of a [train, rollout]
    resource shares the GPU with the trainer rank there); without it, servers started outside a
    lease ask Ray for no GPU (tests that place servers themselves)."""

    def __init__(self, model_dir: str | Path, run_dir: str | Path, proxy: ProxyAdmin,
                 config: RolloutConfig | None = None, options: VLLMServerOptions | None = None,
                 transport: WeightTransport | None = None, devices: DeviceMap | None = None,
                 model: ModelConfig | None = None, bind: str = LOOPBACK):
        self.model_dir = Path(model_dir).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.proxy = proxy
        config = config or RolloutConfig()
        self.transport = transport or make_transport(config, self.run_dir)
        self.devices = devices
        base = options or server_options(model or ModelConfig(), config)
        # a fixed served name, so a restarted server (or one on new weights) answers to the same model
        # `bind` beyond loopback ("node": the address of the node each server lands on) needs the
        # servers' API key, which the proxy and every call here send ($SEAMLESS_VLLM_API_KEY)
        self.options = replace(base, served_model_name=base.served_model_name or self.model_dir.name,
                               extra_args=[*base.extra_args, *self.transport.server_args()],
                               host=bind, api_key=base.api_key or server_key())
        self.publisher = WeightPublisher(self.transport, proxy, config)
        if isinstance(self.transport, RankTransport):
            self.transport.plan = self.push_plan
        self._rank_of: dict[int, int] = {}  # resource id -> the trainer rank on its GPU
        self._joining: dict[str, tuple[int, str]] = {}  # url -> (resource, transfer) of a server loading weights to join
        self.switch: MemorySwitch = NO_SWITCH
        """How a sleeping server and the trainer rank beside it trade the GPU (set by the run's parts)."""
        self.events: list[ServerEvent | NodeEvent] = []
        """Every server and node event of the run, in order."""
        self.listeners: list[Callable[[ServerEvent | NodeEvent], None]] = []
        """Called with each change of rollout capacity as it happens (nodes, server deaths and
        restarts; from the supervisor's thread, too)."""
        self.nodes: NodeWatch | None = None
        """Ray's nodes, polled at each health check when set (a run on a Ray cluster)."""
        self._taken = 0  # events already handed out by take_events()
        self._servers: dict[int, _Server] = {}
        self._lock = threading.RLock()  # membership, restarts and updates never interleave
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._launches = 0
        self._warmed: set[str] = set()

    # membership ------------------------------------------------------------------------------

    @property
    def config(self) -> RolloutConfig:
        """The rollout section: one copy, the publisher's (it drives updates; the fleet reads its
        health and restart settings from the same object)."""
        return self.publisher.config

    @property
    def version(self) -> int:
        """The weights every server in rotation serves (the publisher's version)."""
        return self.publisher.version

    def send_from(self, trainer: WeightPusher, rank_of_resource: Mapping[int, int]) -> None:
        """The trainer's ranks send weights themselves (a `RankTransport`, on GPUs): the rank on a
        [train, rollout] resource to the server beside it. Call before any server starts."""
        self._rank_of = dict(rank_of_resource)
        if isinstance(self.transport, RankTransport):
            self.transport.pusher = trainer

    def push_plan(self, urls: Sequence[str]) -> PushPlan:
        """For each of these servers, how the trainer's ranks reach it (chosen when it started)."""
        with self._lock:
            known = {s.url: (s.resource_id, s.transfer) for s in self._servers.values()} | self._joining
        ipc: dict[int, str] = {}
        nccl, disk = [], []
        for url in urls:
            rid, transfer = known.get(url, (None, "disk"))
            if transfer == "ipc" and rid in self._rank_of:
                ipc[self._rank_of[rid]] = url
            elif transfer == "nccl":
                nccl.append(url)
            else:
                disk.append(url)
        return PushPlan(ipc=ipc, nccl=tuple(nccl), disk=tuple(disk))

    def _transfer_backend(self, rid: int, slot: DeviceSlot | None) -> str | None:
        """vLLM's weight-transfer backend for a server on `rid`, when the ranks send weights."""
        if not isinstance(self.transport, RankTransport) or slot is None:
            return None
        return "ipc" if slot.shared and rid in self._rank_of else "nccl"

    def add_server(self, lease: Lease | None, resource_id: int | None = None) -> str:
        """Start a server on the lease (or anywhere, without one) with the current weights, register
        it with the proxy; returns its URL once it takes requests."""
        rid = lease.resource.id if lease is not None else resource_id
        if rid is None:
            raise ConfigError("add_server needs a lease (from the scheduler) or an explicit resource_id")
        with self._lock:
            if rid in self._servers and self._servers[rid].state == "parked":
                self._unpark(self._servers[rid])
                return self._servers[rid].url
            if rid in self._servers and self._servers[rid].state != "gone":
                raise ConfigError(f"resource {rid} already runs a server ({self._servers[rid].url})")
            if self._awaits_node(rid, lease):
                self._wait_for_node(rid, lease)
                return ""
            server = self._launch(rid, lease)
            self._servers[rid] = server
            self._event(server, "started")
            return server.url

    def add_servers(self, leases: Sequence[Lease], residents: Sequence[int] = ()) -> list[str]:
        """Start several servers at once (they start in parallel): one in each lease, and one on
        each resource of `residents` outside any lease (asking Ray for no GPU)."""
        import ray

        with self._lock:
            waiting = [lease for lease in leases if self._awaits_node(lease.resource.id, lease)]
            for lease in waiting:
                self._wait_for_node(lease.resource.id, lease)
            leases = [lease for lease in leases if lease not in waiting]
            starting = [(lease.resource.id, lease, *self._spawn(lease.resource.id, lease)) for lease in leases]
            starting += [(rid, None, *self._spawn(rid, None)) for rid in residents]
            try:  # every server up, then all warmed at once (each warm-up is mostly waiting)
                started = ray.get([pending for *_, pending in starting], timeout=self.options.startup_timeout_s + 30)
                self._warm([url for url, _ in started])
            except Exception:
                for *_, actor, _ in starting:
                    ray.kill(actor, no_restart=True)
                raise
            urls = []
            for rid, lease, actor, pending in starting:
                server = self._finish_launch(rid, lease, actor, pending)
                self._servers[rid] = server
                self._event(server, "started")
                urls.append(server.url)
            return urls

    def _awaits_node(self, rid: int, lease: Lease | None) -> bool:
        """An elastic resource that no node offers now: its server starts when one joins."""
        slot = self._slot(rid, lease)
        return (self.devices is not None and slot is not None and self.devices.holds(slot)
                and rid in self.devices.elastic_groups and not self.devices.placed(rid))

    def _wait_for_node(self, rid: int, lease: Lease | None) -> None:
        """Register the resource's server as down, to start when Ray places its bundle (`check`)."""
        now = time.monotonic()
        server = _Server(rid, lease, actor=None, url="", pid=0, started_at=now, state="down",
                         restart_at=now + self.config.health_interval_s, tokens_at=now)
        self._servers[rid] = server
        self._event(server, "waiting", "elastic: no node offers it yet; it starts when one joins")

    def remove_server(self, resource_id: int) -> None:
        """Unregister the server, abort its in-flight requests (the proxy continues them on the
        other servers), stop it; returns when its resource is free."""
        with self._lock:
            server = self._servers.pop(resource_id, None)
            if server is None:
                raise ConfigError(f"no server on resource {resource_id}; running: {sorted(self._servers)}")
            self.proxy.remove_upstream(server.url)
            if server.state == "up":
                try:  # abort, not keep: the requests move to the remaining servers
                    post_each([server.url], "/pause", params={"mode": "abort"}, timeout_s=30)
                except ServiceError as exc:
                    log.warning("draining %s failed: %s", server.url, exc)
            self._end(server)
            self._event(server, "removed")

    def park_server(self, resource_id: int) -> None:
        """Take the server out of rotation but keep its process: unregister it from the proxy and
        abort its in-flight requests (the proxy continues them on the other servers). A later
        `add_server` on the same resource brings it back in milliseconds instead of a restart
        (on GPUs this is where vLLM would sleep and free its memory for a trainer rank)."""
        with self._lock:
            server = self._servers.get(resource_id)
            if server is None or server.state != "up":
                raise ConfigError(f"no running server on resource {resource_id} to park; running: "
                                  f"{sorted(self.servers())}")
            self.proxy.remove_upstream(server.url)
            post_each([server.url], "/pause", params={"mode": "abort"}, timeout_s=30)
            if server.sleeps:
                self.switch.to_train([server.url])  # its GPU memory goes to the trainer rank beside it
            server.state = "parked"
            self._event(server, "parked")

    def _unpark(self, server: _Server) -> None:
        """Back into rotation on the current weights (loaded while still paused; a server that slept
        dropped its weights and always reloads)."""
        if server.sleeps or server.version != self.version:
            self._rejoin(server.url, server.sleeps)
        else:
            post_each([server.url], "/resume")
        server.version = self.version
        self.proxy.add_upstream(server.url)
        server.state = "up"
        self._event(server, "unparked", f"weights v{self.version}")

    def _rejoin(self, url: str, sleeps: bool) -> None:
        """The publisher's sequence for one server out of rotation (parked, or new)."""
        self.publisher.apply([url], self.switch if sleeps else NO_SWITCH, rejoining=True)

    def servers(self) -> dict[int, str]:
        """URL of each running server, by resource id."""
        with self._lock:
            return {rid: s.url for rid, s in self._servers.items() if s.state == "up"}

    def all_servers(self) -> dict[int, str]:
        """URL of each server the fleet holds, parked ones too, by resource id."""
        with self._lock:
            return {rid: s.url for rid, s in self._servers.items() if s.state != "gone" and s.url}

    def actor(self, resource_id: int) -> Any:
        return self._servers[resource_id].actor

    def _spawn(self, rid: int, lease: Lease | None) -> tuple[Any, Any]:
        import ray

        self._launches += 1
        actor = ray.remote(ServerActor).options(**self.actor_options(rid, lease)).remote()
        work_dir = self.run_dir / "servers" / f"r{rid}-{self._launches}"
        slot = self._slot(rid, lease)
        # a server sharing its GPU with a trainer rank must be able to sleep (free its memory)
        options = replace(self.options, enable_sleep_mode=slot is not None and slot.shared,
                          weight_transfer=self._transfer_backend(rid, slot))
        return actor, actor.start.remote(str(self.model_dir), str(work_dir), options)

    def actor_options(self, rid: int, lease: Lease | None) -> dict[str, Any]:
        """Ray options of the server actor on resource `rid`: its share of the resource's device."""
        slot = self._slot(rid, lease)
        options: dict[str, Any] = {"num_cpus": 0, "num_gpus": 0, "max_restarts": 0}
        if slot is not None:
            options.update(slot.actor_options())
        return options

    def _slot(self, rid: int, lease: Lease | None) -> DeviceSlot | None:
        """The device a server on `rid` runs on: its lease's, a resident's from the run's devices, or
        none (a fleet used without devices)."""
        if lease is not None:
            return lease.slot
        return self.devices.slot(rid) if self.devices is not None else None

    def _finish_launch(self, rid: int, lease: Lease | None, actor: Any, pending: Any) -> _Server:
        import ray

        try:
            url, pid = ray.get(pending, timeout=self.options.startup_timeout_s + 30)
            sleeps, transfer = ray.get([actor.sleeps.remote(), actor.weight_transfer.remote()], timeout=30)
            self._warm([url])  # a no-op for servers add_servers warmed already
            if self.version > 0:  # a server joining late loads the weights the others serve
                self._joining[url] = (rid, transfer)  # push_plan finds it before it is in _servers
                try:
                    self._rejoin(url, sleeps=False)  # awake: it just started
                finally:
                    self._joining.pop(url, None)
            self.proxy.add_upstream(url)
        except Exception:
            ray.kill(actor, no_restart=True)
            raise
        now = time.monotonic()
        return _Server(rid, lease, actor, url, pid, started_at=now, version=self.version, sleeps=sleeps,
                       transfer=transfer, tokens_at=now)

    def _warm(self, urls: Sequence[str]) -> None:
        """A few small requests on each new server before it joins the proxy: vLLM on CPU runs its
        first requests many times slower than later ones (measured with scripts/run_policies.py
        --measure-switch), which would otherwise stall the first episodes routed to it."""
        urls = [url for url in urls if url not in self._warmed]
        if not urls:
            return
        body = {"model": self.options.served_model_name, "prompt": "1+2=", "max_tokens": 4, "logprobs": 1}
        post_each([url for url in urls for _ in range(4)], "/v1/completions", json=body, timeout_s=300)
        self._warmed.update(urls)

    def _launch(self, rid: int, lease: Lease | None) -> _Server:
        return self._finish_launch(rid, lease, *self._spawn(rid, lease))

    def _end(self, server: _Server, wait_s: float = 30) -> None:
        import ray

        if server.actor is None:  # never started: an elastic resource waiting for a node, or a test's stand-in
            return
        try:
            ray.get(server.actor.stop.remote(), timeout=wait_s)
        except Exception as exc:  # the actor is gone already: its server dies with it
            log.info("stopping %s: %s", server.url, exc)
        ray.kill(server.actor, no_restart=True)
        if _on_this_node(server.url):  # a pid of another node's server means nothing here
            _kill_group(server.pid)

    def _event(self, server: _Server, kind: str, detail: str = "") -> None:
        event = ServerEvent(server.resource_id, kind, server.url, detail)  # type: ignore[arg-type]
        (log.warning if kind in ("died", "restart_failed", "gave_up") else log.info)(
            "server r%d %s %s %s", server.resource_id, kind, server.url, detail)
        self._tell(event)

    def _tell(self, event: ServerEvent | NodeEvent) -> None:
        with self._lock:
            self.events.append(event)
        if isinstance(event, ServerEvent) and event.kind not in CAPACITY_KINDS:
            return
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener (the timeline) must never stop supervision
                log.exception("fleet event listener failed on %s", event)

    def take_events(self) -> list[ServerEvent | NodeEvent]:
        """Events since the previous call (for the step's log row)."""
        with self._lock:
            fresh, self._taken = self.events[self._taken:], len(self.events)
        return fresh

    # supervision -----------------------------------------------------------------------------

    def start_supervisor(self) -> None:
        """Check health every rollout.health_interval_s in a background thread."""
        if self._supervisor is None:
            self._stop.clear()
            self._supervisor = threading.Thread(target=self._supervise, name="fleet-supervisor", daemon=True)
            self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stop.wait(self.config.health_interval_s):
            try:
                self.check()
            except Exception:  # the supervisor must outlive one bad pass; the next one retries
                log.exception("fleet health check failed")

    def check(self) -> None:
        """One pass: nodes that joined or left are reported; a dead server is unregistered and ended;
        a down one restarts when its backoff is over and Ray has a node for it."""
        for event in self.nodes.poll() if self.nodes is not None else []:
            log.warning("Ray node %s %s", event.address, event.kind.removeprefix("node_"))
            self._tell(event)
        with self._lock:
            for server in list(self._servers.values()):
                if server.state == "up" and not self._alive(server):
                    self._on_death(server)
            due = [s for s in self._servers.values() if s.state == "down" and time.monotonic() >= s.restart_at]
            for server in due:
                server.state = "starting"
        for server in due:  # each in a thread of its own: a start may wait minutes (for a node, for vLLM)
            threading.Thread(target=self._restart, args=(server,), name=f"fleet-restart-r{server.resource_id}",
                             daemon=True).start()

    def _alive(self, server: _Server) -> bool:
        import ray

        try:
            if not ray.get(server.actor.alive.remote(), timeout=10):
                return False
            return control_client().get(f"{server.url}/health", timeout=5, headers=server_headers()).status_code == 200
        except Exception:  # RayActorError, timeouts, refused connections: all mean not serving
            return False

    def _on_death(self, server: _Server, why: str = "") -> None:
        self.proxy.remove_upstream(server.url)  # the proxy stops routing to it now, not at its next check
        self._end(server, wait_s=5)  # its node may be gone: Ray would take a while to say so
        # a server that ran a while before dying starts a fresh count of failures
        if time.monotonic() - server.started_at > 10 * max(self.config.restart_backoff_max_s, 1):
            server.failures = 0
        server.failures += 1
        server.state = "down"
        server.restart_at = time.monotonic() + self._backoff(server.failures)
        self._event(server, "died", f"failure {server.failures}" + (f": {why}" if why else ""))

    def _backoff(self, failures: int) -> float:
        return min(self.config.restart_backoff_s * 2 ** (failures - 1), self.config.restart_backoff_max_s)

    def _has_node(self, server: _Server) -> bool:
        """Whether Ray has a live node for the server's resource: after a node dies Ray re-places
        its bundles (the run's placement group is not placed) until a node that matches joins."""
        slot = self._slot(server.resource_id, server.lease)
        if self.devices is None or slot is None or not self.devices.holds(slot):
            return True
        return self.devices.placed(server.resource_id)

    def _bundle_node(self, server: _Server) -> str | None:
        """The Ray node that holds the resource's bundle now (None: not one of the run's bundles)."""
        slot = self._slot(server.resource_id, server.lease)
        if self.devices is None or slot is None or not self.devices.holds(slot):
            return None
        try:
            return self.devices.node_of(server.resource_id)
        except (KeyError, IndexError):  # not placed now
            return None

    def _restart(self, server: _Server) -> None:
        """A fresh server on the resource (`server` is in state "starting"), started outside the
        fleet's lock (a vLLM start takes a minute; weight updates to the other servers go on
        meanwhile), then warmed, loaded with the current weights and registered under it."""
        import ray

        rid = server.resource_id
        with self._lock:
            if self._servers.get(rid) is not server:
                return  # removed meanwhile
            if not self._has_node(server):
                # no node for it yet: look again at the next check. Waiting for capacity is not a
                # failure, however long: the server starts when a node joins
                server.state = "down"
                server.restart_at = time.monotonic() + self.config.health_interval_s
                return
            server.spawned_on = self._bundle_node(server)
            server.actor, pending = self._spawn(rid, server.lease)  # shutdown() ends it, if it comes first
        try:
            ready, _ = ray.wait([pending], timeout=self.options.startup_timeout_s + 30)
            if not ready:
                raise ServiceError(f"the server on resource {rid} did not start within "
                                   f"{self.options.startup_timeout_s + 30:g} s")
            with self._lock:
                if self._servers.get(rid) is not server:  # removed while it started
                    ray.kill(server.actor, no_restart=True)
                    return
                fresh = self._finish_launch(rid, server.lease, server.actor, pending)
                # a member in the same hold of the lock as it joined the proxy: no update misses it
                fresh.failures = server.failures
                self._servers[rid] = fresh
        except Exception as exc:
            with self._lock:
                self._restart_failed(server, exc)
            return
        self._event(fresh, "restarted", f"after failure {server.failures}" if server.url else
                    "elastic: on a node that joined")

    def _restart_failed(self, server: _Server, exc: Exception) -> None:
        import ray

        ray.kill(server.actor, no_restart=True)
        server.state = "down"
        if not self._has_node(server) or self._bundle_node(server) != server.spawned_on:
            # its node died under it (Ray says so a few seconds after the raylet stops answering, and
            # then re-places the bundle): capacity that went away, not a failure of the server
            server.restart_at = time.monotonic() + self.config.health_interval_s
            self._event(server, "restart_failed", "its node was lost while it started (no failure counted): "
                        + str(exc)[:500])
            return
        server.failures += 1
        if server.failures > self.config.max_restarts:
            server.state = "gone"
            self._event(server, "gave_up", f"{server.failures} failures in a row; last: {exc}")
        else:
            server.restart_at = time.monotonic() + self._backoff(server.failures)
            self._event(server, "restart_failed", str(exc)[:2000])

    # weight updates --------------------------------------------------------------------------

    def publish(self, source: WeightSource, resource_ids: Sequence[int] | None = None) -> WeightUpdateMetrics:
        """The next weight version from `source` to the servers in rotation (these resources', or
        every running one), through the publisher; servers out of rotation get it when they rejoin."""
        with self._lock:
            urls = self._urls(resource_ids) if resource_ids is not None else list(self.servers().values())
            metrics = self.publisher.publish(source, urls)
            for server in list(self._servers.values()):
                if server.url in metrics.lost and server.state == "up":  # its node died mid-update
                    self._on_death(server, f"stopped answering during the update to weights v{metrics.version}")
                elif server.url in urls:
                    server.version = metrics.version
        return metrics

    def in_flight(self) -> Mapping[int, int]:
        by_url = {u["url"]: u["inflight"] for u in self.proxy.upstreams()["upstreams"]}
        return {rid: by_url.get(url, 0) for rid, url in self.servers().items()}

    def _urls(self, resource_ids: Sequence[int]) -> list[str]:
        """The URLs of these resources' servers. A server that died (its node gone, say) and waits to
        restart is left out: it loads the current weights when it rejoins, and the run goes on."""
        running = self.servers()
        lost = [rid for rid in resource_ids if rid not in running and rid in self._servers
                and self._servers[rid].state in ("down", "starting", "gone")]
        missing = [rid for rid in resource_ids if rid not in running and rid not in lost]
        if missing:
            raise ConfigError(f"no running server on resources {missing}; running: {sorted(running)}")
        if any(self._servers[rid].url for rid in lost):  # elastic ones that never served wait as planned
            log.warning("weights go to %d server(s); resources %s have no server now (they load the weights "
                        "when their server restarts)", len(resource_ids) - len(lost), lost)
        return [running[rid] for rid in resource_ids if rid in running]

    # metrics and shutdown --------------------------------------------------------------------

    def stats(self) -> list[ServerStats]:
        """Queue depth and generation throughput (since the previous call) of every server."""
        out = []
        with self._lock:
            for server in [s for s in self._servers.values() if s.state == "up"]:
                metrics, now = read_metrics(server.url), time.monotonic()
                tokens = int(metrics.get("vllm:generation_tokens_total", 0.0))
                rate = (tokens - server.tokens) / max(now - server.tokens_at, 1e-9)
                server.tokens, server.tokens_at = tokens, now
                out.append(ServerStats(server.resource_id, server.url,
                                       running=int(metrics.get("vllm:num_requests_running", 0)),
                                       waiting=int(metrics.get("vllm:num_requests_waiting", 0)),
                                       generation_tokens=tokens, tokens_per_s=rate))
        return out

    def shutdown(self) -> None:
        """Stop supervising, unregister and stop every server."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=30)
            self._supervisor = None
        with self._lock:
            for rid in list(self._servers):
                server = self._servers.pop(rid)
                if server.state == "up":
                    self.proxy.remove_upstream(server.url)
                self._end(server)


def _on_this_node(url: str) -> bool:
    """Whether a server's URL names this node (loopback, or the address Ray reports for it)."""
    import ray

    host = urlsplit(url).hostname
    return host in ("127.0.0.1", "localhost", "::1") or host == ray.util.get_node_ip_address()


def _kill_group(pid: int) -> None:
    """End a server's process group if it outlived its actor (same machine only)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
