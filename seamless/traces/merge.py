"""Merge the turns of one episode into training sequences by longest-prefix matching over token ids.

An agent's next prompt usually contains its previous prompt and completion verbatim, followed by
new tokens (tool output, a user message, template tokens). Then one sequence grows: the new
prompt tokens join with loss mask 0, the new completion with loss mask 1. When a prompt does not
extend any sequence exactly — re-tokenization drift (the text of a completion tokenizes
differently when re-rendered), or an agent that rewrote or truncated its history — a new branch
starts from that prompt, so the trainer never learns from tokens the model did not produce in
that context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seamless.types import NO_VERSION, TrainingSequence, Turn


@dataclass
class _Branch:
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)

    def extend(self, ids: list[int], mask: int, logprobs: list[float] | None = None,
               versions: list[int] | None = None) -> None:
        self.token_ids += ids
        self.loss_mask += [mask] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.versions += versions if versions is not None else [NO_VERSION] * len(ids)


def _is_prefix(prefix: list[int], of: list[int]) -> bool:
    return len(prefix) <= len(of) and of[: len(prefix)] == prefix


def merge_turns(turns: list[Turn], reward: float = 0.0, group_id: str | None = None,
                task_id: str | None = None, train_constrained: bool = False) -> tuple[list[TrainingSequence], int]:
    """Training sequences of an episode, and how many branches started after the first.

    Each turn extends the longest existing sequence that is a prefix of its prompt; if none is,
    the turn starts a new branch (counted). Turns are taken in their recorded order. A turn
    sampled under constraints (`Turn.constraints`) joins as context (loss mask 0, like a prompt)
    unless `train_constrained`: the policy did not choose those tokens freely.
    """
    branches: list[_Branch] = []
    new_branches = 0
    for turn in sorted(turns, key=lambda t: t.index):
        prompt = turn.prompt_token_ids
        matches = [b for b in branches if _is_prefix(b.token_ids, prompt)]
        if matches:
            branch = max(matches, key=lambda b: len(b.token_ids))
            branch.extend(prompt[len(branch.token_ids):], mask=0)
        else:
            if branches:
                new_branches += 1
            branch = _Branch()
            branches.append(branch)
            branch.extend(prompt, mask=0)
        if turn.constraints and not train_constrained:
            branch.extend(turn.completion_token_ids, mask=0)
        else:
            branch.extend(turn.completion_token_ids, mask=1, logprobs=list(turn.completion_logprobs),
                          versions=list(turn.weight_versions))
    session_id = turns[0].session_id if turns else ""
    sequences = [TrainingSequence(session_id=session_id, token_ids=b.token_ids, loss_mask=b.loss_mask,
                                  rollout_logprobs=b.logprobs, weight_versions=b.versions,
                                  reward=reward, group_id=group_id, task_id=task_id)
                 for b in branches]
    return sequences, new_branches
