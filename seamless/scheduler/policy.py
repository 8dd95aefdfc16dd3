"""Scheduling policies as decision logic: who holds which role, when a step starts, how many
episodes may start. The real scheduler (`runtime.py`) and the simulator (`sim.py`) both keep a
`PipelineState` and ask the same `Policy` object; neither has its own copy of these rules.

Every policy trains on all train-tagged resources (the trainer's world size never changes, so
process groups are formed once); they differ in what the other resources do and when.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seamless.errors import ConfigError
from seamless.scheduler.resources import ResourcePool, Role


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the scheduler does to start training step `step` (counted from 1)."""

    step: int
    episodes: int
    """Finished episodes the step consumes."""
    train: frozenset[int]
    """Resources that form the trainer for this step."""
    leave_rollout: frozenset[int]
    """Rollout servers that stop serving for the step; their in-flight requests move to the others."""


@dataclass
class PipelineState:
    """Counters and roles of one run, updated by whoever drives the pipeline (real or simulated)."""

    pool: ResourcePool
    batch_episodes: int
    staleness: int
    roles: dict[int, Role]
    steps: int = 0
    """Steps trained. Staleness is counted in steps (the weights' own version belongs to the
    weight publisher: it also moves at the warm start and jumps on a resume)."""
    started: int = 0
    finished: int = 0
    consumed: int = 0
    training: bool = False
    trained_last: frozenset[int] = field(default_factory=frozenset)
    serving: frozenset[int] = field(default_factory=frozenset)
    """Resources holding the rollout role; kept in step with `roles` because admission is asked
    at every event and a scan of the roles would make a 1,024-GPU simulation quadratic."""

    def __post_init__(self) -> None:
        self.serving = self.holding(Role.ROLLOUT)

    @property
    def ready(self) -> int:
        return self.finished - self.consumed

    @property
    def in_flight(self) -> int:
        return self.started - self.finished

    def holding(self, role: Role) -> frozenset[int]:
        return frozenset(rid for rid, held in self.roles.items() if held is role)

    def on_started(self, n: int = 1) -> None:
        self.started += n

    def on_finished(self, n: int = 1) -> None:
        self.finished += n
        assert self.finished <= self.started, "more episodes finished than started"

    def on_abandoned(self, n: int = 1) -> None:
        """Episodes that failed: they free their admission slot and are never trained on."""
        self.started -= n
        assert self.started >= self.finished

    def begin_step(self, plan: StepPlan) -> None:
        assert not self.training and plan.step == self.steps + 1 and self.ready >= plan.episodes
        self.training = True
        self.consumed += plan.episodes
        for rid in plan.leave_rollout:
            self.roles[rid] = Role.SWITCHING
        for rid in plan.train:
            self.roles[rid] = Role.TRAIN
        self.trained_last = plan.train
        self.serving = self.holding(Role.ROLLOUT)

    def sync_targets(self, roles_after: dict[int, Role]) -> frozenset[int]:
        """Rollout servers after the step that need the new weights over the network: those that
        did not host a trainer rank (a server beside a trainer rank loads the weights locally)."""
        return frozenset(rid for rid, role in roles_after.items()
                         if role is Role.ROLLOUT and rid not in self.trained_last)

    def end_step(self, roles_after: dict[int, Role]) -> None:
        assert self.training
        self.training = False
        self.steps += 1
        self.roles = dict(roles_after)
        self.serving = self.holding(Role.ROLLOUT)


