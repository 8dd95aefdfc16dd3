"""The narrow interface the scheduler drives: the rollout fleet, as far as roles go (a server per
rollout lease). The scheduler never reaches into the fleet, and never trains or moves weights:
the main loop does both between the scheduler's step hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from seamless.scheduler.placement import Lease


@runtime_checkable
class RolloutFleet(Protocol):
    """The vLLM servers, as the scheduler sees them (one server per rollout resource). A fleet may
    also offer `add_servers(leases)`, which `start()` uses to start servers in parallel."""

    def add_server(self, lease: Lease) -> None:
        """Start (or wake) a server on the leased resource with the current weights (the fleet's
        publisher owns the version: the scheduler counts steps, not weights), and register it
        with the proxy; returns when it takes requests."""

    def remove_server(self, resource_id: int) -> None:
        """Unregister the server on this resource; the proxy pauses its in-flight requests and
        resumes them on the remaining servers. Then stop it (or put it to sleep) so the resource is
        free; returns when it is."""

    def in_flight(self) -> Mapping[int, int]:
        """Running requests per server, by resource id (for the timeline's busy/idle)."""
