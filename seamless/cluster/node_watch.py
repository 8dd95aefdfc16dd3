"""Which Ray nodes are alive, polled: the run's record of capacity joining and leaving.

Ray declares a node dead a few seconds after its raylet stops answering (its health checks), and
re-places the placement-group bundles that were on it once a node that matches them joins; the
fleet restarts a server when its bundle is placed again. This watch only reports what changed,
for the run's timeline and log: `NodeEvent`s of nodes that joined or were lost since the last poll.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class NodeEvent:
    """A Ray node joined the cluster or was lost (its raylet gone)."""

    kind: Literal["node_joined", "node_lost"]
    node_id: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    gpus: float = 0.0
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        return f"Ray node {self.kind.removeprefix('node_')}: {self.detail}"

    @property
    def detail(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()) if not k.startswith("ray.io/"))
        return f"{self.address} ({self.gpus:g} GPU{', ' + labels if labels else ''})"


class NodeWatch:
    """Polls `ray.nodes()`; the nodes alive at construction are the baseline (no events for them)."""

    def __init__(self) -> None:
        self._alive = self._read()

    def poll(self) -> list[NodeEvent]:
        """Nodes that joined or were lost since the previous poll."""
        now = self._read()
        lost = [NodeEvent("node_lost", nid, *self._alive[nid]) for nid in self._alive.keys() - now.keys()]
        joined = [NodeEvent("node_joined", nid, *now[nid]) for nid in now.keys() - self._alive.keys()]
        self._alive = now
        return lost + joined

    def alive(self) -> dict[str, str]:
        """Address of each live node, by node id (as of the last poll)."""
        return {nid: address for nid, (address, _, _) in self._alive.items()}

    @staticmethod
    def _read() -> dict[str, tuple[str, dict[str, str], float]]:
        import ray

        nodes: list[dict[str, Any]] = ray.nodes()
        return {n["NodeID"]: (n.get("NodeManagerAddress", ""), dict(n.get("Labels") or {}),
                              float((n.get("Resources") or {}).get("GPU", 0.0)))
                for n in nodes if n.get("Alive")}
