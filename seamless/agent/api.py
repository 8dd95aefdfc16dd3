"""What an agent receives for one episode: where to send its LLM calls and how to sample.

An agent is `agent(task, ctx) -> str` (sync or async): it talks to `ctx.base_url` with
`ctx.api_key` through any OpenAI-compatible client and returns its final answer text. Shell
agents get the same fields as environment variables (`ctx.env()`). An agent may also supply its
own supervised warm-start data as a `warmup` attribute (a `WarmupFn`), which
`trainer.sft_warmup` uses; an agent without one runs with `trainer.sft_warmup.steps: 0`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Union

from seamless.agent.tasks import Task
from seamless.services.http import tls_context


AGENT_RETRIES = 6
"""Retries of an agent's `ctx.openai_client()` (the openai client's backoff: 0.5 s doubling to 8 s): with
the proxy's store timeout they span about a minute of Redis outage (4 spanned 30 s, with nothing spare)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters an agent passes on every LLM call of an episode."""

    temperature: float = 1.0
    max_tokens: int = 32
    top_p: float = 1.0

    @classmethod
    def greedy(cls, max_tokens: int = 32) -> Sampling:
        return cls(temperature=0.0, max_tokens=max_tokens, top_p=1.0)


@dataclass(frozen=True, slots=True)
class AgentContext:
    """One episode's session on the trajectory manager, plus the sampling parameters."""

    base_url: str
    """OpenAI base URL of this episode's session (ends in /v1)."""
    api_key: str
    session_id: str
    group_id: str
    sampling: Sampling = Sampling()
    model: str = "policy"
    max_turns: int = 4
    """Most LLM calls a multi-turn agent should make."""
    timeout_s: float = 120.0
    """The runner ends the episode after this long; agents may use it for their own client timeouts."""
    http: Any = field(default=None, repr=False, compare=False)
    """The runner's connection pool (`shared_http_client`) under `openai_client()`; None: its own."""

    def openai_client(self):
        """An `openai.AsyncOpenAI` on this session; it retries what the proxy did not record (the
        runner's `timeout_s` still bounds the episode)."""
        import openai

        # the runner's pool when it gave one: a client and a TCP connection per episode cost the
        # agents' side about a millisecond of CPU each (scripts/bench_episodes.py); otherwise a
        # pool of its own (agents close it), but not a TLS context of its own: building one took
        # 32 ms of CPU per client here, 4 s of every 128-episode step of the tiny recipe
        http = self.http or openai.DefaultAsyncHttpxClient(verify=tls_context(), timeout=self.timeout_s)
        # a 503 from the proxy (its Redis stalled or restarting, no server up) means the call was
        # not recorded, so a retry is safe and lets the episode ride the outage out instead of
        # failing; a 409 (session finished) says not to retry (x-should-retry: false)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=AGENT_RETRIES,
                                  timeout=self.timeout_s, http_client=http)

    def env(self, task: Task) -> dict[str, str]:
        """Environment variables a shell agent gets (the task without its answer)."""
        return {
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": self.api_key,
            "SEAMLESS_TASK": task.to_json(with_answer=False),
            "SEAMLESS_PROMPT": task.prompt,
            "SEAMLESS_SESSION_ID": self.session_id,
            "SEAMLESS_GROUP_ID": self.group_id,
            "SEAMLESS_MODEL": self.model,
            "SEAMLESS_TEMPERATURE": repr(self.sampling.temperature),
            "SEAMLESS_MAX_TOKENS": str(self.sampling.max_tokens),
            "SEAMLESS_TOP_P": repr(self.sampling.top_p),
            "SEAMLESS_MAX_TURNS": str(self.max_turns),
        }


def shared_http_client(timeout_s: float) -> Any:
    """An httpx client for the OpenAI clients of many episodes (`AgentContext.http`): closing an
    episode's client leaves it open; `close_pool()` closes it (the runner, when it is done)."""
    import openai

    class SharedPool(openai.DefaultAsyncHttpxClient):
        async def aclose(self) -> None:
            """Kept open: it is the runner's, not the episode's."""

        async def close_pool(self) -> None:
            await super().aclose()

    return SharedPool(verify=tls_context(), timeout=timeout_s)


@dataclass(frozen=True, slots=True)
class ScoredAnswer:
    """What an agent that scores its own episodes returns: an environment with its own rubric
    (a verifiers environment). Such an agent says so with a true `scores_itself` attribute; it
    gets the task with its reference answer (for the rubric: the model never sees it), and the
    runner takes `reward` instead of calling `rollout.reward`."""

    text: str
    """The final answer text."""
    reward: float


AgentFn = Callable[[Task, AgentContext], Union[str, ScoredAnswer, Awaitable[Union[str, ScoredAnswer]]]]
"""An agent: returns (or resolves to) its final answer text, or a `ScoredAnswer` when it scores itself."""

RewardFn = Callable[[Task, str], float]
"""A reward: the task (with its reference answer) and the agent's answer text -> a float."""

WarmupFn = Callable[[Task, Any], list[tuple[str, bool]]]
"""An agent's warm-start demonstration: (task, tokenizer) -> the text of one ideal episode as
pieces, each with whether the model learns to produce it (True) or is given it (False). Pieces are
tokenized one by one, so cut them only where the tokenizer cannot merge across (after
`<|im_end|>` or `assistant\\n`): the prompt tokens then equal those of the agent's real request."""
