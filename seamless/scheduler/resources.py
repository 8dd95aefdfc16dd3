"""The resource pool: capability-tagged accelerators and the roles they can hold."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from seamless.config import ClusterConfig


class Role(str, enum.Enum):
    """What a resource does at a moment. SWITCHING is the time between two roles (the bubble that
    a role switch costs); IDLE is a resource that holds no role."""

    ROLLOUT = "rollout"
    TRAIN = "train"
    SWITCHING = "switching"
    IDLE = "idle"


@dataclass(frozen=True, slots=True)
class Resource:
    """One accelerator. `group` is its index in cluster.resources, so errors can name the recipe key."""

    id: int
    tags: frozenset[str]
    group: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    """Ray node labels its node must carry (cluster.resources.N.node_labels): its hardware and place."""
    ray_resources: tuple[tuple[str, float], ...] = ()
    """Custom Ray resources it takes besides its GPU (cluster.resources.N.ray_resources)."""
    speed: float = 1.0
    """Throughput relative to the simulator's reference GPU (cluster.resources.N.speed)."""
    elastic: bool = False
    """Rollout capacity the run neither waits for nor needs (cluster.resources.N.elastic)."""

    @property
    def can_train(self) -> bool:
        return "train" in self.tags

    @property
    def can_rollout(self) -> bool:
        return "rollout" in self.tags

    @property
    def dual(self) -> bool:
        return self.can_train and self.can_rollout

    def describe(self) -> str:
        where = "".join(f", {k}={v}" for k, v in self.labels) + "".join(f", {k}: {v:g}" for k, v in self.ray_resources)
        return f"resource {self.id} (cluster.resources.{self.group}, tags [{', '.join(sorted(self.tags))}]{where})"


@dataclass(frozen=True, slots=True)
class ResourcePool:
    """The accelerators of a run, in a fixed order (ids 0..n-1)."""

    resources: tuple[Resource, ...]

    @classmethod
    def from_cluster(cls, cluster: ClusterConfig) -> ResourcePool:
        resources: list[Resource] = []
        for group_index, group in enumerate(cluster.resources):
            labels = tuple(sorted(group.node_labels.items()))
            extra = tuple(sorted(group.ray_resources.items()))
            for _ in range(group.count):
                resources.append(Resource(len(resources), frozenset(group.tags), group_index, labels, extra,
                                          group.speed, group.elastic))
        return cls(tuple(resources))

    @classmethod
    def split(cls, gpus: int, train_share: float, all_dual: bool = False) -> ResourcePool:
        """An N-GPU pool for the simulator: round(N * train_share) dual-tagged, the rest rollout-only."""
        assert gpus >= 1
        if all_dual:
            return cls(tuple(Resource(i, frozenset({"train", "rollout"}), 0) for i in range(gpus)))
        n_dual = min(gpus - 1, max(1, round(gpus * train_share)))
        dual = [Resource(i, frozenset({"train", "rollout"}), 0) for i in range(n_dual)]
        rollout = [Resource(n_dual + i, frozenset({"rollout"}), 1) for i in range(gpus - n_dual)]
        return cls(tuple(dual + rollout))

    def __len__(self) -> int:
        return len(self.resources)

    def __iter__(self):
        return iter(self.resources)

    def __getitem__(self, rid: int) -> Resource:
        return self.resources[rid]

    @property
    def trainers(self) -> frozenset[int]:
        return frozenset(r.id for r in self.resources if r.can_train)

    @property
    def rollout_only(self) -> frozenset[int]:
        return frozenset(r.id for r in self.resources if r.can_rollout and not r.can_train)

    @property
    def dual(self) -> frozenset[int]:
        return frozenset(r.id for r in self.resources if r.dual)
