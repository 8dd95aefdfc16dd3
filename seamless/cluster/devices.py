"""Which device each resource is: one Ray placement group for the run, one bundle per resource.

A resource of `cluster.resources` is one GPU (a logical GPU on a CPU machine), or
`rollout.tensor_parallel_size` GPUs for a [rollout]-only resource whose server spans several. The
bundles are reserved once, when the run starts, and held until it ends: role switches never wait
for Ray, and nothing else can take a GPU mid-run. Everything that computes on a resource runs in
its bundle and asks for its share of it, so Ray pins it to that resource's GPU (it sets
CUDA_VISIBLE_DEVICES for the actor): on a [train, rollout] resource the trainer rank and the vLLM
server each ask for half of the bundle and so land on the same GPU; a resource with one role gives
its one resident the whole bundle. Inside an actor, `assigned_device()` is the CUDA index to use,
taken from what Ray assigned, never a fixed 0.

An elastic resource (cluster.resources.N.elastic, rollout capacity that comes and goes) is a
placement group of its own, of one bundle, that the run does not wait for: Ray places it when a
node that offers it is in the cluster (at start or when one joins) and re-places it when that
node leaves; `placed(resource_id)` says whether it is placed now.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from seamless.errors import ConfigError


@dataclass(frozen=True)
class DeviceSlot:
    """One resource's bundle in the run's placement group (or, elastic, in its own)."""

    resource_id: int
    placement_group: Any
    gpus: int
    """GPUs in the bundle (more than 1 only for a tensor-parallel rollout server)."""
    residents: int
    """Processes that live on it for the whole run: 2 on a [train, rollout] resource, else 1."""
    bundle_index: int | None = None
    """Its index in `placement_group` (None: the resource id, as in the run's one group)."""

    @property
    def shared(self) -> bool:
        return self.residents > 1

    def strategy(self) -> Any:
        """Ray scheduling strategy that puts an actor or task into this bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.placement_group,
                                                placement_group_bundle_index=self.index)

    @property
    def index(self) -> int:
        return self.resource_id if self.bundle_index is None else self.bundle_index

    def actor_options(self) -> dict[str, Any]:
        """Ray options for one resident: its share of the bundle's GPUs, and no CPU (on a 2-CPU
        cluster each resident asking for one would leave nothing for the rest)."""
        return {"num_cpus": 0, "num_gpus": self.gpus / self.residents, "scheduling_strategy": self.strategy()}


@dataclass(frozen=True)
class DeviceNeed:
    """What one resource needs: its GPUs and how many residents share them."""

    gpus: int = 1
    residents: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    """Ray node labels the bundle's node must carry (which GPU kind, which place)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources the bundle takes besides its GPUs (per GPU; see `bundle`)."""
    elastic: bool = False
    """The run neither waits for it nor needs it (rollout capacity that comes and goes)."""

    def bundle(self) -> dict[str, float]:
        """The bundle Ray reserves: the GPUs, and each custom resource once per GPU."""
        return {"GPU": self.gpus, **{k: v * self.gpus for k, v in self.resources.items()}}


