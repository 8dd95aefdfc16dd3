"""The real rollout fleet behind the scheduler's protocol: a thin adapter that decides only what a
lease means for a server (the scheduler never reaches into the fleet).

- A rollout-only resource's vLLM server runs inside its rollout lease and stops with it.
- On a dual-tagged resource the server is a resident: the first rollout lease starts it outside
  the lease (asking Ray for no GPU: the lease holds it), and losing the lease parks it (out of the
  proxy's rotation, in-flight calls aborted and continued on the other servers, process kept);
  the next rollout lease unparks it on the current weights. Measured in real runs on the 2-core
  machine (tiny model, Ray placement included): leaving rollout took 0.14 s for one resource and
  0.43 s for four; rejoining (weights reloaded, resumed, registered) 0.23 s and 0.84 s. On one
  server (`scripts/run_policies.py --measure-switch`): park 56-99 ms, unpark with a weight reload
  143-181 ms, against 45 s to rejoin by a fresh start (vLLM start plus 8 s of warm-up requests).
- Trainer ranks are created once for the run, one per train-tagged resource, and ask Ray for no
  GPU of their own (their DeepSpeed process group is formed once). A train lease is the right to
  compute on that resource's GPU: the main loop trains between `begin_step()` (which returns the
  train leases) and `begin_sync()`. On GPUs parking also puts vLLM to sleep and the rank reloads its offloaded
  state (rollout/switch.py); on this CPU machine both residents are processes and the lease is what keeps them
  from running at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from seamless.scheduler.placement import Lease

if TYPE_CHECKING:  # the scheduler does not import the rollout package
    from seamless.rollout.fleet import VLLMFleet


class FleetOnLeases:
    """`RolloutFleet` over a `VLLMFleet`: servers of dual resources are parked, not stopped."""

    def __init__(self, fleet: VLLMFleet) -> None:
        self.fleet = fleet
        self._resident: set[int] = set()

    def add_server(self, lease: Lease) -> None:
        rid = lease.resource.id
        if lease.resource.dual:
            self._resident.add(rid)
            self.fleet.add_server(None, resource_id=rid)  # unparks a parked one
        else:
            self.fleet.add_server(lease)

    def add_servers(self, leases: Sequence[Lease]) -> None:
        """Start the servers of several leases in parallel (the run's first placement)."""
        placed = [lease for lease in leases if not lease.resource.dual]
        residents = [lease for lease in leases if lease.resource.dual]
        self._resident |= {lease.resource.id for lease in residents}
        self.fleet.add_servers(placed, residents=[lease.resource.id for lease in residents])

    def remove_server(self, resource_id: int) -> None:
        if resource_id in self._resident:
            self.fleet.park_server(resource_id)
        else:
            self.fleet.remove_server(resource_id)

    def in_flight(self) -> Mapping[int, int]:
        return self.fleet.in_flight()
