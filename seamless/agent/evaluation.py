"""Held-out accuracy: each task once, greedy (temperature 0), through the trajectory manager.

Evaluation sessions carry metadata `{"eval": "1"}` and are NOT finished, so they never enter
the finished-episode stream the trainer consumes (they stay open in the proxy; each is a few KB
in Redis, removed with the run's keys). Their rewards are still posted, so the recorded traces
can be inspected like any other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from seamless.agent.api import Sampling
from seamless.agent.runner import AgentRunner, EpisodeResult
from seamless.agent.tasks import Task

EVAL_METADATA = {"eval": "1"}


@dataclass(frozen=True, slots=True)
class EvalReport:
    accuracy: float
    """Share of tasks with reward 1.0 (reward >= 1 counts as correct)."""
    mean_reward: float
    num_tasks: int
    num_correct: int
    num_failed: int
    """Episodes whose agent crashed or timed out (counted as wrong)."""
    results: list[EpisodeResult]


async def evaluate(runner: AgentRunner, tasks: Sequence[Task], *, max_tokens: int | None = None,
                   label: str = "eval") -> EvalReport:
    """Greedy accuracy of the runner's agent on `tasks`; sessions are tagged and left unfinished."""
    if not tasks:
        raise ValueError("evaluate() needs at least one held-out task")
    sampling = Sampling.greedy(max_tokens or runner.sampling.max_tokens)
    group_id = f"{label}-{uuid.uuid4().hex[:12]}"
    results = await asyncio.gather(*(
        runner.run_episode(task, group_id=group_id, sampling=sampling,
                           metadata={**EVAL_METADATA, "label": label}, finish=False)
        for task in tasks))
    correct = sum(r.reward >= 1.0 for r in results)
    return EvalReport(accuracy=correct / len(results), mean_reward=sum(r.reward for r in results) / len(results),
                      num_tasks=len(results), num_correct=correct,
                      num_failed=sum(r.error is not None for r in results), results=list(results))


def evaluate_sync(runner: AgentRunner, tasks: Sequence[Task], **kwargs) -> EvalReport:
    """`evaluate` for code without an event loop."""
    async def main() -> EvalReport:
        try:
            return await evaluate(runner, tasks, **kwargs)
        finally:
            await runner.aclose()
    return asyncio.run(main())
