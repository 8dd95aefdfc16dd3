"""AgentRunner against the session's real proxy + vLLM server on the tiny model."""

import asyncio
import sys
import time

import pytest

from seamless.agent.api import AgentContext, Sampling, ScoredAnswer
from seamless.agent.runner import AgentRunner, Slots
from seamless.agent.tasks import Task
from seamless.agent.evaluation import evaluate
from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm

TASK = Task("add-7-5", "What is 7 + 5?", "12", {"a": "7", "op": "+", "b": "5"})
HERE = "tests.agents.test_runner"


# agents given to the runner as module:function specs
def crashing_agent(task: Task, ctx: AgentContext) -> str:
    raise RuntimeError("the agent fell over")


async def sleeping_agent(task: Task, ctx: AgentContext) -> str:
    await asyncio.sleep(60)
    return "never"


def knows_the_answer(task: Task, ctx: AgentContext) -> str:
    assert task.answer == ""  # agents never see the reference answer
    return f"I think it is {task.prompt.count('7') * 12}"


def returns_a_number(task: Task, ctx: AgentContext):
    return 12


class ScoresItself:
    """An agent that scores its own episodes (as an environment with a rubric does)."""

    scores_itself = True

    def __call__(self, task: Task, ctx: AgentContext) -> ScoredAnswer:
        return ScoredAnswer(text=f"the answer is {task.answer}", reward=0.25)  # it alone sees the answer


scores_itself = ScoresItself()


def returns_a_scored_answer(task: Task, ctx: AgentContext) -> ScoredAnswer:
    return ScoredAnswer(text="12", reward=1.0)  # not an agent that scores itself: refused


def _runner(proxy, agent: str, **kwargs) -> AgentRunner:
    kwargs.setdefault("sampling", Sampling(temperature=1.0, max_tokens=6))
    return AgentRunner(proxy.url, proxy.admin_key, agent, concurrency=kwargs.pop("concurrency", 4),
                       timeout_s=kwargs.pop("timeout_s", 60), **kwargs)


def test_math_group_shares_a_group_id_posts_rewards_and_finishes(proxy):
    runner = _runner(proxy, "math", sampling=Sampling(temperature=0.7, max_tokens=5, top_p=0.95))
    [group] = runner.run_groups_sync([TASK], group_size=3)
    admin = Admin(proxy)
    assert len({r.session_id for r in group}) == 3 and len({r.group_id for r in group}) == 1
    for result in group:
        assert result.error is None and result.finished and result.num_llm_calls == 1
        assert result.reward in (0.0, 1.0) and result.task_id == TASK.task_id
        trajectory = admin.trajectory(result.session_id)
        assert trajectory["status"] == "finished" and trajectory["reward"] == result.reward
        assert (trajectory["group_id"], trajectory["task_id"]) == (result.group_id, TASK.task_id)
        request = trajectory["turns"][0]["request"]
        assert (request["temperature"], request["max_tokens"], request["top_p"]) == (0.7, 5, 0.95)
        assert len(trajectory["turns"][0]["completion_token_ids"]) <= 5


def test_a_group_is_made_and_finished_in_batch_and_the_batch_routes_refuse_bad_input(proxy):
    admin = Admin(proxy)

    def sessions_open() -> int:
        return int(admin.get("/metrics").text.split("\nseamless_proxy_sessions_open ")[1].split()[0])

    before = sessions_open()
    [group] = _runner(proxy, f"{HERE}:knows_the_answer").run_groups_sync([TASK], 4)
    assert sessions_open() == before and all(r.finished and r.times is not None for r in group)
    assert len({r.session_id for r in group}) == 4 and len({r.group_id for r in group}) == 1
    for result in group:
        trajectory = admin.trajectory(result.session_id)
        assert (trajectory["status"], trajectory["reward"], trajectory["group_id"]) == ("finished", 1.0, result.group_id)
    assert admin.post("/sessions/batch", {"count": 0}).status_code == 400
    assert admin.post("/sessions/finish", {"episodes": [{"reward": 1}]}).status_code == 400
    assert admin.post("/sessions/finish", {"episodes": [{"session_id": "nope", "reward": 1}]}).status_code == 404
    one = admin.post("/sessions/batch", {"count": 1}).json()["sessions"][0]
    bad = admin.post("/sessions/finish", {"episodes": [{"session_id": one["session_id"], "reward": "high"}]})
    assert bad.status_code == 400 and admin.trajectory(one["session_id"])["status"] == "open"


