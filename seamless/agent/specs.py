"""Turning a recipe's `rollout.agent` / `rollout.reward` strings into callables.

An agent spec is one of:
  - a name from `agents.AGENTS` (`math`, `calculator`);
  - `kind:argument` for a kind in `agents.KINDS` (`verifiers:<env id>`: a verifiers environment);
  - `package.module:function`, a Python callable `(task, ctx) -> str`, sync or async;
  - anything else: a shell command, run with `/bin/sh -c`, that reads OPENAI_BASE_URL,
    OPENAI_API_KEY and SEAMLESS_TASK (JSON) from its environment and prints its answer.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import signal
import sys
from pathlib import Path

from seamless.agent.api import AgentContext, AgentFn, RewardFn, ScoredAnswer, WarmupFn
from seamless.agent.tasks import Task
from seamless.errors import ConfigError, SeamlessError

_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_STDERR_TAIL = 500
MAX_ANSWER_BYTES = 64 * 1024
"""Most a shell agent may print (its answer); more fails the episode. An answer is the final text,
not a log: 6.7 MB per episode once took a run to 1.66 GB and its samples file to 213 MB."""
_PLAIN_WORD = re.compile(r"^[\w.+-]+$")


class AgentFailed(SeamlessError):
    """An agent ended without an answer (non-zero exit, wrong return type); the message says how."""


def agents_package():
    """The top-level `agents` package; found next to `seamless/` when not on sys.path."""
    try:
        return importlib.import_module("agents")
    except ImportError:
        # seamless's package metadata installs only `seamless`; the example agents live beside it
        sys.path.append(str(Path(__file__).resolve().parents[1]))
        return importlib.import_module("agents")


def import_callable(spec: str, what: str):
    """`module:attr.path` -> the object; ConfigError naming `what` (the recipe key) otherwise."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import module {module_name!r} of {spec!r} ({exc}); "
                          "check the name and that its folder is on PYTHONPATH") from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ConfigError(f"{what}: {module_name!r} has no {attr_path!r}; write module:function")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ConfigError(f"{what}: {spec!r} is not callable")
    return obj


def resolve_agent(spec: str) -> AgentFn:
    """The agent a spec names, as a callable `(task, ctx)`; async when it does I/O itself."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("rollout.agent is empty; write math, calculator, module:function or a command")
    if spec in agents_package().AGENTS:
        return import_callable(agents_package().AGENTS[spec], "rollout.agent")
    kind, colon, argument = spec.partition(":")
    if colon and kind in agents_package().KINDS:
        return import_callable(agents_package().KINDS[kind], "rollout.agent")(argument.strip())
    if _CALLABLE_SPEC.match(spec):
        return import_callable(spec, "rollout.agent")
    return ShellAgent(spec)


def check_agent(spec: str, reward_spec: str | None) -> AgentFn:
    """The agent of `rollout.agent`, checked before anything starts: ConfigError when it cannot
    run here (its `check_runnable`), or when `rollout.reward` is set for an agent that scores itself."""
    agent = resolve_agent(spec)
    check = getattr(agent, "check_runnable", None)
    if callable(check):
        check()  # a typo'd agent name would otherwise run as a shell command, and fail each episode
    if getattr(agent, "scores_itself", False) and reward_spec:
        raise ConfigError(f"rollout.agent {spec!r} scores its own episodes (its environment's rubric); "
                          f"unset rollout.reward ({reward_spec!r})")
    resolve_reward(reward_spec)
    return agent


def resolve_warmup(spec: str) -> WarmupFn:
    """The warm-start data the agent `spec` names supplies (its `warmup` attribute)."""
    warmup = getattr(resolve_agent(spec), "warmup", None)
    if not callable(warmup):
        raise ConfigError(f"rollout.agent {spec!r} supplies no warm-start data (an agent function's `warmup` "
                          "attribute, see agents/README.md); set trainer.sft_warmup.steps=0 or give it one")
    return warmup


def resolve_reward(spec: str | None) -> RewardFn:
    """The reward function a spec names; None gives the final-integer verifier."""
    return import_callable(spec or agents_package().DEFAULT_REWARD, "rollout.reward")


async def call_agent(agent: AgentFn, task: Task, ctx: AgentContext) -> str | ScoredAnswer:
    """Run an agent to its answer. Sync callables run in a worker thread so they cannot block the
    event loop (a timed-out thread is abandoned: Python cannot stop it; its session is finished)."""
    if inspect.iscoroutinefunction(agent) or inspect.iscoroutinefunction(getattr(agent, "__call__", None)):
        result = await agent(task, ctx)
    else:
        result = await asyncio.to_thread(agent, task, ctx)
        if inspect.isawaitable(result):
            result = await result
    if isinstance(result, ScoredAnswer) and getattr(agent, "scores_itself", False):
        return result
    if not isinstance(result, str):
        raise AgentFailed(f"agent returned a {type(result).__name__}, not the answer text (str)")
    return result


class ShellAgent:
    """An agent that is a shell command: its stdout (stripped) is the answer."""

    def __init__(self, command: str):
        self.command = command

    def __repr__(self) -> str:
        return f"ShellAgent({self.command!r})"

    def check_runnable(self) -> None:
        """ConfigError when the command's program is not found (a typo'd agent name such as `math2`
        is a shell command too, and would fail every episode); commands that start otherwise (a
        variable, a path, shell syntax) are left to run."""
        import difflib
        import shlex
        import subprocess

        try:
            program = shlex.split(self.command)[0]
        except (ValueError, IndexError):
            return
        if not _PLAIN_WORD.match(program):
            return
        found = subprocess.run(["/bin/sh", "-c", 'command -v "$1"', "sh", program], capture_output=True).returncode
        if found != 0:
            names = sorted(agents_package().AGENTS)
            close = difflib.get_close_matches(program, names, n=1)
            raise ConfigError(f"rollout.agent {self.command!r} is not an agent name ({', '.join(names)}), not "
                              f"module:function, and {program!r} is not a command on PATH"
                              + (f"; did you mean {close[0]}?" if close else ""))

    async def __call__(self, task: Task, ctx: AgentContext) -> str:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", self.command, env={**os.environ, **ctx.env(task)},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)  # own group: kill its children too
        out = asyncio.ensure_future(_read_capped(process.stdout, MAX_ANSWER_BYTES))
        err = asyncio.ensure_future(_read_tail(process.stderr, _STDERR_TAIL))
        try:
            stdout, stderr = await asyncio.gather(out, err)
            await process.wait()
        except BaseException:  # timeout, too much output or shutdown: leave no process behind
            _kill_group(process.pid)
            for reader in (out, err):
                reader.cancel()
            await asyncio.gather(out, err, return_exceptions=True)
            # what the killed command left in its pipes is read, or wait() never sees them close
            for stream in (process.stdout, process.stderr):
                while await stream.read(65536):
                    pass
            await process.wait()
            raise
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
            raise AgentFailed(f"command exited with status {process.returncode}"
                              + (f"; stderr: {tail}" if tail else ""))
        return stdout.decode(errors="replace").strip()


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """The whole stream, or AgentFailed once it passes `limit` bytes (the caller kills the agent)."""
    data = bytearray()
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > limit:
            raise AgentFailed(f"printed more than {limit} bytes on stdout (MAX_ANSWER_BYTES); a shell agent "
                              "prints only its final answer there (logs go to stderr)")
    return bytes(data)


async def _read_tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    """The last `keep` bytes of the stream, read to its end (stderr may be long; only its tail is kept)."""
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-keep:]
    return tail


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
