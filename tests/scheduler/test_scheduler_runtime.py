"""The real scheduler on a local Ray with 4 logical GPUs, driving fake fleet and trainer that run
Ray tasks inside the leased bundles."""

import time

import pytest
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from seamless.config import ClusterConfig
from seamless.errors import ConfigError
from seamless.scheduler import ResourcePool, Role, Timeline
from seamless.scheduler.placement import RayPlacement
from seamless.scheduler.runtime import TagScheduler


def cluster(policy, groups, staleness=None, timeout=5.0):
    return ClusterConfig(policy=policy, max_async_staleness=staleness, placement_timeout_s=timeout,
                         resources=[{"count": c, "tags": t} for c, t in groups])


def live_groups(prefix):
    return [g for g in placement_group_table().values()
            if g["name"].startswith(prefix) and g["state"] != "REMOVED"]


def drive(sched, fleet, trainer, steps):
    """A stand-in for the main loop: start admitted episodes, finish them, step when ready (roles,
    train on the leases, weights to the servers that stayed, roles back)."""
    sched.start()
    reports = []
    while sched.state.steps < steps:
        n = sched.admission()
        if n:
            sched.episodes_started(n)
            fleet.busy = True
            sched.observe_load()
            fleet.generate(n)
            fleet.busy = False
            sched.observe_load()
            sched.episodes_finished(n)
        assert sched.ready_to_step()
        trainer.step(sched.begin_step(), batch=None)
        servers = sched.begin_sync()
        if servers:
            fleet.pause(servers)
            fleet.update_weights(sched.state.steps + 1, servers)
            fleet.resume(servers)
        reports.append(sched.end_step())
    sched.close()
    return reports


def test_devices_are_reserved_once_and_leases_switch_roles_without_ray(ray_cluster):
    placement = RayPlacement("t-lease", timeout_s=5)
    pool = ResourcePool.split(2, 0.5)
    devices = placement.reserve(pool)
    assert len(live_groups("t-lease-devices")) == 1 and placement.reserve(pool) is devices
    assert [s.gpus for s in devices.slots] == [1, 1] and [s.shared for s in devices.slots] == [True, False]
    lease = placement.acquire(pool[0], Role.TRAIN)
    assert lease.slot is devices.slot(0) and lease.acquire_s < 0.01
    placement.release(lease)
    again = placement.acquire(pool[0], Role.ROLLOUT)  # a role switch: no placement group made or freed
    assert len(live_groups("t-lease")) == 1
    placement.release(again)
    placement.close()
    time.sleep(0.2)
    assert live_groups("t-lease") == []


def test_a_pool_larger_than_the_cluster_names_the_recipe_keys(ray_cluster, fake_fleet):
    sched = TagScheduler(cluster("tagged", [(3, ["rollout"]), (2, ["train", "rollout"])]),
                         fake_fleet, batch_episodes=2)
    with pytest.raises(ConfigError, match="cluster.resources declares 5 GPUs but the Ray cluster has 4"):
        sched.start()


def test_devices_that_cannot_be_reserved_fail_naming_the_keys(ray_cluster):
    squatter = placement_group([{"GPU": 1}] * 4)  # someone else holds every GPU
    assert squatter.wait(10)
    try:
        with pytest.raises(ConfigError, match="cluster.resources.*cluster.placement_timeout_s"):
            RayPlacement("t-full", timeout_s=0.5).reserve(ResourcePool.split(2, 0.5))
        assert live_groups("t-full") == []
    finally:
        remove_placement_group(squatter)


