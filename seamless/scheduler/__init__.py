"""Tag scheduler: capability-tagged resources, one policy per placement style, real placement on
Ray (runtime.py) and a discrete-event simulator of the same policies (sim.py)."""

from seamless.scheduler.policy import PipelineState, Policy, StepPlan, make_policy
from seamless.scheduler.resources import Resource, ResourcePool, Role
from seamless.scheduler.timeline import Timeline

__all__ = ["PipelineState", "Policy", "Resource", "ResourcePool", "Role", "StepPlan", "Timeline",
           "make_policy"]