def test_crash_timeout_and_bad_return_give_reward_zero_with_a_reason(proxy, caplog):
    tasks = [TASK]
    started = time.monotonic()
    crash = _runner(proxy, f"{HERE}:crashing_agent").run_groups_sync(tasks, 2)[0]
    slow = _runner(proxy, f"{HERE}:sleeping_agent", timeout_s=0.5).run_groups_sync(tasks, 2)[0]
    bad = _runner(proxy, f"{HERE}:returns_a_number").run_groups_sync(tasks, 1)[0]
    assert time.monotonic() - started < 15
    assert all(r.reward == 0.0 and "RuntimeError: the agent fell over" in r.error for r in crash)
    assert all(r.reward == 0.0 and "timed out after 0.5 s" in r.error for r in slow)
    assert "returned a int, not the answer text" in bad[0].error
    admin = Admin(proxy)
    for result in crash + slow + bad:
        trajectory = admin.trajectory(result.session_id)
        assert trajectory["status"] == "finished" and trajectory["reward"] == 0.0
    assert "fell over" in caplog.text and "timed out" in caplog.text


def test_sync_callable_scored_correct(proxy):
    [group] = _runner(proxy, f"{HERE}:knows_the_answer").run_groups_sync([TASK], 2)
    assert [r.reward for r in group] == [1.0, 1.0] and group[0].answer == "I think it is 12"
    assert group[0].num_llm_calls == 0


def test_an_agent_that_scores_itself_gets_the_answer_and_its_reward_is_taken(proxy):
    [group] = _runner(proxy, f"{HERE}:scores_itself").run_groups_sync([TASK], 2)
    assert [(r.reward, r.answer, r.error) for r in group] == [(0.25, "the answer is 12", None)] * 2
    assert Admin(proxy).trajectory(group[0].session_id)["reward"] == 0.25
    [[refused]] = _runner(proxy, f"{HERE}:returns_a_scored_answer").run_groups_sync([TASK], 1)
    assert refused.reward == 0.0 and "returned a ScoredAnswer, not the answer text" in refused.error


def test_shell_command_agent_uses_the_session_url_from_its_environment(proxy):
    script = ("import json, os, openai; task = json.loads(os.environ['SEAMLESS_TASK']); "
              "assert 'answer' not in task; reply = openai.OpenAI().chat.completions.create("
              "model=os.environ['SEAMLESS_MODEL'], messages=[{'role': 'user', 'content': task['prompt']}], "
              "max_tokens=int(os.environ['SEAMLESS_MAX_TOKENS']), "
              "temperature=float(os.environ['SEAMLESS_TEMPERATURE'])); print('12')")
    command = f"{sys.executable} -c \"{script}\""
    [group] = _runner(proxy, command, sampling=Sampling(temperature=0.0, max_tokens=3)).run_groups_sync([TASK], 1)
    assert group[0].error is None and group[0].reward == 1.0 and group[0].num_llm_calls == 1
    request = Admin(proxy).trajectory(group[0].session_id)["turns"][0]["request"]
    assert request["max_tokens"] == 3 and request["messages"][0]["content"] == TASK.prompt


def test_shell_command_failures_and_timeouts_end_cleanly(proxy, tmp_path):
    marker = tmp_path / "pid"
    failed = _runner(proxy, "echo oops >&2; exit 3").run_groups_sync([TASK], 1)[0][0]
    assert failed.reward == 0.0 and "exited with status 3; stderr: oops" in failed.error
    started = time.monotonic()
    slow = _runner(proxy, f"sleep 30 & echo $! > {marker}; wait", timeout_s=0.5).run_groups_sync([TASK], 1)[0][0]
    assert time.monotonic() - started < 5 and "timed out" in slow.error
    pid = int(marker.read_text())
    assert not _alive(pid), "the command's child process outlived the episode"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_concurrency_limit_holds(proxy):
    runner = _runner(proxy, f"{HERE}:knows_the_answer", concurrency=2)
    active, peak = 0, 0
    original = runner.agent

    def counting(task, ctx):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        time.sleep(0.05)
        active -= 1
        return original(task, ctx)

    runner.agent = counting
    groups = runner.run_groups_sync([TASK] * 3, group_size=2)
    assert peak <= 2 and sum(len(g) for g in groups) == 6
    # a group larger than the limit is admitted an episode at a time
    groups = runner.run_groups_sync([TASK] * 2, group_size=3)
    assert peak <= 2 and sum(len(g) for g in groups) == 6


