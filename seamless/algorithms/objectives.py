"""The RL algorithms as objects, one per `algorithm.name`, chosen once when the trainer is built.

Each says what models it needs beside the policy (a frozen reference when the KL weight is above
0, a critic for PPO) and how it turns a step's rewards into per-token advantages. The trainer
asks the object; it never compares algorithm names. Advantages are computed on the driver: group
statistics (GRPO, RLOO) and batch whitening (REINFORCE++) need every sequence of the step at once,
which no single rank holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from seamless.algorithms.advantages import (
    gae_advantages,
    grpo_advantages,
    last_token_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_to_token,
)
from seamless.algorithms.losses import kl_estimate
from seamless.config import AlgorithmConfig, GrpoConfig, PpoConfig, ReinforcePPConfig, RlooConfig


@dataclass(frozen=True)
class Advantages:
    advantages: torch.Tensor  # (B, T), zero off the loss mask
    returns: torch.Tensor | None  # (B, T), PPO's critic targets
    kl_penalty: torch.Tensor | None  # (B, T), the KL subtracted from rewards when kl_in_reward


class Algorithm:
    """An RL objective as the trainer uses it. Subclasses implement `_estimate`."""

    needs_critic: ClassVar[bool] = False
    """Whether a value model trains beside the policy (its values feed the advantages)."""

    def __init__(self, config: AlgorithmConfig) -> None:
        self.config = config

    @property
    def critic_lr(self) -> float | None:
        """The critic's peak learning rate; None without a critic."""
        return None

    @property
    def needs_reference(self) -> bool:
        """A frozen copy of the initial policy, for the KL term; only when the KL has a weight."""
        return self.config.kl_coef > 0

    def advantages(self, rewards: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor,
                   logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None,
                   values: torch.Tensor | None) -> Advantages:
        """rewards (B,) float64, groups (B,) long, mask/logprobs/ref_logprobs/values (B, T).

        `logprobs` only feed the KL penalty in the reward (kl_in_reward, which needs the reference
        too); without it they may be None."""
        algo, mask = self.config, mask.double()
        kl_tokens = None
        if algo.kl_coef > 0 and algo.kl_in_reward:
            assert logprobs is not None and ref_logprobs is not None
            kl_tokens = algo.kl_coef * kl_estimate(logprobs.double(), ref_logprobs.double(), algo.kl_estimator) * mask
        return self._estimate(rewards, groups, mask, kl_tokens, values)

    def _estimate(self, rewards: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor,
                  kl_tokens: torch.Tensor | None, values: torch.Tensor | None) -> Advantages:
        raise NotImplementedError


class _SequenceLevel(Algorithm):
    """One advantage per sequence, spread over its tokens; the KL penalty is the sequence's sum."""

    def _estimate(self, rewards, groups, mask, kl_tokens, values):
        seq_rewards = rewards - (kl_tokens.sum(-1) if kl_tokens is not None else 0.0)
        return Advantages(sequence_to_token(self._sequence_advantages(seq_rewards, groups), mask).float(),
                          None, kl_tokens)

    def _sequence_advantages(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Grpo(_SequenceLevel):
    config: GrpoConfig

    def _sequence_advantages(self, rewards, groups):
        return grpo_advantages(rewards, groups, norm_by_std=self.config.norm_adv_by_std)


class Rloo(_SequenceLevel):
    def _sequence_advantages(self, rewards, groups):
        return rloo_advantages(rewards, groups)


def _token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl_tokens: torch.Tensor | None) -> torch.Tensor:
    """The reward on each sequence's last trained token, minus the per-token KL penalty. (B, T)"""
    token_rewards = last_token_rewards(rewards, mask)
    return token_rewards - kl_tokens if kl_tokens is not None else token_rewards


class ReinforcePP(Algorithm):
    config: ReinforcePPConfig

    def _estimate(self, rewards, groups, mask, kl_tokens, values):
        token_rewards = _token_rewards(rewards, mask, kl_tokens)
        return Advantages(reinforce_pp_advantages(token_rewards, mask, self.config.gamma).float(), None, kl_tokens)


class Ppo(Algorithm):
    config: PpoConfig
    needs_critic = True

    @property
    def critic_lr(self) -> float | None:
        return self.config.critic_lr

    def _estimate(self, rewards, groups, mask, kl_tokens, values):
        assert values is not None, "PPO needs the critic's values"
        token_rewards = _token_rewards(rewards, mask, kl_tokens)
        adv, returns = gae_advantages(token_rewards, values.double(), mask, self.config.gamma, self.config.lam)
        return Advantages(adv.float(), returns.float(), kl_tokens)


ALGORITHMS: dict[type, type[Algorithm]] = {GrpoConfig: Grpo, RlooConfig: Rloo, ReinforcePPConfig: ReinforcePP,
                                           PpoConfig: Ppo}


def make_algorithm(config: AlgorithmConfig) -> Algorithm:
    """The algorithm object of an `algorithm` section (its class picks it)."""
    return ALGORITHMS[type(config)](config)
