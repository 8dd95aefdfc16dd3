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
import atexit
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from agents.calculator_agent import warmup as calculator_warmup
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
    if os.environ.get(PYTHON_ENV):
        candidates = [Path(os.environ[PYTHON_ENV])]
    else:
        candidates = [Path(sys.prefix) / "openai-agents" / "bin" / "python",
                      Path(__file__).resolve().parents[1] / ".venv" / "openai-agents" / "bin" / "python"]
    for python in candidates:
        if python.exists():
            return python
    raise AgentFailed(f"the openai-agents SDK's venv is missing (looked for {', '.join(map(str, candidates))}); "
                      f"scripts/setup.sh makes it, or set {PYTHON_ENV} to its python")


class _Worker:
    """The SDK process: episodes go in as JSON lines, answers come back matched by id."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours on its path
        self.process = subprocess.Popen([str(sdk_python()), "-P", str(WORKER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, name="openai-sdk-worker", daemon=True).start()

    def submit(self, request: dict) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            request_id = next(self.ids)
            self.pending[request_id] = future
            self.process.stdin.write(json.dumps({**request, "id": request_id}) + "\n")
            self.process.stdin.flush()
        return future

    def _read(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self.lock:
                future = self.pending.pop(reply["id"], None)
            if future is None or future.done():  # its episode was cancelled (timeout)
                continue
            if "error" in reply:
                future.set_exception(AgentFailed(f"openai-agents episode failed: {reply['error']}"))
            else:
                future.set_result(reply["answer"])
        with self.lock:  # the process ended: nothing pending will be answered
            pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(AgentFailed(f"the openai-agents worker exited ({self.process.poll()})"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _running_worker() -> _Worker:
    global _worker
    with _worker_lock:
        if _worker is None or _worker.process.poll() is not None:
            _worker = _Worker()
            atexit.register(_worker.close)
        return _worker


async def run(task: Task, ctx: AgentContext) -> str:
    request = {"base_url": ctx.base_url, "api_key": ctx.api_key, "model": ctx.model, "prompt": task.prompt,
               "temperature": ctx.sampling.temperature, "top_p": ctx.sampling.top_p,
               "max_tokens": ctx.sampling.max_tokens, "max_turns": ctx.max_turns, "timeout_s": ctx.timeout_s}
    worker = await asyncio.to_thread(_running_worker)  # the first call starts it (seconds)
    return await asyncio.wrap_future(worker.submit(request))


def warmup(task: Task, tokenizer) -> list[tuple[str, bool]]:
    """The `calculator` example's warm-start episode, with the SDK's tool in the prompt."""
    return calculator_warmup(task, tokenizer, tools=[SDK_TOOL])


run.warmup = warmup
