"""The narrow interfaces the scheduler drives. The rollout fleet and the trainer implement them;
the scheduler never reaches into either."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from seamless.scheduler.placement import Lease


@runtime_checkable
class RolloutFleet(Protocol):
    """The vLLM servers, as the scheduler sees them (one server per rollout resource). A fleet may
    also offer `add_servers(leases, version)`, which `start()` uses to start servers in parallel."""

    def add_server(self, lease: Lease, version: int) -> None:
        """Start (or wake) a server on the leased resource with weights `version`, and register it
        with the proxy; returns when it takes requests."""

    def remove_server(self, resource_id: int) -> None:
        """Unregister the server on this resource; the proxy pauses its in-flight requests and
        resumes them on the remaining servers. Then stop it (or put it to sleep) so the resource is
        free; returns when it is."""

    def pause(self, resource_ids: Sequence[int]) -> None:
        """Hold generation on these servers (requests stay, no tokens are produced)."""

    def resume(self, resource_ids: Sequence[int]) -> None:
        """Continue generation on these servers."""

    def update_weights(self, version: int, resource_ids: Sequence[int]) -> None:
        """Load weights `version` on these (paused) servers."""

    def in_flight(self) -> Mapping[int, int]:
        """Running requests per server, by resource id (for the timeline's busy/idle)."""


@runtime_checkable
class TrainerGroup(Protocol):
    """The trainer: its world is the train-tagged resources, fixed for the run."""

    def step(self, leases: Sequence[Lease], batch: Any) -> Mapping[str, float]:
        """One optimizer step on the batch, on the leased resources; returns its metrics."""
