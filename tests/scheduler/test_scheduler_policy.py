"""Policies' decisions on hand-made pools."""

import pytest

from seamless.config import ClusterConfig
from seamless.errors import ConfigError
from seamless.scheduler import ResourcePool, Role, make_policy


def pool(*groups):
    return ResourcePool.from_cluster(ClusterConfig(resources=[{"count": c, "tags": t} for c, t in groups]))


MIXED = (((2, ["rollout"]), (2, ["train", "rollout"]), (1, ["train"])))


def test_colocated_alternates_every_resource_and_is_synchronous():
    policy = make_policy("colocated", pool((4, ["train", "rollout"])), 0)
    state = policy.new_state(batch_episodes=8)
    assert set(state.roles.values()) == {Role.ROLLOUT}
    assert policy.admission(state) == 8
    state.on_started(8)
    assert policy.admission(state) == 0  # no episode of the next batch before the step
    state.on_finished(7)
    assert policy.step_plan(state) is None
    state.on_finished(1)
    plan = policy.step_plan(state)
    assert plan.train == plan.leave_rollout == frozenset(range(4)) and plan.step == 1
    state.begin_step(plan)
    assert policy.admission(state) == 0  # every GPU trains
    after = policy.roles_after_step(state)
    assert state.sync_targets(after) == frozenset()  # weights are local on every GPU
    state.end_step(after)
    assert policy.admission(state) == 8


def test_colocated_refuses_a_split_pool_naming_the_key():
    with pytest.raises(ConfigError, match=r"cluster.resources.0.tags: \[train, rollout\]"):
        make_policy("colocated", pool((2, ["rollout"]), (2, ["train", "rollout"])), 0)


def test_disaggregated_sync_and_async_admission():
    sync = make_policy("disaggregated", pool(*MIXED), 0)
    state = sync.new_state(4)
    assert state.roles == {0: Role.ROLLOUT, 1: Role.ROLLOUT, 2: Role.TRAIN, 3: Role.TRAIN, 4: Role.TRAIN}
    state.on_started(4)
    state.on_finished(4)
    plan = sync.step_plan(state)
    assert plan.train == {2, 3, 4} and plan.leave_rollout == frozenset()
    state.begin_step(plan)
    assert sync.admission(state) == 0  # synchronous: rollout waits for the new weights
    after = sync.roles_after_step(state)
    assert after == state.roles and state.sync_targets(after) == {0, 1}

    asynchronous = make_policy("disaggregated", pool(*MIXED), 2)
    state = asynchronous.new_state(4)
    assert asynchronous.admission(state) == 12  # three batches: steps 0, +1, +2 ahead
    state.on_started(12)
    state.on_finished(4)
    state.begin_step(asynchronous.step_plan(state))
    assert asynchronous.admission(state) == 0
    state.end_step(asynchronous.roles_after_step(state))
    assert asynchronous.admission(state) == 4


def test_disaggregated_needs_rollout_only_resources():
    with pytest.raises(ConfigError, match="tags: \\[rollout\\]"):
        make_policy("disaggregated", pool((4, ["train", "rollout"])), 0)


def test_tagged_dual_resources_roll_out_until_a_step_and_come_back():
    policy = make_policy("tagged", pool(*MIXED), 1)
    state = policy.new_state(4)
    assert state.roles == {0: Role.ROLLOUT, 1: Role.ROLLOUT, 2: Role.ROLLOUT, 3: Role.ROLLOUT, 4: Role.TRAIN}
    state.on_started(policy.admission(state))
    assert state.started == 8
    state.on_finished(4)
    plan = policy.step_plan(state)
    assert plan.train == {2, 3, 4}  # the trainer's world: every train-tagged resource
    assert plan.leave_rollout == {2, 3}  # dual ones leave rollout; rollout-only never stop
    state.begin_step(plan)
    assert state.holding(Role.ROLLOUT) == {0, 1}
    assert policy.step_plan(state) is None  # one step at a time
    after = policy.roles_after_step(state)
    assert after == policy.initial_roles()
    assert state.sync_targets(after) == {0, 1}  # 2 and 3 load weights beside their trainer rank
    state.end_step(after)
    assert state.steps == 1 and policy.admission(state) == 4


def test_abandoned_episodes_free_their_admission_slots():
    policy = make_policy("tagged", pool((2, ["train", "rollout"]), (2, ["rollout"])), 0)
    state = policy.new_state(4)
    state.on_started(4)
    state.on_abandoned(1)
    assert policy.admission(state) == 1


def test_unknown_policy_and_empty_batch_are_config_errors():
    with pytest.raises(ConfigError, match="cluster.policy"):
        make_policy("fifo", pool((1, ["train", "rollout"])), 0)
    with pytest.raises(ConfigError, match="rollout.batch_size"):
        make_policy("tagged", pool((1, ["train", "rollout"])), 0).new_state(0)


def test_cluster_config_staleness_defaults_and_validation():
    assert ClusterConfig(policy="tagged").staleness == 1
    assert ClusterConfig(policy="disaggregated").staleness == 0
    assert ClusterConfig(policy="disaggregated", max_async_staleness=3).staleness == 3
    with pytest.raises(ValueError, match="cluster.max_async_staleness"):
        ClusterConfig(policy="colocated", max_async_staleness=1)


def test_a_pipeline_that_starts_at_a_restored_step_admits_one_window():
    """A run resumed at step 7 starts with nothing in flight: the staleness window, not 8 steps'
    worth of batches, bounds what may start."""
    policy = make_policy("tagged", pool(*MIXED), 1)
    state = policy.new_state(batch_episodes=8, steps=7)
    assert state.steps == 7 and state.ready == 0 and state.in_flight == 0
    assert policy.admission(state) == 16
    state.on_started(16)
    state.on_finished(8)
    plan = policy.step_plan(state)
    assert plan is not None and plan.step == 8
