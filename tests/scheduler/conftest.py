"""A fake fleet (the scheduler's protocol) and a fake trainer (what the main loop trains with)
that do real Ray work on logical GPUs: every generation and every trainer rank is a Ray task
that asks for the lease's whole GPU inside the lease's bundle, so it can only run while the
scheduler really holds that resource for that role. Tasks (not actors) keep these tests fast on
2 shared cores: Ray reuses their workers."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import ray

from seamless.scheduler.placement import Lease


# max_calls=0: Ray otherwise starts a new worker process for every GPU task (about 1 s each here)
@ray.remote(num_gpus=1, num_cpus=0, max_calls=0)
def _gpu_work(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


class FakeFleet:
    """Rollout servers as leases; `generate` runs one task per episode on the servers round-robin."""

    def __init__(self, seconds_per_episode: float = 0.02) -> None:
        self.seconds = seconds_per_episode
        self.servers: dict[int, Lease] = {}
        self.versions: dict[int, int] = {}
        self.version = 0  # the weights the fleet holds (its publisher's version)
        self.paused: set[int] = set()
        self.calls: list[tuple[str, Any]] = []
        self.devices: set[str] = set()
        self.busy = False

    def add_server(self, lease: Lease) -> None:
        assert lease.resource.id not in self.servers
        self.servers[lease.resource.id] = lease
        self.versions[lease.resource.id] = self.version  # servers join on the current weights
        self.calls.append(("add", lease.resource.id))

    def remove_server(self, resource_id: int) -> None:
        del self.servers[resource_id]
        self.calls.append(("remove", resource_id))

    def pause(self, resource_ids: Sequence[int]) -> None:
        self.paused |= set(resource_ids)
        self.calls.append(("pause", tuple(resource_ids)))

    def resume(self, resource_ids: Sequence[int]) -> None:
        self.paused -= set(resource_ids)
        self.calls.append(("resume", tuple(resource_ids)))

    def update_weights(self, version: int, resource_ids: Sequence[int]) -> None:
        assert set(resource_ids) <= self.paused, "weights must load on paused servers"
        self.version = version
        for rid in resource_ids:
            self.versions[rid] = version
        self.calls.append(("update", (version, tuple(resource_ids))))

    def in_flight(self) -> Mapping[int, int]:
        return {rid: int(self.busy and rid not in self.paused) for rid in self.servers}

    def generate(self, episodes: int) -> None:
        live = [lease for rid, lease in sorted(self.servers.items()) if rid not in self.paused]
        assert live, "no server to generate on"
        refs = [_gpu_work.options(scheduling_strategy=live[i % len(live)].strategy()).remote(self.seconds)
                for i in range(episodes)]
        self.devices |= set(ray.get(refs))


class FakeTrainer:
    """A trainer rank per lease, each a task that holds the GPU for `seconds`."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.steps: list[tuple[int, ...]] = []
        self.devices: set[str] = set()

    def step(self, leases: Sequence[Lease], batch: Any) -> Mapping[str, float]:
        refs = [_gpu_work.options(scheduling_strategy=lease.strategy()).remote(self.seconds) for lease in leases]
        self.devices |= set(ray.get(refs))
        self.steps.append(tuple(lease.resource.id for lease in leases))
        return {"loss": 1.0 / len(self.steps), "ranks": float(len(leases))}


@pytest.fixture
def fake_fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def fake_trainer() -> FakeTrainer:
    return FakeTrainer()
