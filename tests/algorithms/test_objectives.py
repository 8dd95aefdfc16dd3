"""The algorithm objects: what each needs beside the policy, and its advantages against the pure
functions they are made of."""

import pytest
import torch

from seamless.algorithms import Algorithm, grpo_advantages, make_algorithm, sequence_to_token
from seamless.config import GrpoConfig, PpoConfig, ReinforcePPConfig, RlooConfig


@pytest.mark.parametrize("config,critic", [(GrpoConfig(), False), (RlooConfig(), False),
                                           (ReinforcePPConfig(), False), (PpoConfig(), True)])
def test_each_config_builds_its_algorithm_and_says_what_it_needs(config, critic):
    algorithm = make_algorithm(config)
    assert isinstance(algorithm, Algorithm) and algorithm.needs_critic is critic
    assert algorithm.needs_reference is False
    assert make_algorithm(config.model_copy(update={"kl_coef": 0.1})).needs_reference is True


def _batch(seed=0, b=6, t=7):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.rand(b, generator=gen, dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    return rewards, groups, mask, -torch.rand(b, t, generator=gen), -torch.rand(b, t, generator=gen)


def test_grpo_spreads_the_group_relative_advantage_and_subtracts_the_kl_in_reward():
    rewards, groups, mask, logprobs, ref = _batch()
    plain = make_algorithm(GrpoConfig()).advantages(rewards, groups, mask, logprobs, None, None)
    want = sequence_to_token(grpo_advantages(rewards, groups, norm_by_std=True), mask.double()).float()
    assert torch.equal(plain.advantages, want) and plain.returns is None and plain.kl_penalty is None
    kl = make_algorithm(GrpoConfig(kl_coef=0.5, kl_in_reward=True)).advantages(rewards, groups, mask, logprobs, ref, None)
    assert kl.kl_penalty is not None and not torch.equal(kl.advantages, plain.advantages)
    assert (kl.kl_penalty * (1 - mask)).abs().sum() == 0  # only on trained tokens


def test_ppo_needs_values_and_returns_critic_targets():
    rewards, groups, mask, logprobs, _ = _batch()
    ppo = make_algorithm(PpoConfig(lam=1.0))
    with pytest.raises(AssertionError, match="critic"):
        ppo.advantages(rewards, groups, mask, logprobs, None, None)
    out = ppo.advantages(rewards, groups, mask, logprobs, None, torch.zeros_like(logprobs))
    assert out.returns is not None and out.returns.shape == mask.shape
    # gamma = lam = 1 and zero values: every trained token's advantage is its sequence's reward
    first = mask.argmax(-1)
    assert torch.allclose(out.advantages[torch.arange(6), first], rewards.float())
