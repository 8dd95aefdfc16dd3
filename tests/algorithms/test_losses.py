import math

import pytest
import torch

from seamless.algorithms import (
    aggregate,
    entropy_from_logits,
    kl_estimate,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)


def _inputs(seed: int, B: int = 3, T: int = 7):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    new = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.4
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=gen) > 0.3).double()
    return old, new, adv, mask


def _reference_token_loss(lp, old, a, lo, hi, dual):
    r = math.exp(lp - old)
    loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
    if dual is not None and a < 0:
        loss = min(loss, -a * dual)
    return loss


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dual", [None, 3.0])
def test_policy_loss_matches_direct_restatement(seed, dual):
    old, new, adv, _ = _inputs(seed)
    parts = policy_loss(new, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=dual)
    for b in range(old.shape[0]):
        for t in range(old.shape[1]):
            want = _reference_token_loss(float(new[b, t]), float(old[b, t]), float(adv[b, t]), 0.2, 0.28, dual)
            assert parts.loss[b, t].item() == pytest.approx(want, abs=1e-12)


def test_policy_loss_hand_worked_clip_higher_and_dual_clip():
    old = torch.zeros(1, 4, dtype=torch.float64)
    # ratios 1.5 (A>0: clipped at 1.28), 0.5 (A>0: unclipped, pessimistic), 1.5 (A<0), 10 (A<0, dual clip 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 10.0]], dtype=torch.float64))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    parts = policy_loss(new, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    assert torch.allclose(parts.loss, torch.tensor([[-1.28, -0.5, 1.5, 3.0]], dtype=torch.float64))
    assert parts.clipped.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert parts.dual_clipped.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    # the clipped token passes no gradient, the unclipped one does
    new = new.clone().requires_grad_(True)
    policy_loss(new, old, adv, 0.2, 0.28).loss.sum().backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0


def test_importance_weights_scale_the_token_loss():
    old, new, adv, _ = _inputs(0)
    w = torch.rand_like(old)
    plain = policy_loss(new, old, adv, 0.2, 0.2).loss
    assert torch.allclose(policy_loss(new, old, adv, 0.2, 0.2, is_weights=w).loss, plain * w)


@pytest.mark.parametrize("seed", range(3))
def test_aggregations_match_direct_restatement(seed):
    _, loss, _, mask = _inputs(seed)
    mask[1] = 0  # a sequence with no trained tokens counts for nothing
    rows = [[float(loss[b, t]) for t in range(loss.shape[1]) if mask[b, t]] for b in range(loss.shape[0])]
    rows = [r for r in rows if r]
    flat = [x for r in rows for x in r]
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(sum(flat) / len(flat))
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(
        sum(sum(r) / len(r) for r in rows) / len(rows))
    assert aggregate(loss, mask, "seq_sum_norm", norm_const=16.0).item() == pytest.approx(
        sum(flat) / (len(rows) * 16.0))


def test_micro_batch_shares_add_up_to_the_global_aggregate():
    _, loss, _, mask = _inputs(1, B=6)
    tokens, seqs = float(mask.sum()), float((mask.sum(-1) > 0).sum())
    for mode in ("token_mean", "seq_mean_token_mean", "seq_sum_norm"):
        whole = aggregate(loss, mask, mode, norm_const=4.0)
        parts = sum(aggregate(loss[i:i + 2], mask[i:i + 2], mode, num_tokens=tokens, num_seqs=seqs,
                              norm_const=4.0) for i in range(0, 6, 2))
        assert parts.item() == pytest.approx(whole.item())


def test_kl_estimators_match_direct_restatement_and_hand_case():
    old, new, _, _ = _inputs(2)
    for b in range(old.shape[0]):
        for t in range(old.shape[1]):
            lr = float(new[b, t] - old[b, t])
            assert kl_estimate(new, old, "k1")[b, t].item() == pytest.approx(lr)
            assert kl_estimate(new, old, "k2")[b, t].item() == pytest.approx(lr * lr / 2)
            assert kl_estimate(new, old, "k3")[b, t].item() == pytest.approx(math.exp(-lr) - 1 + lr)
    # log ratio log 2: k3 = 1/2 - 1 + log 2
    lp, ref = torch.tensor([math.log(2.0)]), torch.tensor([0.0])
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(math.log(2) - 0.5)
    assert (kl_estimate(new, old, "k3") >= 0).all()


def test_value_loss_matches_direct_restatement():
    old_v, v, ret, _ = _inputs(3)
    loss, _ = value_loss(v, old_v, ret, clip=0.2)
    for b in range(v.shape[0]):
        for t in range(v.shape[1]):
            vc = float(old_v[b, t]) + min(max(float(v[b, t] - old_v[b, t]), -0.2), 0.2)
            want = 0.5 * max((float(v[b, t]) - float(ret[b, t])) ** 2, (vc - float(ret[b, t])) ** 2)
            assert loss[b, t].item() == pytest.approx(want)
    # hand case: v moved 1.0 away from old 0, return 1.0: clipped value 0.2 has the larger error
    loss, clipped = value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2) and clipped.item() == 1.0


def test_logprobs_and_entropy_from_logits_match_direct_restatement():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    lp, ent = logprobs_from_logits(logits, ids), entropy_from_logits(logits)
    assert lp[:, 0].tolist() == [0.0, 0.0] and ent[:, 0].tolist() == [0.0, 0.0]
    for b in range(2):
        for t in range(1, 5):
            row = [float(x) for x in logits[b, t - 1]]
            z = math.log(sum(math.exp(x) for x in row))
            assert lp[b, t].item() == pytest.approx(row[int(ids[b, t])] - z)
            assert ent[b, t].item() == pytest.approx(-sum(math.exp(x - z) * (x - z) for x in row))
