import math

import pytest
import torch

from seamless.algorithms import (
    LogprobMismatch,
    dynamic_sampling_keep,
    logprob_mismatch,
    mismatch_sums,
    overlong_penalty,
    staleness_keep,
    truncated_is_weights,
)


def test_truncated_is_weights_match_direct_restatement():
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 6, generator=gen, dtype=torch.float64) * 2
    rollout = old + torch.randn(3, 6, generator=gen, dtype=torch.float64)
    mask = (torch.rand(3, 6, generator=gen) > 0.3).double()
    got = truncated_is_weights(old, rollout, mask, cap=2.0)
    for b in range(3):
        for t in range(6):
            want = min(math.exp(float(old[b, t] - rollout[b, t])), 2.0) * float(mask[b, t])
            assert got[b, t].item() == pytest.approx(want)


def test_logprob_mismatch_hand_case():
    trainer = torch.tensor([[0.0, -1.0, -2.0]])
    rollout = torch.tensor([[5.0, -1.1, -1.7]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    m = logprob_mismatch(trainer, rollout, mask)
    assert m.mean_abs_diff == pytest.approx(0.2) and m.max_abs_diff == pytest.approx(0.3)
    want_k3 = ((math.exp(0.1) - 1 - 0.1) + (math.exp(-0.3) - 1 + 0.3)) / 2
    assert m.kl_k3 == pytest.approx(want_k3)


def test_logprob_mismatch_from_sums_of_pieces_equals_it_over_the_batch():
    gen = torch.Generator().manual_seed(0)
    trainer = -torch.rand(6, 9, generator=gen) * 4
    rollout = trainer + torch.randn(6, 9, generator=gen)
    mask = (torch.rand(6, 9, generator=gen) > 0.4).float()
    combined: dict[str, float] = {}
    for rows, width in ((slice(0, 2), 9), (slice(2, 3), 4), (slice(3, 6), 7)):  # micro-batches, trimmed
        mask[rows, width:] = 0
        for key, value in mismatch_sums(trainer[rows, :width], rollout[rows, :width], mask[rows, :width]).items():
            before = combined.get(key)
            combined[key] = float(value) if before is None else (
                max(before, float(value)) if key.endswith("_max") else before + float(value))
    whole, got = logprob_mismatch(trainer, rollout, mask), LogprobMismatch.from_sums(combined)
    assert got.mean_abs_diff == pytest.approx(whole.mean_abs_diff, rel=1e-6)
    assert got.max_abs_diff == pytest.approx(whole.max_abs_diff, rel=1e-6)
    assert got.kl_k3 == pytest.approx(whole.kl_k3, rel=1e-6)


def test_staleness_keeps_recent_and_unknown_versions():
    versions = torch.tensor([5, 4, 3, -1])
    assert staleness_keep(versions, current_version=5, max_staleness=1).tolist() == [True, True, False, True]
    assert staleness_keep(versions, current_version=5, max_staleness=0).tolist() == [True, False, False, True]


def test_dynamic_sampling_drops_uniform_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    assert dynamic_sampling_keep(rewards, groups).tolist() == [False, False, True, True, False, False, False]


@pytest.mark.parametrize("buffer", [0, 4])
def test_overlong_penalty_matches_direct_restatement(buffer):
    lengths = torch.arange(0, 20)
    got = overlong_penalty(lengths, max_tokens=16, buffer_tokens=buffer, penalty=0.5)
    for n in range(20):
        if n <= 16 - buffer:
            want = 0.0
        elif n <= 16:
            want = -0.5 * (n - (16 - buffer)) / buffer
        else:
            want = -0.5
        assert got[n].item() == pytest.approx(want)