class DeviceMap:
    """The run's devices, reserved in one placement group (plus one per elastic resource);
    `release()` frees them (and ends every actor placed in them), so call it after the trainer and
    the servers have shut down."""

    def __init__(self, placement_group: Any, needs: list[DeviceNeed], elastic_groups: dict[int, Any] | None = None) -> None:
        self.placement_group = placement_group
        self.elastic_groups = dict(elastic_groups or {})
        fixed = iter(range(len(needs)))
        self.slots = [DeviceSlot(i, self.elastic_groups[i], n.gpus, n.residents, 0) if i in self.elastic_groups
                      else DeviceSlot(i, placement_group, n.gpus, n.residents, next(fixed))
                      for i, n in enumerate(needs)]

    @classmethod
    def reserve(cls, needs: list[DeviceNeed], name: str = "seamless", timeout_s: float = 30.0) -> DeviceMap:
        """Place one bundle per resource on the connected Ray cluster (PACK: as few nodes as fit),
        each on a node that carries its labels and custom resources; elastic ones are asked for and
        not waited for."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        fixed = [n for n in needs if not n.elastic]
        if not fixed:
            raise ConfigError("every group of cluster.resources is elastic: the run needs at least one it can "
                              "count on (set elastic: false on one)")
        _check_capacity(fixed, ray.cluster_resources())
        selectors = [dict(n.labels) for n in fixed]
        group = placement_group([n.bundle() for n in fixed], strategy="PACK", name=f"{name}-devices",
                                bundle_label_selector=selectors if any(selectors) else None)
        if not group.wait(timeout_s):
            remove_placement_group(group)
            total = sum(n.gpus for n in fixed)
            wanted = sorted({f"{k}={v}" for s in selectors for k, v in s.items()})
            where = f" on nodes labelled {', '.join(wanted)}" if wanted else ""
            raise ConfigError(
                f"could not reserve {total} GPU(s) for cluster.resources{where} within {timeout_s:g} s: the Ray "
                "cluster has no free GPUs that match them (too few such nodes, or another job holds some); "
                "check cluster.resources (counts, node_labels, ray_resources) against `ray status`, free "
                "GPUs, or raise cluster.placement_timeout_s")
        elastic = {i: placement_group([n.bundle()], strategy="PACK", name=f"{name}-elastic-{i}",
                                      bundle_label_selector=[dict(n.labels)] if n.labels else None)
                   for i, n in enumerate(needs) if n.elastic}
        return cls(group, needs, elastic)

    def placed(self, resource_id: int | None = None) -> bool:
        """Whether the resource's bundle (default: every bundle of the run's main group) sits on a
        live node: after a node dies Ray reschedules its bundles (state RESCHEDULING) until a node
        that matches them joins; an elastic one waits (PENDING) until such a node is there."""
        from ray.util.placement_group import placement_group_table

        group = self.placement_group if resource_id is None else self.slots[resource_id].placement_group
        return group is not None and placement_group_table(group).get("state") == "CREATED"

    def holds(self, slot: DeviceSlot) -> bool:
        """Whether `slot` is one of this map's (not a stand-in's)."""
        return 0 <= slot.resource_id < len(self.slots) and self.slots[slot.resource_id] == slot

    def node_of(self, resource_id: int) -> str:
        """The Ray node id that holds a resource's bundle."""
        from ray.util.placement_group import placement_group_table

        slot = self.slots[resource_id]
        return placement_group_table(slot.placement_group)["bundles_to_node_id"][slot.index]

    def slot(self, resource_id: int) -> DeviceSlot:
        return self.slots[resource_id]

    def release(self) -> None:
        """Free the devices; returns once Ray reports the groups removed."""
        from ray.util.placement_group import placement_group_table, remove_placement_group

        if self.placement_group is None:
            return
        groups = [self.placement_group, *self.elastic_groups.values()]
        self.placement_group, self.elastic_groups = None, {}
        for group in groups:
            remove_placement_group(group)
        deadline = time.monotonic() + 30
        for group in groups:
            while placement_group_table(group).get("state") != "REMOVED" and time.monotonic() < deadline:
                time.sleep(0.002)


def _check_capacity(needs: list[DeviceNeed], have: dict[str, float]) -> None:
    """Fail before waiting when the cluster has fewer GPUs (or custom resources) than the recipe asks."""
    total = sum(n.gpus for n in needs)
    if int(have.get("GPU", 0)) < total:
        raise ConfigError(
            f"cluster.resources declares {total} GPUs but the Ray cluster has {int(have.get('GPU', 0))}; lower "
            "the counts in cluster.resources (or rollout.tensor_parallel_size) or join a larger cluster with "
            "cluster.address")
    wanted: dict[str, float] = {}
    for need in needs:
        for key, amount in need.bundle().items():
            wanted[key] = wanted.get(key, 0.0) + amount
    short = {k: v for k, v in wanted.items() if k != "GPU" and have.get(k, 0.0) < v}
    if short:
        raise ConfigError(
            f"cluster.resources asks for Ray resources {short} (ray_resources x count) but the cluster has "
            f"{ {k: have.get(k, 0.0) for k in short} }; start nodes with `ray start --resources` that offer "
            "them, or change cluster.resources.N.ray_resources")


def assigned_device() -> int | None:
    """Inside a Ray actor: the CUDA index of the (first) GPU Ray assigned to it, counted within this
    process's CUDA_VISIBLE_DEVICES; None when Ray assigned no GPU."""
    try:
        import ray
    except ImportError:  # a process run without Ray (scripts/gpu_check.py on a bare GPU machine)
        return None
    if not ray.is_initialized():
        return None
    ids = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    if not ids:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:  # Ray left visibility alone (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)
        return int(ids[0])
    listed = [v.strip() for v in visible.split(",")]
    if ids[0] not in listed:
        raise RuntimeError(f"Ray assigned GPU {ids[0]} but CUDA_VISIBLE_DEVICES is {visible!r}")
    return listed.index(ids[0])


def device_report() -> dict[str, Any]:
    """What this process sees: for tests and `seamless doctor`."""
    import ray

    return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "ray_gpu_ids": [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])],
            "index": assigned_device(), "pid": os.getpid()}
