"""A shell agent's output is bounded: an answer is its final text, not a log."""

from __future__ import annotations

import asyncio

import pytest

from seamless.agent.api import AgentContext
from seamless.agent.specs import MAX_ANSWER_BYTES, AgentFailed, ShellAgent
from seamless.agent.tasks import Task

TASK = Task("t", "What is 7 + 5?", "12", {})
CTX = AgentContext(base_url="http://127.0.0.1:9/v1", api_key="k", session_id="s", group_id="g")


def test_a_shell_agent_that_prints_too_much_fails_its_episode_and_is_stopped():
    with pytest.raises(AgentFailed, match=f"printed more than {MAX_ANSWER_BYTES} bytes"):
        asyncio.run(asyncio.wait_for(ShellAgent("yes 12")(TASK, CTX), 30))  # never ends by itself


def test_a_long_stderr_keeps_its_tail_and_a_short_answer_passes():
    command = "head -c 300000 /dev/zero | tr '\\0' x >&2; echo ' the end' >&2; echo 12"
    assert asyncio.run(ShellAgent(command)(TASK, CTX)) == "12"
    with pytest.raises(AgentFailed, match="stderr: x+ the end$"):
        asyncio.run(ShellAgent(command + "; exit 3")(TASK, CTX))