def test_a_group_starts_together_and_slots_go_first_come_first_served():
    async def scenario():
        slots = Slots(4)
        await slots.take(3)
        order = []

        async def taker(name, count):
            await slots.take(count)
            order.append(name)

        group = asyncio.create_task(taker("group of 2", 2))
        await asyncio.sleep(0)
        single = asyncio.create_task(taker("single", 1))
        await asyncio.sleep(0)
        assert order == [] and slots.free == 1, "a single slot is free, but the group came first"
        slots.give()
        await asyncio.sleep(0)
        assert order == ["group of 2"] and slots.free == 0
        slots.give()
        await asyncio.gather(group, single)
        assert order == ["group of 2", "single"] and slots.free == 0

        # a taker cancelled while waiting keeps nothing, and the one behind it is admitted
        waiting = asyncio.create_task(taker("cancelled", 2))
        behind = asyncio.create_task(taker("behind", 1))
        await asyncio.sleep(0)
        waiting.cancel()
        slots.give()
        await behind
        assert order[-1] == "behind" and slots.free == 0
        with pytest.raises(ValueError, match="cannot take 5 of 4"):
            await slots.take(5)

    asyncio.run(scenario())


def test_a_group_cancelled_as_it_is_admitted_gives_every_slot_back(proxy):
    runner = _runner(proxy, f"{HERE}:sleeping_agent", concurrency=4)

    async def scenario(cancel_after_start: bool):
        _, slots = runner._loop_state()
        group = asyncio.create_task(runner.run_group(TASK, 3))
        deadline = time.monotonic() + 60
        # polling every loop turn: the group is seen holding its slots before its episodes' first step
        while slots.free == 4 and time.monotonic() < deadline:
            await asyncio.sleep(0)
        assert slots.free == 1, "the group took its 3 slots at once"
        if cancel_after_start:
            await asyncio.sleep(0.2)  # the episodes are inside the (sleeping) agent
        group.cancel()
        with pytest.raises(asyncio.CancelledError):
            await group
        assert slots.free == 4
        await runner.aclose()

    asyncio.run(scenario(cancel_after_start=False))
    asyncio.run(scenario(cancel_after_start=True))


def test_calculator_agent_through_the_real_proxy_ends_without_tool_calls(proxy):
    runner = _runner(proxy, "calculator", max_turns=3, sampling=Sampling(temperature=0.0, max_tokens=8))
    [group] = runner.run_groups_sync([TASK], 1)
    result = group[0]
    assert result.error is None and 1 <= result.num_llm_calls <= 3
    request = Admin(proxy).trajectory(result.session_id)["turns"][0]["request"]
    assert request["tools"][0]["function"]["name"] == "calculator"


def test_evaluation_is_greedy_tagged_and_not_finished(proxy):
    runner = _runner(proxy, "math")
    tasks = [TASK, Task("sub-9-2", "What is 9 - 2?", "7")]

    async def twice():
        try:
            return await evaluate(runner, tasks, max_tokens=4), await evaluate(runner, tasks, max_tokens=4)
        finally:
            await runner.aclose()

    first, second = asyncio.run(twice())
    assert first.num_tasks == 2 and 0.0 <= first.accuracy <= 1.0 and first.num_failed == 0
    assert [r.answer for r in first.results] == [r.answer for r in second.results]  # greedy
    admin = Admin(proxy)
    for result in first.results:
        trajectory = admin.trajectory(result.session_id)
        assert trajectory["status"] != "finished" and trajectory["metadata"]["eval"] == "1"
        assert trajectory["turns"][0]["request"]["temperature"] == 0.0


def test_proxy_down_raises_a_service_error():
    from seamless.errors import ServiceError

    runner = AgentRunner("http://127.0.0.1:9", "k", "math", timeout_s=1)
    with pytest.raises(ServiceError, match="did not answer POST /sessions"):
        runner.run_groups_sync([TASK], 1)
