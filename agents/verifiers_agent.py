"""`verifiers:<env id>`: a verifiers environment as the agent, with its own rollout code and rubric.

The environment (`vf.load_environment(env_id)`: a module `env_id` with `-` read as `_`, from
agents/verifiers_envs/, the folders of $SEAMLESS_VERIFIERS_PATH, or installed in the venv) runs in
verifiers' own venv (.venv/verifiers, made by scripts/setup.sh; verifiers brings the openai-agents
SDK, whose module `agents` would shadow this package) as one long-lived process:
`verifiers_worker.py`. Each episode hands it the session's URL and key, the prompt in the
environment's format (its system prompt and few-shot messages, then the task's question), the
reference answer (for the rubric) and the sampling parameters; the worker runs `env.run_rollout`
and answers with the parsed answer and the rubric's reward, which seamless trains on.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from agents.venv_worker import running_worker, venv_python
from seamless.agent.api import AgentContext, ScoredAnswer
from seamless.agent.tasks import Task
from seamless.errors import ConfigError

PYTHON_ENV = "SEAMLESS_VERIFIERS_PYTHON"
"""Environment variable naming the python of verifiers' venv (default: .venv/verifiers/bin/python)."""
PATH_ENV = "SEAMLESS_VERIFIERS_PATH"
"""Extra folders (os.pathsep-separated) to find environment modules in."""
WORKER = Path(__file__).with_name("verifiers_worker.py")
ENVS = Path(__file__).with_name("verifiers_envs")
# whether `verifiers` and the environment's module are importable there, without importing them (50 ms)
_FIND = ("import importlib.util, sys; sys.path[:0] = sys.argv[2:]; "
         "print(*(importlib.util.find_spec(m) is not None for m in ('verifiers', sys.argv[1])))")


class VerifiersAgent:
    """The agent for `rollout.agent: verifiers:<env id>`."""

    scores_itself = True

    def __init__(self, env_id: str) -> None:
        if not env_id:
            raise ConfigError("rollout.agent 'verifiers:' names no environment; write verifiers:<env id>, "
                              "e.g. verifiers:tiny-arith (agents/verifiers_envs/tiny_arith.py)")
        self.env_id = env_id
        self.module = env_id.replace("-", "_").split("/")[-1]  # verifiers' own mapping (env_module_name)
        self.paths = [str(ENVS), *filter(None, os.environ.get(PATH_ENV, "").split(os.pathsep))]

    def __repr__(self) -> str:
        return f"VerifiersAgent({self.env_id!r})"

    def python(self) -> Path:
        python = venv_python(PYTHON_ENV, "verifiers")
        if python is None:
            raise ConfigError(f"rollout.agent 'verifiers:{self.env_id}' needs verifiers in its own venv, and "
                              f".venv/verifiers is missing: run scripts/setup.sh, or set {PYTHON_ENV} to the "
                              "python of a venv with verifiers==0.3.1")
        return python

    def check_runnable(self) -> None:
        """ConfigError unless verifiers and the environment's module are importable in its venv."""
        python = self.python()
        found = subprocess.run([str(python), "-P", "-c", _FIND, self.module, *self.paths], capture_output=True,
                               text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if found.stdout.split()[:1] != ["True"]:
            raise ConfigError(f"rollout.agent 'verifiers:{self.env_id}': verifiers is not installed in {python}; "
                              "run scripts/setup.sh (or pip install verifiers==0.3.1 there)")
        if found.stdout.split()[1:] != ["True"]:
            raise ConfigError(f"rollout.agent 'verifiers:{self.env_id}': no module {self.module!r} in {python}'s "
                              f"venv nor in {', '.join(self.paths)}; install the environment there, put it in "
                              f"agents/verifiers_envs/, or add its folder to {PATH_ENV}")

    def _worker(self):
        return running_worker([str(self.python()), "-P", str(WORKER), self.env_id, *self.paths], "verifiers",
                              handshake=True)

    def messages(self, task: Task) -> list[dict]:
        """The prompt in the environment's format, as verifiers builds it from a dataset's question."""
        hello = self._worker().hello
        system = [{"role": "system", "content": hello["system_prompt"]}] if hello["system_prompt"] else []
        return [*system, *hello["few_shot"], {"role": "user", "content": task.prompt}]

    async def __call__(self, task: Task, ctx: AgentContext) -> ScoredAnswer:
        worker = await asyncio.to_thread(self._worker)  # the first call starts it (seconds)
        request = {"base_url": ctx.base_url, "api_key": ctx.api_key, "model": ctx.model, "task_id": task.task_id,
                   "prompt": self.messages(task), "answer": task.answer, "temperature": ctx.sampling.temperature,
                   "top_p": ctx.sampling.top_p, "max_tokens": ctx.sampling.max_tokens, "timeout_s": ctx.timeout_s}
        reply = await asyncio.wrap_future(worker.submit(request))
        return ScoredAnswer(text=reply["answer"], reward=reply["reward"])

    def warmup(self, task: Task, tokenizer) -> list[tuple[str, bool]]:
        """Warm-start data: the environment's prompt for the task, then `answer<|im_end|>`."""
        from seamless.run.warmup import IM_END, render_chat

        return [(render_chat(tokenizer, self.messages(task), None, True), False), (task.answer + IM_END, True)]
