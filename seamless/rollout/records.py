"""Typed records the fleet hands to the main loop, the scheduler and the logs, and the shape of
the placement it is given."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from seamless.cluster.devices import DeviceSlot


class Lease(Protocol):
    """Where the fleet may start a server: a resource held for rollout. The scheduler's
    `placement.Lease` is one; the rollout package does not import the scheduler above it."""

    @property
    def resource(self) -> Any:
        """The held resource; the fleet reads its `id`."""

    @property
    def slot(self) -> DeviceSlot:
        """The resource's device: where the server's actor goes."""


EventKind = Literal["started", "waiting", "died", "restarted", "restart_failed", "gave_up", "removed", "parked",
                    "unparked"]
CAPACITY_KINDS = frozenset({"waiting", "died", "restarted", "restart_failed", "gave_up"})
"""Server events that change rollout capacity (the others are a run's routine role switches)."""


@dataclass(frozen=True)
class ServerEvent:
    """Something that happened to one server (deaths and restarts are reported, never silent)."""

    resource_id: int
    kind: EventKind
    url: str
    detail: str = ""
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"server on resource {self.resource_id} {self.kind.replace('_', ' ')}{where} {self.detail}".rstrip()


@dataclass(frozen=True)
class WeightUpdateMetrics:
    """One weight update, timed phase by phase (seconds) and sized (bytes)."""

    version: int
    transport: str
    servers: int
    stage_s: float
    """Writing the weights where servers read them (disk), before the pause: rollout still runs."""
    pause_s: float
    transfer_s: float
    """Servers loading the new weights (disk reload, or the NCCL broadcast), while paused."""
    cache_s: float
    """Resetting prefix caches (prefix_cache=reset); 0 when salting."""
    resume_s: float
    bytes: int
    """Size of the weights sent once; each server reads (or receives) this much."""
    inflight_at_pause: int
    """Agent calls in flight when rollout paused: they span the update (partial rollout)."""
    tokens_during_update: int
    """Tokens the servers generated between the start of the pause and the end of the resume."""
    lost: tuple[str, ...] = ()
    """Servers that stopped answering during the update (a node died): it went on without them."""

    @property
    def paused_s(self) -> float:
        """How long rollout was held: the bubble this update costs."""
        return self.pause_s + self.transfer_s + self.cache_s + self.resume_s

    @property
    def bytes_per_s(self) -> float:
        moving = self.stage_s + self.transfer_s
        return self.bytes / moving if moving > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        """Flat numbers for the metrics logger."""
        numbers = {k: v for k, v in asdict(self).items() if k != "lost"}
        return {**numbers, "servers_lost": len(self.lost), "paused_s": self.paused_s, "bytes_per_s": self.bytes_per_s}


@dataclass(frozen=True)
class ServerStats:
    """One server's load, read from its /metrics."""

    resource_id: int
    url: str
    running: int
    waiting: int
    """Queue depth: requests admitted but not yet scheduled."""
    generation_tokens: int
    tokens_per_s: float
    """Generation throughput since the previous stats() call."""
