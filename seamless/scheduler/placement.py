"""Real placement on Ray: one placement group (one {"GPU": 1} bundle) per resource and role.

Taking a role is `acquire`, leaving it is `release`; both are explicit, and Ray creates or frees
such a group in well under 0.1 s on a local cluster. Actors and tasks of the role are scheduled
into the lease's bundle (`lease.strategy()`), so removing the group also ends them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from seamless.errors import ConfigError
from seamless.scheduler.resources import Resource, ResourcePool, Role


@dataclass(frozen=True)
class Lease:
    """A resource held for a role."""

    resource: Resource
    role: Role
    placement_group: Any
    acquire_s: float
    """Seconds Ray took to place it."""

    def strategy(self) -> Any:
        """Scheduling strategy that puts an actor or task into this lease's bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.placement_group,
                                                placement_group_bundle_index=0)


class RayPlacement:
    """Acquires and releases leases on the connected Ray cluster."""

    def __init__(self, run_name: str = "seamless", timeout_s: float = 30.0) -> None:
        self.run_name = run_name
        self.timeout_s = timeout_s

    def check_capacity(self, pool: ResourcePool) -> None:
        """Fail early when the cluster has fewer GPUs than the recipe declares."""
        import ray

        have = int(ray.cluster_resources().get("GPU", 0))
        if have < len(pool):
            raise ConfigError(
                f"cluster.resources declares {len(pool)} GPUs but the Ray cluster has {have}; lower "
                "the counts in cluster.resources or join a larger cluster with cluster.address")

    def acquire(self, resource: Resource, role: Role) -> Lease:
        from ray.util.placement_group import placement_group

        assert role in (Role.ROLLOUT, Role.TRAIN), role
        started = time.monotonic()
        deadline = started + self.timeout_s
        group = placement_group([{"GPU": 1}], strategy="PACK",
                                name=f"{self.run_name}-r{resource.id}-{role.value}")
        if not group.wait(self.timeout_s):
            self._remove(group)
            raise ConfigError(
                f"could not place {resource.describe()} as {role.value} within {self.timeout_s:g} s: "
                "the Ray cluster has no free GPU for it (another job or a role that was not released "
                "holds it); lower the counts in cluster.resources, free GPUs, or raise "
                "cluster.placement_timeout_s")
        return Lease(resource, role, group, time.monotonic() - started)

    def release(self, lease: Lease) -> None:
        """Free the resource; returns once Ray can place it again."""
        import ray

        free_before = ray.available_resources().get("GPU", 0.0)
        self._remove(lease.placement_group)
        # Ray frees the GPU some 0.1 s after the group reads REMOVED; a group asked for before that
        # waits for Ray's next retry, about 1 s later (measured here), so wait for the GPU instead
        deadline = time.monotonic() + min(1.0, self.timeout_s)
        while ray.available_resources().get("GPU", 0.0) <= free_before and time.monotonic() < deadline:
            time.sleep(0.005)

    def _remove(self, group: Any) -> None:
        from ray.util.placement_group import placement_group_table, remove_placement_group

        remove_placement_group(group)
        deadline = time.monotonic() + self.timeout_s
        while placement_group_table(group).get("state") != "REMOVED":
            assert time.monotonic() < deadline, "Ray did not remove a placement group in time"
            time.sleep(0.002)
