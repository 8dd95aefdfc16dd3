"""cluster.resources entries that say which hardware and which place: node labels and custom Ray
resources, checked when the recipe loads and carried into the bundles Ray reserves."""

from __future__ import annotations

import pytest

from seamless.cluster.devices import DeviceNeed, _check_capacity
from seamless.config import load_recipe
from seamless.errors import ConfigError
from seamless.scheduler.placement import custom_resources, device_needs
from seamless.scheduler.resources import ResourcePool

MIXED = ["cluster.address=auto", "cluster.policy=disaggregated",
         "cluster.resources=[{count: 2, tags: [train], node_labels: {seamless.io/gpu: H100}}, "
         "{count: 4, tags: [rollout], node_labels: {seamless.io/gpu: L4}, ray_resources: {gpu-L4: 1}, speed: 0.4}]"]


def test_groups_carry_their_selectors_into_the_bundles():
    recipe = load_recipe(None, MIXED + ["rollout.tensor_parallel_size=2"])
    pool = ResourcePool.from_cluster(recipe.cluster)
    assert pool[0].labels == (("seamless.io/gpu", "H100"),) and pool[0].ray_resources == ()
    assert pool[5].labels == (("seamless.io/gpu", "L4"),) and pool[5].speed == 0.4
    assert "seamless.io/gpu=L4" in pool[5].describe()
    needs = device_needs(pool, tensor_parallel_size=2)
    assert needs[0].bundle() == {"GPU": 1} and needs[0].labels == {"seamless.io/gpu": "H100"}
    assert needs[2].bundle() == {"GPU": 2, "gpu-L4": 2.0}  # a 2-GPU server takes gpu-L4 per GPU
    assert custom_resources(needs) == {"gpu-L4": 8.0}


@pytest.mark.parametrize("override, message", [
    ("cluster.resources=[{count: 1, tags: [train, rollout], node_labels: {gpu: L4}}]", "cluster.address"),
    ("cluster.resources=[{count: 1, tags: [train, rollout], ray_resources: {GPU: 1}}]", "custom resources"),
    ("cluster.resources=[{count: 1, tags: [train, rollout], ray_resources: {gpu-L4: 0}}]", "positive"),
    ("cluster.resources=[{count: 1, tags: [train, rollout], speed: 0}]", "speed"),
    ("cluster.bind=head-node", "neither an IP address nor `node`"),
])
def test_bad_selectors_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])


def test_a_cluster_short_of_a_custom_resource_fails_before_waiting():
    needs = [DeviceNeed(resources={"gpu-L4": 1}), DeviceNeed(resources={"gpu-L4": 1})]
    with pytest.raises(ConfigError, match="gpu-L4"):
        _check_capacity(needs, {"GPU": 4, "gpu-L4": 1})
    _check_capacity(needs, {"GPU": 2, "gpu-L4": 2})
    with pytest.raises(ConfigError, match="declares 2 GPUs"):
        _check_capacity(needs, {"GPU": 1, "gpu-L4": 2})


def test_bind_defaults_to_loopback_and_takes_node_or_an_address():
    assert load_recipe(None).cluster.bind == "127.0.0.1"
    assert load_recipe(None, ["cluster.bind=node"]).cluster.bind == "node"
    assert load_recipe(None, ["cluster.bind=10.0.0.5"]).cluster.bind == "10.0.0.5"


def test_the_simulator_runs_a_recipes_mixed_pool_at_its_gpus_speeds():
    from seamless.scheduler.sim import simulate_pool

    def tokens_per_s(rollout_speed: float) -> float:
        recipe = load_recipe(None, [
            "cluster.policy=disaggregated", "cluster.sim.steps=4", "cluster.sim.warmup_steps=1",
            "cluster.sim.response_median_tokens=200", "cluster.sim.episodes_per_gpu=8",
            f"cluster.resources=[{{count: 2, tags: [train, rollout]}}, "
            f"{{count: 6, tags: [rollout], ray_resources: {{gpu-L4: 1}}, speed: {rollout_speed}}}]"])
        return simulate_pool(recipe.cluster.sim, recipe.cluster).tokens_per_s

    slow, fast = tokens_per_s(0.25), tokens_per_s(1.0)
    assert fast > 1.5 * slow, (slow, fast)  # rollout-bound: slower rollout GPUs, fewer tokens a second


def test_servers_on_other_nodes_cannot_read_this_nodes_shm():
    with pytest.raises(ConfigError, match="weight_sync: auto"):
        load_recipe(None, ["cluster.bind=node", "rollout.weight_dir=shm"])
    load_recipe(None, ["cluster.bind=node", "rollout.weight_dir=shm", "rollout.weight_sync=auto"])
