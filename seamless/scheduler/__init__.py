"""Tag scheduler: capability-tagged resources, one policy per placement style, real placement on
Ray (runtime.py) and a discrete-event simulator of the same policies (sim.py).

Modules, one job each: resources (pool, roles), policy (decisions + PipelineState, shared by the
real scheduler and the simulator), timeline (recording, bubble ratio, metrics), placement (Ray
leases), protocols (what the fleet implements), adapters (the real VLLMFleet behind the
protocol; what a lease means for a server), runtime (TagScheduler), sim
(simulator), validate (fit the sim to a recorded run), plot (PNGs), report (`seamless sim`).
Nothing here imports ray at import time.
"""

from seamless.scheduler.placement import Lease, RayPlacement
from seamless.scheduler.policy import PipelineState, Policy, StepPlan, make_policy
from seamless.scheduler.protocols import RolloutFleet
from seamless.scheduler.resources import Resource, ResourcePool, Role
from seamless.scheduler.runtime import StepReport, TagScheduler
from seamless.scheduler.timeline import Timeline

__all__ = ["Lease", "PipelineState", "Policy", "RayPlacement", "Resource", "ResourcePool", "Role",
           "RolloutFleet", "StepPlan", "StepReport", "TagScheduler", "Timeline", "make_policy"]
