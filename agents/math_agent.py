"""`math`: a single-turn agent. It asks the question once and returns the model's reply."""

from __future__ import annotations

from agents.single_turn import SingleTurn
from seamless.agent.api import AgentContext
from seamless.agent.tasks import Task

SYSTEM_PROMPT = "Answer with the final number only."
_AGENT = SingleTurn(SYSTEM_PROMPT)
build_messages = _AGENT.build_messages


async def run(task: Task, ctx: AgentContext) -> str:
    return await _AGENT.run(task, ctx)


run.warmup = _AGENT.warmup
