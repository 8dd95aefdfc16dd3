"""Real placement on Ray: the run's devices are reserved once (`seamless.cluster.devices`), and a lease is
the scheduler's record that a resource holds a role.

Every resource's device is one bundle of a placement group held for the whole run, so taking a
role (`acquire`) and leaving it (`release`) cost no Ray round trip and can never fail for lack of
a GPU mid-run. What runs in a role is scheduled into the resource's bundle (`lease.strategy()`),
and on a [train, rollout] resource both residents share it, so Ray pins them to one GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from seamless.cluster.devices import DeviceMap, DeviceNeed, DeviceSlot
from seamless.errors import ConfigError
from seamless.scheduler.resources import Resource, ResourcePool, Role


@dataclass(frozen=True)
class Lease:
    """A resource held for a role."""

    resource: Resource
    role: Role
    slot: DeviceSlot
    """The resource's device (its bundle in the run's placement group)."""
    acquire_s: float
    """Seconds taking the role took."""

    def strategy(self) -> Any:
        """Scheduling strategy that puts an actor or task onto this resource's device."""
        return self.slot.strategy()


def device_needs(pool: ResourcePool, tensor_parallel_size: int = 1) -> list[DeviceNeed]:
    """One bundle per resource: a trainer rank and a vLLM server share a [train, rollout] one; a
    [rollout]-only resource is `tensor_parallel_size` GPUs for one server."""
    return [DeviceNeed(gpus=tensor_parallel_size if r.can_rollout and not r.can_train else 1,
                       residents=2 if r.dual else 1, labels=dict(r.labels), resources=dict(r.ray_resources),
                       elastic=r.elastic)
            for r in pool]


def custom_resources(needs: list[DeviceNeed]) -> dict[str, float]:
    """The custom Ray resources all bundles take together (a local cluster is given these)."""
    total: dict[str, float] = {}
    for need in needs:
        for key, amount in need.bundle().items():
            if key != "GPU":
                total[key] = total.get(key, 0.0) + amount
    return total


class RayPlacement:
    """Reserves the run's devices on the connected Ray cluster and hands out leases on them."""

    def __init__(self, run_name: str = "seamless", timeout_s: float = 30.0, tensor_parallel_size: int = 1) -> None:
        self.run_name = run_name
        self.timeout_s = timeout_s
        self.tensor_parallel_size = tensor_parallel_size
        self.devices: DeviceMap | None = None
        self._held: dict[int, Role] = {}

    def reserve(self, pool: ResourcePool) -> DeviceMap:
        """Reserve one device per resource (once; later calls return the same map). Fails naming the
        recipe keys when the cluster has too few GPUs."""
        if self.devices is None:
            self.devices = DeviceMap.reserve(device_needs(pool, self.tensor_parallel_size),
                                             name=self.run_name, timeout_s=self.timeout_s)
        elif len(self.devices.slots) != len(pool):
            raise ConfigError(f"devices were reserved for {len(self.devices.slots)} resources, not {len(pool)}")
        return self.devices

    def check_capacity(self, pool: ResourcePool) -> None:
        """Fail early when the cluster has fewer GPUs than the recipe declares (reserves them)."""
        self.reserve(pool)

    def acquire(self, resource: Resource, role: Role) -> Lease:
        assert role in (Role.ROLLOUT, Role.TRAIN), role
        assert self.devices is not None, "reserve(pool) before acquire()"
        assert resource.id not in self._held, f"resource {resource.id} already holds {self._held[resource.id]}"
        started = time.monotonic()
        self._held[resource.id] = role
        return Lease(resource, role, self.devices.slot(resource.id), time.monotonic() - started)

    def release(self, lease: Lease) -> None:
        """Leave the role; the device stays reserved for the run."""
        self._held.pop(lease.resource.id, None)

    def close(self) -> None:
        """Free the devices (ends every actor still placed on them)."""
        self._held.clear()
        if self.devices is not None:
            self.devices.release()
            self.devices = None
