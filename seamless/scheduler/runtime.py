"""The real tag scheduler: the policy's decisions carried out on Ray (which resource holds which
role, when episodes may start), every transition recorded in a Timeline. It assigns roles and
admits episodes; it neither trains nor moves weights: the main loop does both, between the
scheduler's hooks.

The main loop calls, in order: `start()`; then repeatedly `admission()` / `episodes_started(n)` /
`episodes_finished(n)` as agents run, `observe_load()` now and then (or let `load_interval_s`
sample it in a thread), and when `ready_to_step()`: `begin_step()` (roles switch to training),
its own training step, `begin_sync()` (which servers need the new weights over the network),
its own weight push to them, `end_step()` (roles switch back); at the end `close()` and
`save(run_dir)`. `begin_recording()` restarts the timeline (e.g. after a warm-up that is not
part of the pipeline being measured).

What a lease means: it is the resource's GPU, held by the scheduler for one role. Work of a role
runs only while its lease is held. A rollout-only resource's server lives inside its lease; on a
dual-tagged resource both residents (a trainer rank, a vLLM server) are created once and outlive
the leases: the trainer rank's process group is formed once for the run, the server is parked
(out of the proxy's rotation, paused; on GPUs asleep) while the resource holds a train lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seamless.config import ClusterConfig
from seamless.scheduler.placement import Lease, RayPlacement
from seamless.scheduler.policy import PipelineState, StepPlan, make_policy
from seamless.scheduler.protocols import RolloutFleet
from seamless.scheduler.resources import ResourcePool, Role
from seamless.scheduler.timeline import Timeline


@dataclass(frozen=True)
class StepReport:
    """What one step cost, phase by phase (seconds)."""

    step: int
    switch_s: float
    train_s: float
    sync_s: float


@dataclass
class _OpenStep:
    """A step between begin_step() and end_step(): its plan and when each phase began."""

    plan: StepPlan
    t_switch: float
    t_train: float
    t_sync: float | None = None
    roles_after: dict[int, Role] = field(default_factory=dict)


class TagScheduler:
    """Owns the leases; asks the policy; tells the fleet which servers to start, park or stop."""

    def __init__(self, cluster: ClusterConfig, fleet: RolloutFleet, batch_episodes: int,
                 placement: RayPlacement | None = None,
                 clock: Callable[[], float] = time.monotonic, steps: int = 0,
                 load_interval_s: float | None = None) -> None:
        self.pool = ResourcePool.from_cluster(cluster)
        self.policy = make_policy(cluster.policy, self.pool, cluster.staleness)
        self.state: PipelineState = self.policy.new_state(batch_episodes, steps)
        self.fleet = fleet
        self._open: _OpenStep | None = None
        # a placement passed in belongs to the caller (it reserved the devices the trainer's ranks
        # already sit on, and frees them after those shut down); one made here is closed with us
        self._own_placement = placement is None
        self.placement = placement or RayPlacement(timeout_s=cluster.placement_timeout_s)
        self.leases: dict[int, Lease] = {}
        self._clock = clock
        self._t0 = clock()
        self.timeline = Timeline(len(self.pool), {r.id: Role.IDLE for r in self.pool})
        self.load_interval_s = load_interval_s
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self.lost: set[int] = set()
        """Resources holding a rollout lease whose server is down (its node lost): no capacity now."""

    def now(self) -> float:
        return self._clock() - self._t0

    def mark(self, rid: int, name: str, started: float, seconds: float) -> None:
        """A part of resource `rid`'s role switch on the timeline; `started` read from the
        scheduler's clock (time.monotonic unless a test gave another)."""
        self.timeline.mark(rid, name, started - self._t0, started - self._t0 + seconds)

    def cluster_event(self, kind: str, detail: str = "", resource: int | None = None) -> None:
        """Something the fleet saw (a node lost or joined, a server died, restarted or gave up), on
        the timeline now. A rollout resource whose server died counts as lost capacity and shows no
        role until its server is back (called from the fleet's supervisor thread too)."""
        with self.timeline.lock:
            t = self.now()
            self.timeline.event(t, kind, detail, resource)
            lease = self.leases.get(resource) if resource is not None else None
            if lease is None or lease.role is not Role.ROLLOUT:
                return
            if kind in ("waiting", "died", "gave_up"):  # waiting: an elastic resource no node offers yet
                self.lost.add(resource)
                self.timeline.set(t, resource, role=Role.IDLE, only_if=Role.ROLLOUT)
            elif kind == "restarted":
                self.lost.discard(resource)
                self.timeline.set(t, resource, role=Role.ROLLOUT, only_if=Role.IDLE)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Place every resource in its first role; rollout servers start serving (in parallel
        when the fleet can start several at once)."""
        self.placement.check_capacity(self.pool)
        rollout = [rid for rid, role in sorted(self.state.roles.items()) if role is Role.ROLLOUT]
        add_many = getattr(self.fleet, "add_servers", None)
        if add_many is not None and len(rollout) > 1:
            leases = [self.placement.acquire(self.pool[rid], Role.ROLLOUT) for rid in rollout]
            self.leases.update({lease.resource.id: lease for lease in leases})
            add_many(leases)
            for rid in rollout:
                self._mark(rid, role=Role.ROLLOUT, busy=False)
        for rid, role in sorted(self.state.roles.items()):
            if rid not in self.leases:
                self._take(rid, role)
        if self.load_interval_s:
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, name="scheduler-load", daemon=True)
            self._sampler.start()

    def begin_recording(self, steps: int | None = None) -> None:
        """Start the timeline afresh from now, with every resource in its current role; with
        `steps`, the pipeline also restarts there, nothing in flight (a run restored before the
        loop)."""
        assert not self.state.training and self.state.in_flight == 0, "begin_recording() mid-pipeline"
        if steps is not None:
            roles = self.state.roles
            self.state = self.policy.new_state(self.state.batch_episodes, steps)
            self.state.roles = roles
            self.state.serving = self.state.holding(Role.ROLLOUT)
        with self.timeline.lock:
            self._t0 = self._clock()
            roles = {rid: lease.role for rid, lease in self.leases.items() if rid not in self.lost}
            self.timeline = Timeline(len(self.pool), {r.id: roles.get(r.id, Role.IDLE) for r in self.pool})
            self.timeline.begin_phase(0.0, "rollout", self.state.steps)
        self.observe_load()

    def finish_recording(self) -> Timeline:
        """Stop sampling the load and return the timeline so far, closed (leases stay held)."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
            self._sampler = None
        return self.timeline.snapshot(self.now())

    def close(self) -> None:
        """Stop serving and release every lease; the timeline ends here (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
        for rid in sorted(self.leases):
            self._drop(rid)
        if self._own_placement:
            self.placement.close()
        self.timeline.close(self.now())

    def _sample(self) -> None:
        while not self._stop.wait(self.load_interval_s):
            try:
                self.observe_load()
            except Exception:  # a missed sample only coarsens the timeline; the next one retries
                pass

    # ---- episode accounting (called by the main loop) ----------------------------------------

    def admission(self) -> int:
        """Episodes the agents may start now (staleness bound and synchronous barriers); none while
        every rollout server is lost (they would only queue in the proxy until one is back)."""
        serving = self._holding(Role.ROLLOUT)
        if serving and serving <= self.lost:
            return 0
        return self.policy.admission(self.state)

    def episodes_started(self, n: int = 1) -> None:
        self.state.on_started(n)

    def episodes_finished(self, n: int = 1) -> None:
        self.state.on_finished(n)

    def episodes_abandoned(self, n: int = 1) -> None:
        self.state.on_abandoned(n)

    def observe_load(self) -> None:
        """Record which rollout servers are generating, from the fleet's in-flight counts."""
        loads = self.fleet.in_flight()
        with self.timeline.lock:
            t = self.now()
            for rid, lease in list(self.leases.items()):
                if lease.role is Role.ROLLOUT:
                    # only_if: the main thread may have switched the resource since the fleet answered
                    self.timeline.set(t, rid, busy=loads.get(rid, 0) > 0, only_if=Role.ROLLOUT)

    def ready_to_step(self) -> bool:
        return self.policy.step_plan(self.state) is not None

    # ---- a training step: the loop calls begin_step, trains, publishes, end_step -------------

    def begin_step(self) -> list[Lease]:
        """Roles for the next step: resources that train leave rollout (their in-flight calls move
        to the other servers) and the trainer's leases are taken; returns those leases, marked
        busy until `begin_sync()`."""
        plan = self.policy.step_plan(self.state)
        assert plan is not None, "begin_step() called before ready_to_step()"
        assert self._open is None, "begin_step() twice without end_step()"
        self.state.begin_step(plan)
        t_switch = self.now()
        self.timeline.begin_phase(t_switch, "switch", plan.step)
        for rid in sorted(plan.leave_rollout):
            self._drop(rid)
            self._mark(rid, role=Role.SWITCHING)
        for rid in sorted(plan.train):
            if rid not in self.leases:
                self._take(rid, Role.TRAIN, busy=False)
        t_train = self.now()
        self.timeline.begin_phase(t_train, "train", plan.step)
        for rid in plan.train:
            self._mark(rid, role=Role.TRAIN, busy=True)
        self._open = _OpenStep(plan, t_switch, t_train)
        return [self.leases[rid] for rid in sorted(plan.train)]

    def begin_sync(self) -> list[int]:
        """The trainer is done: its resources go idle and the sync phase starts. Returns the
        rollout servers that stay in rollout without a trainer rank beside them: they need the
        new weights over the network (the loop pauses, loads and resumes them)."""
        step = self._open
        assert step is not None and step.t_sync is None, "begin_sync() outside a step"
        for rid in step.plan.train:
            self._mark(rid, busy=False)
        step.t_sync = self.now()
        self.timeline.begin_phase(step.t_sync, "sync", step.plan.step)
        step.roles_after = self.policy.roles_after_step(self.state)
        targets = sorted(self.state.sync_targets(step.roles_after) & self._holding(Role.ROLLOUT))
        for rid in targets:
            self._mark(rid, busy=False)
        return targets

    def end_step(self) -> StepReport:
        """Roles after the step: resources that go back to rollout leave the trainer and start
        serving the new weights; returns what each phase of the step took."""
        step = self._open
        assert step is not None and step.t_sync is not None, "end_step() before begin_sync()"
        for rid, role in sorted(step.roles_after.items()):
            lease = self.leases.get(rid)
            if lease is not None and lease.role is role:
                continue
            if lease is not None:
                self._drop(rid)
                self._mark(rid, role=Role.SWITCHING)
            self._take(rid, role)
        self.observe_load()
        self.state.end_step(step.roles_after)
        self._open = None
        t_end = self.now()
        self.timeline.begin_phase(t_end, "rollout", step.plan.step)
        return StepReport(step.plan.step, step.t_train - step.t_switch, step.t_sync - step.t_train,
                          t_end - step.t_sync)

    # ---- leases -------------------------------------------------------------------------------

    def _holding(self, role: Role) -> frozenset[int]:
        return frozenset(rid for rid, lease in self.leases.items() if lease.role is role)

    def _take(self, rid: int, role: Role, busy: bool = False) -> None:
        assert rid not in self.leases, f"resource {rid} already holds a lease"
        if role is Role.IDLE:
            return
        lease = self.placement.acquire(self.pool[rid], role)
        self.leases[rid] = lease
        if role is Role.ROLLOUT:
            self.fleet.add_server(lease)  # on the weights the publisher holds now
        self._mark(rid, role=role, busy=busy)

    def _drop(self, rid: int) -> None:
        lease = self.leases.pop(rid)
        if lease.role is Role.ROLLOUT:
            self.fleet.remove_server(rid)
        self.placement.release(lease)
        self._mark(rid, role=Role.IDLE)

    def _mark(self, rid: int, role: Role | None = None, busy: bool | None = None) -> None:
        """Record a change now (the time is read under the timeline's lock, so a sampler thread
        never records a later time first)."""
        with self.timeline.lock:
            self.timeline.set(self.now(), rid, role=role, busy=busy)

    # ---- outputs ------------------------------------------------------------------------------

    def metrics(self, prefix: str = "scheduler/") -> dict[str, float]:
        """W&B-ready scalars of the timeline so far (closes a copy, not the live timeline)."""
        timeline = self.timeline if self.timeline.end is not None else self.timeline.snapshot(self.now())
        return timeline.metrics(prefix) | {f"{prefix}steps": float(self.state.steps),
                                           f"{prefix}rollout_resources": float(len(self._holding(Role.ROLLOUT) - self.lost))}

    def save(self, run_dir: str | Path, timeline: Timeline | None = None) -> tuple[Path, Path]:
        """Write timeline.json and timeline.png into the run folder (the closed `timeline`, e.g.
        from finish_recording(), or the scheduler's own after close())."""
        from seamless.scheduler.plot import plot_timeline

        timeline = timeline or self.timeline
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        json_path = timeline.save(run_dir / "timeline.json")
        png_path = plot_timeline(timeline, run_dir / "timeline.png",
                                 title=f"{self.policy.name} (staleness {self.policy.staleness}): "
                                       f"{len(self.pool)} GPUs")
        return json_path, png_path

