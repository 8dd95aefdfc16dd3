"""The real tag scheduler: the policy's decisions carried out on Ray with a rollout fleet and a
trainer group, every transition recorded in a Timeline.

The main loop calls, in order: `start()`; then repeatedly `admission()` / `episodes_started(n)` /
`episodes_finished(n)` as agents run, `observe_load()` now and then, and `step(batch)` when
`ready_to_step()`; at the end `close()` and `save(run_dir)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seamless.config import ClusterConfig
from seamless.scheduler.placement import Lease, RayPlacement
from seamless.scheduler.policy import PipelineState, StepPlan, make_policy
from seamless.scheduler.protocols import RolloutFleet, TrainerGroup
from seamless.scheduler.resources import ResourcePool, Role
from seamless.scheduler.timeline import Timeline


@dataclass(frozen=True)
class StepReport:
    """What one step cost, phase by phase (seconds)."""

    version: int
    switch_s: float
    train_s: float
    sync_s: float
    trainer_metrics: dict[str, float] = field(default_factory=dict)


class TagScheduler:
    """Owns the leases; asks the policy; tells the fleet and the trainer what to do."""

    def __init__(self, cluster: ClusterConfig, fleet: RolloutFleet, trainer: TrainerGroup,
                 batch_episodes: int, placement: RayPlacement | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = ResourcePool.from_cluster(cluster)
        self.policy = make_policy(cluster.policy, self.pool, cluster.staleness)
        self.state: PipelineState = self.policy.new_state(batch_episodes)
        self.fleet = fleet
        self.trainer = trainer
        self.placement = placement or RayPlacement(timeout_s=cluster.placement_timeout_s)
        self.leases: dict[int, Lease] = {}
        self._clock = clock
        self._t0 = clock()
        self.timeline = Timeline(len(self.pool), {r.id: Role.IDLE for r in self.pool})

    def now(self) -> float:
        return self._clock() - self._t0

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Place every resource in its first role; rollout servers start serving."""
        self.placement.check_capacity(self.pool)
        for rid, role in sorted(self.state.roles.items()):
            self._take(rid, role)

    def close(self) -> None:
        """Stop serving and release every lease; the timeline ends here."""
        for rid in sorted(self.leases):
            self._drop(rid)
        self.timeline.close(self.now())

    # ---- episode accounting (called by the main loop) ----------------------------------------

    def admission(self) -> int:
        """Episodes the agents may start now (staleness bound and synchronous barriers)."""
        return self.policy.admission(self.state)

    def episodes_started(self, n: int = 1) -> None:
        self.state.on_started(n)

    def episodes_finished(self, n: int = 1) -> None:
        self.state.on_finished(n)

    def episodes_abandoned(self, n: int = 1) -> None:
        self.state.on_abandoned(n)

    def observe_load(self) -> None:
        """Record which rollout servers are generating, from the fleet's in-flight counts."""
        t = self.now()
        loads = self.fleet.in_flight()
        for rid, lease in self.leases.items():
            if lease.role is Role.ROLLOUT:
                self.timeline.set(t, rid, busy=loads.get(rid, 0) > 0)

    def ready_to_step(self) -> bool:
        return self.policy.step_plan(self.state) is not None

    # ---- a training step ----------------------------------------------------------------------

    def step(self, batch: Any) -> StepReport:
        """Switch roles, train one step, bring the new weights to the servers, switch back."""
        plan = self.policy.step_plan(self.state)
        assert plan is not None, "step() called before ready_to_step()"
        self.state.begin_step(plan)
        t_switch = self.now()
        self.timeline.begin_phase(t_switch, "switch", plan.version)
        for rid in sorted(plan.leave_rollout):
            self._drop(rid)
            self.timeline.set(self.now(), rid, role=Role.SWITCHING)
        for rid in sorted(plan.train):
            if rid not in self.leases:
                self._take(rid, Role.TRAIN, busy=False)
        t_train = self.now()
        self.timeline.begin_phase(t_train, "train", plan.version)
        metrics = self._train(plan, batch)
        t_sync = self.now()
        self.timeline.begin_phase(t_sync, "sync", plan.version)
        roles_after = self.policy.roles_after_step(self.state)
        self._sync_and_return(plan, roles_after)
        self.state.end_step(roles_after)
        t_end = self.now()
        self.timeline.begin_phase(t_end, "rollout", plan.version)
        return StepReport(plan.version, t_train - t_switch, t_sync - t_train, t_end - t_sync,
                          dict(metrics))

    def _train(self, plan: StepPlan, batch: Any) -> dict[str, float]:
        leases = [self.leases[rid] for rid in sorted(plan.train)]
        t = self.now()
        for rid in plan.train:
            self.timeline.set(t, rid, role=Role.TRAIN, busy=True)
        metrics = dict(self.trainer.step(leases, batch))
        t = self.now()
        for rid in plan.train:
            self.timeline.set(t, rid, busy=False)
        return metrics

    def _sync_and_return(self, plan: StepPlan, roles_after: dict[int, Role]) -> None:
        """Servers that stayed get the weights over the network (paused meanwhile); resources that
        go back to rollout leave the trainer and start serving the new version."""
        targets = sorted(self.state.sync_targets(roles_after) & self._holding(Role.ROLLOUT))
        if targets:
            t = self.now()
            for rid in targets:
                self.timeline.set(t, rid, busy=False)
            self.fleet.pause(targets)
            self.fleet.update_weights(plan.version, targets)
            self.fleet.resume(targets)
        for rid, role in sorted(roles_after.items()):
            lease = self.leases.get(rid)
            if lease is not None and lease.role is role:
                continue
            if lease is not None:
                self._drop(rid)
                self.timeline.set(self.now(), rid, role=Role.SWITCHING)
            self._take(rid, role, version=plan.version)
        self.observe_load()

    # ---- leases -------------------------------------------------------------------------------

    def _holding(self, role: Role) -> frozenset[int]:
        return frozenset(rid for rid, lease in self.leases.items() if lease.role is role)

    def _take(self, rid: int, role: Role, busy: bool = False, version: int | None = None) -> None:
        assert rid not in self.leases, f"resource {rid} already holds a lease"
        if role is Role.IDLE:
            return
        lease = self.placement.acquire(self.pool[rid], role)
        self.leases[rid] = lease
        if role is Role.ROLLOUT:
            self.fleet.add_server(lease, self.state.version if version is None else version)
        self.timeline.set(self.now(), rid, role=role, busy=busy)

    def _drop(self, rid: int) -> None:
        lease = self.leases.pop(rid)
        if lease.role is Role.ROLLOUT:
            self.fleet.remove_server(rid)
        self.placement.release(lease)
        self.timeline.set(self.now(), rid, role=Role.IDLE)

    # ---- outputs ------------------------------------------------------------------------------

    def metrics(self, prefix: str = "scheduler/") -> dict[str, float]:
        """W&B-ready scalars of the timeline so far (closes a copy, not the live timeline)."""
        timeline = self.timeline if self.timeline.end is not None else self.timeline.snapshot(self.now())
        return timeline.metrics(prefix) | {f"{prefix}version": float(self.state.version)}

    def save(self, run_dir: str | Path) -> tuple[Path, Path]:
        """Write timeline.json and timeline.png into the run folder (call after close())."""
        from seamless.scheduler.plot import plot_timeline

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.timeline.save(run_dir / "timeline.json")
        png_path = plot_timeline(self.timeline, run_dir / "timeline.png",
                                 title=f"{self.policy.name}: {len(self.pool)} GPUs")
        return json_path, png_path

