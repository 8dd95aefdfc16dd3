"""Device placement on a local Ray with 4 logical GPUs: every trainer rank and every vLLM server
actor sees the device of its resource (Ray sets CUDA_VISIBLE_DEVICES from the bundle it runs in),
a [train, rollout] resource's two residents see the same one, and no two resources share one."""

from __future__ import annotations

import pytest
import ray

from seamless.config import ClusterConfig, GrpoConfig
from seamless.rollout.fleet import VLLMFleet
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.server_actor import ServerActor
from seamless.scheduler import ResourcePool, Role
from seamless.scheduler.placement import RayPlacement
from seamless.trainer.trainer import spawn_ranks
from seamless.trainer.worker import WorkerSpec

LAYOUTS = {
    "colocated": ("colocated", [(2, ["train", "rollout"])]),
    "disaggregated": ("disaggregated", [(1, ["train"]), (2, ["rollout"])]),
    "tagged": ("tagged", [(2, ["rollout"]), (2, ["train", "rollout"])]),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_rank_and_server_sees_its_resources_device(ray_cluster, tmp_path, layout):
    policy, groups = LAYOUTS[layout]
    pool = ResourcePool.from_cluster(ClusterConfig(policy=policy, resources=[{"count": c, "tags": t} for c, t in groups]))
    placement = RayPlacement(f"t-dev-{layout}", timeout_s=10)
    devices = placement.reserve(pool)
    try:
        # the trainer's ranks as seamless run makes them: rank i on the i-th train-tagged resource
        trainers = sorted(pool.trainers)
        spec = WorkerSpec(model_dir=str(tmp_path), ds_config={}, dtype="float32", lr=1e-5, critic_lr=1e-5,
                          weight_decay=0.0, need_reference=False, need_critic=False,
                          algorithm=GrpoConfig(), seed=0)
        ranks = spawn_ranks(spec, len(trainers), [devices.slot(rid) for rid in trainers])
        seen = {("train", rid): report for rid, report in zip(trainers, ray.get([r.device_report.remote() for r in ranks]))}
        # the servers as the fleet places them: residents of dual resources outside any lease,
        # rollout-only ones in their rollout lease
        fleet = VLLMFleet(tmp_path, tmp_path / "run", ProxyAdmin("http://127.0.0.1:9", "unused"), devices=devices)
        servers = {}
        for resource in pool:
            if resource.can_rollout:
                lease = None if resource.dual else placement.acquire(resource, Role.ROLLOUT)
                servers[resource.id] = ray.remote(ServerActor).options(**fleet.actor_options(resource.id, lease)).remote()
        seen.update({("rollout", rid): report for rid, report in
                     zip(servers, ray.get([a.device_report.remote() for a in servers.values()]))})

        for (role, rid), report in seen.items():
            # one device each, and the process uses the one Ray assigned
            assert report["ray_gpu_ids"] == [report["cuda_visible_devices"]] and report["index"] == 0, (role, rid, report)
        by_resource: dict[int, set[str]] = {}
        for (role, rid), report in seen.items():
            by_resource.setdefault(rid, set()).add(report["cuda_visible_devices"])
        assert all(len(ids) == 1 for ids in by_resource.values()), by_resource  # dual: rank and server on one GPU
        device_of = {rid: ids.pop() for rid, ids in by_resource.items()}
        assert len(set(device_of.values())) == len(pool), device_of  # distinct resources, distinct GPUs
        for rid in pool.dual:
            assert seen[("train", rid)]["pid"] != seen[("rollout", rid)]["pid"]
    finally:
        placement.close()  # ends every actor placed on the devices


def test_an_elastic_resource_is_not_waited_for_and_is_placed_when_capacity_frees(ray_cluster):
    """Resources 0 and 2 take the run's group (bundles 0 and 1); resource 1, elastic, its own group,
    which waits while no GPU is free for it and is placed as soon as one is."""
    from seamless.cluster.devices import DeviceMap, DeviceNeed

    blocker = DeviceMap.reserve([DeviceNeed(), DeviceNeed()], name="blocker", timeout_s=30)  # 2 of 4 GPUs taken
    devices = DeviceMap.reserve([DeviceNeed(), DeviceNeed(elastic=True), DeviceNeed()], name="elastic", timeout_s=30)
    try:
        assert devices.placed() and devices.placed(0) and devices.placed(2) and not devices.placed(1)
        assert [(s.placement_group is devices.placement_group, s.index) for s in devices.slots] == \
            [(True, 0), (False, 0), (True, 1)]
        assert devices.holds(devices.slot(1)) and devices.node_of(0) == devices.node_of(2)
        blocker.release()
        assert ray.get(devices.slot(1).placement_group.ready(), timeout=30) and devices.placed(1)
        assert devices.node_of(1) == devices.node_of(0)  # one node here
    finally:
        blocker.release()
        devices.release()
