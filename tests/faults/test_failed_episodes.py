"""Failed episodes never become training data, and a bad reward ends one episode, not the run."""

from __future__ import annotations

import pytest

from seamless.agent.api import AgentContext, Sampling
from seamless.agent.runner import AgentRunner, EpisodeResult, FailureWatch
from seamless.agent.tasks import Task
from seamless.errors import ServiceError
from seamless.traces.episodes import EpisodeQueue

pytestmark = pytest.mark.vllm

TASK = Task("add-7-5", "What is 7 + 5?", "12", {"a": "7", "op": "+", "b": "5"})
HERE = "tests.faults.test_failed_episodes"


def crashing_agent(task: Task, ctx: AgentContext) -> str:
    raise RuntimeError("the agent fell over")


def no_call_agent(task: Task, ctx: AgentContext) -> str:
    return "12"  # answers without asking the policy


def nan_reward(task: Task, answer: str) -> float:
    return float("nan")


def _run(proxy, agent: str, **kwargs) -> list[EpisodeResult]:
    runner = AgentRunner(proxy.url, proxy.admin_key, agent, concurrency=4, timeout_s=60,
                         sampling=Sampling(temperature=1.0, max_tokens=4), **kwargs)
    return runner.run_groups_sync([TASK], group_size=2)[0]


def test_failed_and_callless_episodes_are_finished_but_train_nothing(proxy, redis_server):
    crashed = _run(proxy, f"{HERE}:crashing_agent")
    no_calls = _run(proxy, f"{HERE}:no_call_agent")
    nan = _run(proxy, "math", reward_spec=f"{HERE}:nan_reward")
    good = _run(proxy, "math")
    assert all("fell over" in r.error for r in crashed)
    assert all(r.error is None and r.num_llm_calls == 0 for r in no_calls)
    assert all(r.reward == 0.0 and "returned nan (not a finite number)" in r.error for r in nan)
    assert all(r.error is None and r.num_llm_calls == 1 for r in good)

    queue = EpisodeQueue(redis_server.url, "test", consumer="fault-reader")
    try:
        for result in crashed + no_calls + nan:
            trajectory = queue.trajectory(result.session_id)
            assert trajectory.sequences == [] and trajectory.metadata["discarded"], result
        assert all(queue.trajectory(r.session_id).sequences for r in good)
    finally:
        queue.close()


def test_a_run_whose_episodes_mostly_fail_stops_naming_the_cause():
    watch = FailureWatch(window=8, min_episodes=8)
    ok = EpisodeResult("s", "g", "t", 1.0, "12", None, 1, 0.1, True)
    bad = EpisodeResult("s", "g", "t", 0.0, "", "crashed: ModuleNotFoundError: math2", 0, 0.1, True)
    watch.add([ok, bad, ok, bad])
    watch.add([ok, bad, ok, bad])  # half failed: not yet
    with pytest.raises(ServiceError, match=r"5 of the last 8 episodes failed .* ModuleNotFoundError: math2"):
        watch.add([bad])