class Policy:
    """Base of the three policies; subclasses decide roles, the base decides admission and timing."""

    name = "base"

    def __init__(self, pool: ResourcePool, staleness: int) -> None:
        if not pool.trainers:
            raise ConfigError("cluster.resources has no resource tagged 'train'; add one")
        self.pool = pool
        self.staleness = staleness

    def new_state(self, batch_episodes: int, steps: int = 0) -> PipelineState:
        """A pipeline `steps` steps in (a resumed run), with nothing in flight: the counters start
        as if `steps` steps of full batches had run."""
        if batch_episodes < 1:
            raise ConfigError("a step needs at least one episode; raise rollout.batch_size")
        done = steps * batch_episodes
        return PipelineState(self.pool, batch_episodes, self.staleness, self.initial_roles(), steps=steps,
                             started=done, finished=done, consumed=done)

    def initial_roles(self) -> dict[int, Role]:
        raise NotImplementedError

    def roles_after_step(self, state: PipelineState) -> dict[int, Role]:
        raise NotImplementedError

    def leaving_rollout(self, state: PipelineState) -> frozenset[int]:
        raise NotImplementedError

    def admission(self, state: PipelineState) -> int:
        """Episodes that may start now. An episode started after step s is trained at the earliest
        in step s+1; starting at most (s + 1 + staleness) batches in total keeps rollout from running
        more than `staleness` steps ahead of the trainer."""
        if not state.serving:
            return 0
        budget = (state.steps + 1 + self.staleness) * state.batch_episodes
        return max(0, budget - state.started)

    def step_plan(self, state: PipelineState) -> StepPlan | None:
        """A step starts as soon as the trainer is free and a batch of finished episodes is ready."""
        if state.training or state.ready < state.batch_episodes:
            return None
        return StepPlan(step=state.steps + 1, episodes=state.batch_episodes,
                        train=self.pool.trainers, leave_rollout=self.leaving_rollout(state))


class Colocated(Policy):
    """Every resource does both, in turns: all roll out a batch, then all train on it (verl's default)."""

    name = "colocated"

    def __init__(self, pool: ResourcePool, staleness: int = 0) -> None:
        super().__init__(pool, 0)
        if staleness:
            raise ConfigError("colocated is synchronous; remove cluster.max_async_staleness")
        for resource in pool:
            if not resource.dual:
                raise ConfigError(
                    f"colocated needs every resource tagged [train, rollout], but {resource.describe()}; "
                    f"set cluster.resources.{resource.group}.tags: [train, rollout] or pick "
                    "cluster.policy: tagged")

    def initial_roles(self) -> dict[int, Role]:
        return {r.id: Role.ROLLOUT for r in self.pool}

    def leaving_rollout(self, state: PipelineState) -> frozenset[int]:
        return state.holding(Role.ROLLOUT)

    def roles_after_step(self, state: PipelineState) -> dict[int, Role]:
        return {r.id: Role.ROLLOUT for r in self.pool}


class Disaggregated(Policy):
    """A fixed split: train-tagged resources only train, rollout-only resources only roll out.
    With staleness 0 the halves take turns (synchronous); above 0 they overlap (asynchronous)."""

    name = "disaggregated"

    def __init__(self, pool: ResourcePool, staleness: int = 0) -> None:
        super().__init__(pool, staleness)
        if not pool.rollout_only:
            raise ConfigError(
                "disaggregated needs resources tagged only [rollout] (train-tagged ones only train); "
                "add a group with tags: [rollout] to cluster.resources, or pick cluster.policy: "
                "tagged or colocated")

    def initial_roles(self) -> dict[int, Role]:
        return {r.id: Role.TRAIN if r.can_train else Role.ROLLOUT for r in self.pool}

    def leaving_rollout(self, state: PipelineState) -> frozenset[int]:
        return frozenset()

    def roles_after_step(self, state: PipelineState) -> dict[int, Role]:
        return self.initial_roles()


class Tagged(Policy):
    """SeamlessFlow's multiplexing: [train, rollout] resources serve rollout while the trainer waits
    for data and join the trainer for a step; rollout-only resources never stop (except to load new
    weights); train-only resources wait for steps."""

    name = "tagged"

    def initial_roles(self) -> dict[int, Role]:
        return {r.id: Role.ROLLOUT if r.can_rollout and not self._train_only(r.id) else Role.TRAIN
                for r in self.pool}

    def _train_only(self, rid: int) -> bool:
        return not self.pool[rid].can_rollout

    def leaving_rollout(self, state: PipelineState) -> frozenset[int]:
        return state.holding(Role.ROLLOUT) & self.pool.dual

    def roles_after_step(self, state: PipelineState) -> dict[int, Role]:
        return self.initial_roles()


POLICIES: dict[str, type[Policy]] = {"colocated": Colocated, "disaggregated": Disaggregated,
                                     "tagged": Tagged}


def make_policy(name: str, pool: ResourcePool, staleness: int) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"cluster.policy {name!r} is unknown; pick one of {', '.join(POLICIES)}")
    return POLICIES[name](pool, staleness)
