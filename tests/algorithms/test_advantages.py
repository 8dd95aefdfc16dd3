import math

import pytest
import torch

from seamless.algorithms import (
    discounted_returns,
    gae_advantages,
    group_ids_to_index,
    grpo_advantages,
    last_token_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_to_token,
)


def _random_groups(seed: int, n_groups: int = 5, size: int = 4):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.rand(n_groups * size, generator=gen, dtype=torch.float64)
    groups = torch.randperm(n_groups * size, generator=gen) % n_groups
    return rewards, groups


def _random_mask(seed: int, B: int = 4, T: int = 9):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, T, generator=gen) > 0.3).double()
    mask[:, 0] = 0  # the first token is never predicted
    return mask, gen


def test_grpo_hand_worked_group_of_four():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    groups = torch.zeros(4, dtype=torch.long)
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735
    std = math.sqrt(1 / 3)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64) / (std + 1e-6)
    assert torch.allclose(grpo_advantages(rewards, groups), expected)
    # Dr.GRPO keeps the raw difference from the mean
    assert torch.allclose(grpo_advantages(rewards, groups, norm_by_std=False),
                          torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))


def test_rloo_hand_worked_group_of_four():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    # baseline for the first: mean(0, 0, 1) = 1/3 -> 2/3; for the second: mean(1, 0, 1) = 2/3 -> -2/3
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3], dtype=torch.float64)
    assert torch.allclose(rloo_advantages(rewards, torch.zeros(4, dtype=torch.long)), expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_matches_direct_restatement(seed, norm_by_std):
    rewards, groups = _random_groups(seed)
    got = grpo_advantages(rewards, groups, norm_by_std=norm_by_std)
    for i in range(len(rewards)):
        members = [float(rewards[j]) for j in range(len(rewards)) if groups[j] == groups[i]]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1))
        want = (float(rewards[i]) - mean) / ((std + 1e-6) if norm_by_std else 1.0)
        assert got[i].item() == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_rloo_matches_direct_restatement(seed):
    rewards, groups = _random_groups(seed)
    got = rloo_advantages(rewards, groups)
    for i in range(len(rewards)):
        others = [float(rewards[j]) for j in range(len(rewards)) if groups[j] == groups[i] and j != i]
        assert got[i].item() == pytest.approx(float(rewards[i]) - sum(others) / len(others), abs=1e-9)


def test_singleton_groups_get_zero_advantage_and_ids_map_in_order():
    groups = group_ids_to_index(["b", "a", "b", None, None])
    assert groups.tolist() == [0, 1, 0, 2, 3]
    rewards = torch.tensor([1.0, 2.0, 0.0, 5.0, 7.0], dtype=torch.float64)
    assert grpo_advantages(rewards, groups)[1:2].tolist() == [0.0]
    assert rloo_advantages(rewards, groups)[3:].tolist() == [0.0, 0.0]


def test_last_token_rewards_and_broadcast():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.float64)
    rewards = torch.tensor([2.0, 3.0, -1.0], dtype=torch.float64)
    assert last_token_rewards(rewards, mask).tolist() == [[0, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, -1]]
    assert sequence_to_token(rewards, mask).tolist() == [[0, 2, 2, 0], [0, 0, 0, 0], [0, -1, 0, -1]]


def _reference_gae(rewards, values, mask, gamma, lam):
    """Per sequence: keep only trained positions, run the textbook recursion, scatter back."""
    B, T = mask.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t] > 0]
        gae, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            gae = delta + gamma * lam * gae
            adv[b, t] = gae
            next_v = float(values[b, t])
    return adv, (adv + values) * mask


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_direct_restatement(seed, gamma, lam):
    mask, gen = _random_mask(seed)
    rewards = torch.randn(mask.shape, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    want_adv, want_ret = _reference_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, want_adv, atol=1e-12) and torch.allclose(ret, want_ret, atol=1e-12)


def test_gae_hand_worked_three_tokens():
    # rewards only at the end, gamma=1, lam=1: advantage = final reward - value
    mask = torch.tensor([[0, 1, 1, 1]], dtype=torch.float64)
    rewards = torch.tensor([[0, 0, 0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[9, 0.2, 0.5, 0.7]], dtype=torch.float64)
    adv, ret = gae_advantages(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0, 0.8, 0.5, 0.3]], dtype=torch.float64))
    assert torch.allclose(ret, torch.tensor([[0, 1.0, 1.0, 1.0]], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_pp_matches_direct_restatement(seed):
    mask, gen = _random_mask(seed)
    rewards = torch.randn(mask.shape, generator=gen, dtype=torch.float64) * mask
    gamma = 0.9
    returns = torch.zeros_like(rewards)
    for b in range(mask.shape[0]):
        g = 0.0
        for t in reversed(range(mask.shape[1])):
            if mask[b, t] > 0:
                g = float(rewards[b, t]) + gamma * g
                returns[b, t] = g
    assert torch.allclose(discounted_returns(rewards, mask, gamma), returns)
    values = [float(returns[b, t]) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    want = (returns - mean) / math.sqrt(std ** 2 + 1e-8) * mask
    assert torch.allclose(reinforce_pp_advantages(rewards, mask, gamma), want, atol=1e-10)
