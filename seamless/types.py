"""Typed records that cross the boundaries between seamless's parts.

The proxy records `Turn`s (one LLM call as tokens) in the store; when the main loop reads a
finished episode, the episode queue merges its turns into `TrainingSequence`s (`traces.merge.merge_turns`)
and hands back a `Trajectory`; the trainer turns sequences into tensors. These records hold plain
Python lists so the proxy and the store never need torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NO_VERSION = -1
"""Weight version of a token the model did not generate (prompt, tool output, template)."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One LLM call of an episode (one choice of it), exactly as the server saw and produced it."""

    session_id: str
    index: int
    """Order of the call within its session (0, 1, ...)."""
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    completion_logprobs: list[float]
    """Logprob of each completion token under the weights that produced it, as vLLM reported it."""
    weight_versions: list[int]
    """Weight version that produced each completion token."""
    finish_reason: str | None = None
    upstream: str = ""
    """URL of the rollout server that served the call."""
    # the call's clock (wall-clock seconds, time.time()); 0.0 where unknown. started -> sent is the
    # proxy's own part (session check, a paused pool, token-in); sent -> first token is vLLM's queue
    # and prefill (answered: its headers, after tokenizing); first token -> ended is generation
    started_at: float = 0.0
    """When the agent's request reached the proxy."""
    ended_at: float = 0.0
    """When the call's last token was in (and the call about to be recorded)."""
    sent_at: float = 0.0
    """When the proxy sent the request to the rollout server."""
    answered_at: float = 0.0
    """When the rollout server's response headers arrived."""
    first_token_at: float = 0.0
    """When the first generated token arrived (ended_at when none was generated)."""
    constraints: tuple[str, ...] = ()
    """The request keys under which the completion was sampled from something other than the
    policy's own distribution (structured outputs, logit_bias, allowed_token_ids, ...:
    `traces/constraints.py`); () for a free draw. Such tokens train only with
    `rollout.train_constrained`."""

    def __post_init__(self) -> None:
        n = len(self.completion_token_ids)
        assert len(self.completion_logprobs) == n and len(self.weight_versions) == n, (
            "completion ids, logprobs and weight versions must have one entry per token")


@dataclass(frozen=True, slots=True)
class TrainingSequence:
    """One branch of a merged episode: what the trainer learns from.

    All lists have one entry per token (length T). Tokens the model generated have loss_mask 1,
    their rollout logprob and weight version; prompt, tool and template tokens have loss_mask 0,
    logprob 0.0 and version NO_VERSION.
    """

    session_id: str
    token_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    weight_versions: list[int]
    reward: float = 0.0
    group_id: str | None = None
    """Episodes of one prompt share a group (GRPO normalizes rewards within it)."""
    task_id: str | None = None

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        assert len(self.loss_mask) == n and len(self.rollout_logprobs) == n and len(self.weight_versions) == n, (
            "token ids, loss mask, logprobs and weight versions must have one entry per token")

    @property
    def num_generated(self) -> int:
        return sum(self.loss_mask)

    @property
    def oldest_version(self) -> int:
        """The oldest weight version among generated tokens (NO_VERSION if none were generated)."""
        versions = [v for v, m in zip(self.weight_versions, self.loss_mask) if m and v != NO_VERSION]
        return min(versions) if versions else NO_VERSION


@dataclass(frozen=True, slots=True)
class Trajectory:
    """A finished episode: its turns and the training sequences merged from them."""

    session_id: str
    turns: list[Turn]
    sequences: list[TrainingSequence]
    reward: float = 0.0
    group_id: str | None = None
    task_id: str | None = None
    num_branches: int = 0
    """How many sequences started because a prompt did not extend an earlier one (drift/rewrite)."""
    metadata: dict[str, str] = field(default_factory=dict)
