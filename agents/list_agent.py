"""`listing`: a single-turn agent for tasks whose answer is a list ("List the numbers from 3 to 50.").

The same shape as `math` with its own instruction; its right answers are long (about three tokens
a number), so generation, not per-request overhead, dominates an episode
(`recipes/grpo_tiny_long_cpu.yaml`).
"""

from __future__ import annotations

from agents.single_turn import SingleTurn
from seamless.agent.api import AgentContext
from seamless.agent.tasks import Task

SYSTEM_PROMPT = "Answer with the numbers only, separated by spaces."
_AGENT = SingleTurn(SYSTEM_PROMPT)
build_messages = _AGENT.build_messages


async def run(task: Task, ctx: AgentContext) -> str:
    return await _AGENT.run(task, ctx)


run.warmup = _AGENT.warmup
