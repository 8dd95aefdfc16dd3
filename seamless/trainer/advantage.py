"""From a batch and its forward-pass results to per-token advantages, for the configured algorithm.

Runs on the driver: group statistics (GRPO, RLOO) and batch whitening (REINFORCE++) need every
sequence of the step at once, which no single rank holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seamless.algorithms import (
    gae_advantages,
    grpo_advantages,
    kl_estimate,
    last_token_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_to_token,
)
from seamless.config import AlgorithmConfig


@dataclass(frozen=True)
class Advantages:
    advantages: torch.Tensor  # (B, T), zero off the loss mask
    returns: torch.Tensor | None  # (B, T), PPO's critic targets
    kl_penalty: torch.Tensor | None  # (B, T), the KL subtracted from rewards when kl_in_reward


def estimate(algo: AlgorithmConfig, rewards: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor,
             logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
             values: torch.Tensor | None) -> Advantages:
    """rewards (B,) float64, groups (B,) long, mask/logprobs/ref_logprobs/values (B, T)."""
    mask = mask.double()
    kl_tokens = None
    if algo.kl_coef > 0 and algo.kl_in_reward:
        assert ref_logprobs is not None
        kl_tokens = algo.kl_coef * kl_estimate(logprobs.double(), ref_logprobs.double(), algo.kl_estimator) * mask
    if algo.name in ("grpo", "rloo"):
        # sequence-level estimators: the KL penalty is the sequence's summed KL
        seq_rewards = rewards - (kl_tokens.sum(-1) if kl_tokens is not None else 0.0)
        if algo.name == "grpo":
            seq_adv = grpo_advantages(seq_rewards, groups, norm_by_std=algo.norm_adv_by_std)
        else:
            seq_adv = rloo_advantages(seq_rewards, groups)
        return Advantages(sequence_to_token(seq_adv, mask).float(), None, kl_tokens)
    token_rewards = last_token_rewards(rewards, mask)
    if kl_tokens is not None:
        token_rewards = token_rewards - kl_tokens
    if algo.name == "reinforce_pp":
        return Advantages(reinforce_pp_advantages(token_rewards, mask, algo.gamma).float(), None, kl_tokens)
    assert algo.name == "ppo" and values is not None, "PPO needs the critic's values"
    adv, returns = gae_advantages(token_rewards, values.double(), mask, algo.gamma, algo.lam)
    return Advantages(adv.float(), returns.float(), kl_tokens)
