"""Redis stopped (SIGSTOP) while a run's episodes call the policy and the main loop collects them:
the agents' calls are retried, the loop's reads are retried (and logged), and the step gets every
episode with exactly the calls the agents received.

The episodes are held at a gate until Redis is stopped, and Redis stays stopped until the proxy
has refused their calls; then, once the group finished (as the loop would), Redis is stopped again
until the loop's read has timed out and logged a retry: the order of events is arranged."""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace

import pytest

from agents.math_agent import run as math_agent
from seamless.agent.api import AgentContext, Sampling
from seamless.agent.runner import AgentRunner, BackgroundGroups
from seamless.agent.tasks import Task
from seamless.config import RolloutConfig
from seamless.run.loop import Progress, _collect
from seamless.traces.episodes import EpisodeQueue
from tests.faults.helpers import wait_for
from tests.faults.test_stalls import Stalled, _errors

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GATE = threading.Event()
ARRIVED: list[str] = []


async def gated_agent(task: Task, ctx: AgentContext) -> str:
    """The math agent, once the test opens the gate."""
    ARRIVED.append(ctx.session_id)
    await asyncio.to_thread(GATE.wait, 60)
    return await math_agent(task, ctx)


def test_the_loop_and_its_agents_ride_out_a_redis_stall(stall_proxy, own_redis, caplog):
    caplog.set_level(logging.WARNING, logger="seamless.run")
    GATE.clear()
    ARRIVED.clear()
    runner = AgentRunner(stall_proxy.url, stall_proxy.admin_key, f"{__name__}:gated_agent", concurrency=2,
                         timeout_s=90, sampling=Sampling(temperature=1.0, max_tokens=4))
    queue = EpisodeQueue(own_redis.url, "stall", socket_timeout_s=1.0, outage_s=60)
    parts = SimpleNamespace(recipe=SimpleNamespace(rollout=RolloutConfig(batch_size=1, group_size=2)),
                            episodes=queue)
    collected: dict = {}
    collector = threading.Thread(target=lambda: collected.setdefault("step", _collect(parts, Progress())))
    try:
        with BackgroundGroups(runner) as groups:
            groups.start(Task("add-7-5", "What is 7 + 5?", "12", {}), group_size=2)
            wait_for(lambda: len(ARRIVED) == 2, 60, "both episodes have a session and wait at the gate")
            with Stalled(own_redis):  # the agents call the policy; the proxy cannot record
                GATE.set()
                wait_for(lambda: _errors(stall_proxy, "store_unavailable") >= 2, 30, "the proxy refused both calls")
            [group] = groups.wait_finished(timeout_s=90)  # their retries went through
        # as in the loop, the step collects once the scheduler counted the group finished
        with Stalled(own_redis):
            collector.start()
            wait_for(lambda: "Redis did not answer XREADGROUP" in caplog.text, 30, "the loop logged a retry")
        collector.join(60)
    finally:
        GATE.set()
        queue.close()
    assert all(e.error is None and e.num_llm_calls == 1 and e.finished for e in group), group
    entries, trajectories = collected["step"]
    assert sorted(e.session_id for e in entries) == sorted(ARRIVED)
    # each episode holds the one call its agent received (the refused tries are voided) and trains
    assert all(len(t.turns) == 1 and t.sequences for t in trajectories), trajectories
    assert "Redis answered XREADGROUP again" in caplog.text
