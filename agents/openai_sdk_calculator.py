"""`openai-agents`: the calculator task solved by an agent written with the openai-agents SDK.

The agent itself (`openai_sdk_worker.py`: an SDK `Agent` with a `@function_tool` calculator on the
SDK's default Responses model) runs in the SDK's own venv, as one long-lived process shared by all
episodes of this Python process; `run` hands it one episode (the session's URL and key, the
prompt, the sampling parameters) and awaits the answer. Its calls reach the proxy's
`/v1/responses`, which runs them on the chat path and records them like any other agent's.

The warm-start data is the `calculator` example's, rendered with the tool exactly as the proxy
hands the SDK's tool to vLLM (tests/agents checks the recorded prompt against it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agents.calculator_agent import warmup as calculator_warmup
from agents.venv_worker import running_worker, venv_python
from seamless.agent.api import AgentContext
from seamless.agent.specs import AgentFailed
from seamless.agent.tasks import Task

PYTHON_ENV = "SEAMLESS_OPENAI_AGENTS_PYTHON"
"""Environment variable naming the SDK venv's python (default: .venv/openai-agents/bin/python)."""
WORKER = Path(__file__).with_name("openai_sdk_worker.py")
# the SDK's tool as vLLM's chat template gets it: the SDK's schema of `calculator(expression: str)`,
# strict false; vLLM renders the fields in its own order (name, description, parameters, strict)
SDK_TOOL = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
    "parameters": {"properties": {"expression": {"title": "Expression", "type": "string"}},
                   "required": ["expression"], "title": "calculator_args", "type": "object"},
    "strict": False}}


def sdk_python() -> Path:
    """The python of the SDK's venv."""
    python = venv_python(PYTHON_ENV, "openai-agents")
    if python is None:
        raise AgentFailed("the openai-agents SDK's venv is missing (.venv/openai-agents); "
                          f"scripts/setup.sh makes it, or set {PYTHON_ENV} to its python")
    return python


async def run(task: Task, ctx: AgentContext) -> str:
    request = {"base_url": ctx.base_url, "api_key": ctx.api_key, "model": ctx.model, "prompt": task.prompt,
               "temperature": ctx.sampling.temperature, "top_p": ctx.sampling.top_p,
               "max_tokens": ctx.sampling.max_tokens, "max_turns": ctx.max_turns, "timeout_s": ctx.timeout_s}
    # the first call starts it (seconds)
    worker = await asyncio.to_thread(running_worker, [str(sdk_python()), "-P", str(WORKER)], "openai-agents")
    return (await asyncio.wrap_future(worker.submit(request)))["answer"]


def warmup(task: Task, tokenizer) -> list[tuple[str, bool]]:
    """The `calculator` example's warm-start episode, with the SDK's tool in the prompt."""
    return calculator_warmup(task, tokenizer, tools=[SDK_TOOL])


run.warmup = warmup
