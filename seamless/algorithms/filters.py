"""Batch filters and reward shaping applied before advantages are computed."""

from __future__ import annotations

import torch

from seamless.algorithms.advantages import group_stats


def dynamic_sampling_keep(rewards: torch.Tensor, groups: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """DAPO dynamic sampling: keep sequences whose group's rewards are not all equal: (B,) bool.

    A group where every reward is the same has zero advantage under GRPO/RLOO and only dilutes the
    batch. Groups of one are dropped too (they have no baseline).
    """
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    high = torch.full((n_groups,), -torch.inf, dtype=rewards.dtype).scatter_reduce(0, groups, rewards, "amax")
    low = torch.full((n_groups,), torch.inf, dtype=rewards.dtype).scatter_reduce(0, groups, rewards, "amin")
    count, _, _ = group_stats(rewards, groups)
    return ((high - low)[groups] > tol) & (count > 1)


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer_tokens: int,
                     penalty: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment added to the reward: (B,).

    0 up to max_tokens - buffer_tokens generated tokens, then falling linearly to -penalty at
    max_tokens, and -penalty beyond. buffer_tokens=0 is a hard -penalty for exceeding max_tokens.
    """
    lengths = lengths.to(torch.float64)
    start = max_tokens - buffer_tokens
    if buffer_tokens > 0:
        ramp = -penalty * (lengths - start) / buffer_tokens
    else:
        ramp = torch.zeros_like(lengths)
    out = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_tokens, torch.full_like(lengths, -penalty), out)