CASES = {
    "colocated": ("colocated", [(4, ["train", "rollout"])], None),
    "disaggregated-sync": ("disaggregated", [(2, ["rollout"]), (2, ["train"])], 0),
    "disaggregated-async": ("disaggregated", [(2, ["rollout"]), (2, ["train"])], 1),
    "tagged": ("tagged", [(2, ["rollout"]), (2, ["train", "rollout"])], 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_policy_runs_steps_on_ray(ray_cluster, fake_fleet, fake_trainer, case, tmp_path):
    policy, groups, staleness = CASES[case]
    sched = TagScheduler(cluster(policy, groups, staleness), fake_fleet, batch_episodes=4)
    reports = drive(sched, fake_fleet, fake_trainer, steps=2)
    assert [r.step for r in reports] == [1, 2]
    assert fake_trainer.steps == [tuple(sorted(sched.pool.trainers))] * 2
    assert fake_trainer.devices | fake_fleet.devices <= {"0", "1", "2", "3"}
    assert sched.leases == {} and live_groups("seamless-") == []
    metrics = sched.metrics()
    assert 0.0 <= metrics["scheduler/bubble_ratio"] <= 1.0 and metrics["scheduler/steps"] == 2.0
    json_path, png_path = sched.save(tmp_path)
    assert json_path.is_file() and png_path.stat().st_size > 0


def test_tagged_moves_dual_resources_and_never_stops_rollout_only(ray_cluster, fake_fleet, fake_trainer):
    sched = TagScheduler(cluster("tagged", [(2, ["rollout"]), (2, ["train", "rollout"])], 1),
                         fake_fleet, batch_episodes=4)
    drive(sched, fake_fleet, fake_trainer, steps=2)
    removed = [rid for call, rid in fake_fleet.calls if call == "remove"]
    # each step takes 2 and 3 out of rollout; 0 and 1 leave only when the run closes
    assert removed[:4] == [2, 3, 2, 3] and sorted(removed[4:]) == [0, 1, 2, 3]
    updates = [arg for call, arg in fake_fleet.calls if call == "update"]
    assert updates == [(1, (0, 1)), (2, (0, 1))]  # network sync only for servers without a trainer rank
    assert fake_fleet.versions == {0: 2, 1: 2, 2: 2, 3: 2}
    assert sched.timeline.role_switches() == 8  # 2 resources x (to train, back) x 2 steps
    assert {s.role for s in sched.timeline.segments if s.resource in (2, 3)} >= {Role.ROLLOUT, Role.TRAIN}


def test_lost_rollout_capacity_shows_on_the_timeline_and_stops_admission_only_when_all_is_lost(
        ray_cluster, fake_fleet, tmp_path):
    """What the fleet reports as nodes and servers come and go (scheduler.cluster_event, from its
    supervisor thread): events on the timeline, a lost server's resource with no role until it is
    back, and no new episodes while no server is left."""
    sched = TagScheduler(cluster("disaggregated", [(1, ["train"]), (2, ["rollout"])], 1), fake_fleet,
                         batch_episodes=4)
    sched.start()
    try:
        assert sched.admission() > 0 and sched.metrics()["scheduler/rollout_resources"] == 2
        sched.cluster_event("node_lost", "127.0.0.4 (1 GPU)")
        sched.cluster_event("died", "failure 1", resource=2)
        assert sched.timeline.role_of(2) is Role.IDLE and sched.admission() > 0  # resource 1 still serves
        assert sched.metrics()["scheduler/rollout_resources"] == 1
        sched.cluster_event("died", "failure 1", resource=1)
        assert sched.admission() == 0
        sched.cluster_event("node_joined", "127.0.0.5 (1 GPU)")
        sched.cluster_event("restarted", "after failure 1", resource=2)
        assert sched.timeline.role_of(2) is Role.ROLLOUT and sched.admission() > 0
        sched.cluster_event("died", "failure 1", resource=0)  # not a rollout lease: an event, no role change
        assert sched.timeline.role_of(0) is Role.TRAIN
    finally:
        sched.close()
    json_path, png_path = sched.save(tmp_path)
    saved = Timeline.load(json_path)
    assert [(e.kind, e.resource) for e in saved.events] == [
        ("node_lost", None), ("died", 2), ("died", 1), ("node_joined", None), ("restarted", 2), ("died", 0)]
    assert [e.t for e in saved.events] == sorted(e.t for e in saved.events) and png_path.stat().st_size > 0
    died, restarted = saved.events[1].t, saved.events[4].t
    assert [(s.start, s.end) for s in saved.segments if s.resource == 2 and s.role is Role.IDLE
            and died <= s.start < restarted] == [(died, restarted)]  # no role while its server was lost
