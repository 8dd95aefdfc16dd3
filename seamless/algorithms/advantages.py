"""Advantage estimators: GRPO (and Dr.GRPO), RLOO, REINFORCE++ and GAE for PPO.

Sequence-level estimators take rewards (B,) and group indices (B,) and return (B,); use
`sequence_to_token` to broadcast onto the generated tokens. Token-level ones return (B, T).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seamless.algorithms.losses import masked_whiten


def group_ids_to_index(group_ids: Sequence[object | None]) -> torch.Tensor:
    """Map arbitrary group keys to 0..G-1, in order of first appearance: (B,) long.

    A sequence without a group (None) is a group of its own.
    """
    index: dict[object, int] = {}
    out = []
    for i, key in enumerate(group_ids):
        key = ("__alone__", i) if key is None else key
        out.append(index.setdefault(key, len(index)))
    return torch.tensor(out, dtype=torch.long)


def group_stats(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence (count, sum, sum of squares) of its group: each (B,)."""
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, groups, torch.ones_like(rewards))
    total = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, groups, rewards)
    squares = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, groups, rewards ** 2)
    return count[groups], total[groups], squares[groups]


def grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor, norm_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO: reward minus its group's mean, divided by the group's std when `norm_by_std`.

    rewards (B,), groups (B,) long. norm_by_std=False is Dr.GRPO (no std bias toward easy or
    hard prompts). The std is the unbiased one (n - 1), as in the GRPO paper's reference code;
    a group of one has advantage 0.
    """
    count, total, squares = group_stats(rewards, groups)
    mean = total / count
    adv = rewards - mean
    if norm_by_std:
        var = (squares - count * mean ** 2) / (count - 1).clamp(min=1)
        adv = adv / (var.clamp(min=0).sqrt() + eps)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


def rloo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO: reward minus the mean reward of the other members of its group: (B,).

    A group of one has no baseline and gets advantage 0.
    """
    count, total, _ = group_stats(rewards, groups)
    baseline = (total - rewards) / (count - 1).clamp(min=1)
    return torch.where(count > 1, rewards - baseline, torch.zeros_like(rewards))


def sequence_to_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sequence value (B,) onto its trained tokens: (B, T)."""
    return values[:, None] * mask


def last_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's reward (B,) on its last trained token: (B, T)."""
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values  # (B,)
    out = torch.zeros_like(mask, dtype=rewards.dtype)
    has = last >= 0
    out[has.nonzero()[:, 0], last[has]] = rewards[has]
    return out


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_next over trained tokens only (untrained positions are skipped): (B, T)."""
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype)
    for t in reversed(range(token_rewards.shape[1])):
        on = mask[:, t] > 0
        running = torch.where(on, token_rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(on, running, torch.zeros_like(running))
    return returns


def reinforce_pp_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++: discounted token returns, whitened over every trained token of the batch: (B, T).

    token_rewards (B, T) holds the outcome reward on the last token plus any per-token KL penalty.
    """
    return masked_whiten(discounted_returns(token_rewards, mask, gamma), mask)


def gae_advantages(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the trained tokens of each sequence.

    token_rewards, values, mask: (B, T). Positions with mask 0 (prompt, tool output inside a
    multi-turn sequence, padding) are skipped: the recursion links each trained token to the next
    trained one. The value after the last trained token is 0 (the episode ends).
    Returns (advantages, returns), both (B, T), zero where mask is 0.
    """
    B, T = mask.shape
    adv = torch.zeros_like(values)
    gae = torch.zeros(B, dtype=values.dtype)
    next_value = torch.zeros(B, dtype=values.dtype)
    for t in reversed(range(T)):
        on = mask[:, t] > 0
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        new_gae = delta + gamma * lam * gae
        gae = torch.where(on, new_gae, gae)
        next_value = torch.where(on, values[:, t], next_value)
        adv[:, t] = torch.where(on, new_gae, torch.zeros_like(new_gae))
    returns = (adv + values) * mask
    return adv, returns
