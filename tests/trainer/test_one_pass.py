"""A step with one mini-batch takes its old logprobs from its first update's own pass.

Skipping the no-grad pass must change nothing: not the first update (ratio 1 either way), not the
later epochs' updates (the first update's logprobs are their old logprobs), not the IS weights, not
the metrics measured on the old logprobs (the logprob mismatch with vLLM, whose maximum combines
over micro-batches and ranks by max, not by sum).
"""

from __future__ import annotations

import random

import pytest
import torch

from seamless.algorithms import logprobs_from_logits, make_algorithm, truncated_is_weights
from seamless.config import GrpoConfig, PpoConfig, TrainerConfig
from seamless.trainer import Trainer
from seamless.trainer import trainer as trainer_module
from seamless.trainer.batch import MicroBatch
from seamless.trainer.objective import policy_objective
from seamless.trainer.trainer import _merge_rank_metrics, old_logprobs_from_the_update
from seamless.types import NO_VERSION, TrainingSequence


def test_the_no_grad_pass_is_skipped_only_for_one_mini_batch_without_reference_or_critic():
    grpo, ppo, with_kl = make_algorithm(GrpoConfig()), make_algorithm(PpoConfig()), make_algorithm(GrpoConfig(kl_coef=0.1))
    one, two_epochs = TrainerConfig(), TrainerConfig(ppo_epochs=2)
    assert old_logprobs_from_the_update(one, grpo, batch_size=8)
    assert old_logprobs_from_the_update(two_epochs, grpo, batch_size=8)  # the tiny recipes' setting
    assert not old_logprobs_from_the_update(TrainerConfig(mini_batches=2), grpo, batch_size=8)
    assert not old_logprobs_from_the_update(TrainerConfig(ppo_epochs=2, mini_batches=2), grpo, batch_size=8)
    assert old_logprobs_from_the_update(TrainerConfig(mini_batches=2), grpo, batch_size=1)  # one row: one mini-batch
    for config in (one, two_epochs):
        assert not old_logprobs_from_the_update(config, with_kl, batch_size=8)
        assert not old_logprobs_from_the_update(config, ppo, batch_size=8)


def test_rank_metrics_add_up_but_maxima_combine_by_max():
    merged = _merge_rank_metrics([{"mismatch_abs_sum": 1.0, "mismatch_abs_max": 0.5, "grad_norm": 3.0},
                                  {"mismatch_abs_sum": 2.0, "mismatch_abs_max": 0.25, "grad_norm": 3.0}], 2)
    assert merged == {"mismatch_abs_sum": 3.0, "mismatch_abs_max": 0.5, "grad_norm": 3.0}


@pytest.mark.parametrize("tis_cap", [None, 2.0])
def test_objective_without_old_logprobs_equals_it_given_its_own_detached_logprobs(tis_cap):
    gen = torch.Generator().manual_seed(0)
    b, t, vocab = 3, 7, 11
    tokens = torch.randint(0, vocab, (b, t), generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    mask[:, 0] = 0
    rollout = -torch.rand(b, t, generator=gen) * 5
    advantages = torch.randn(b, 1, generator=gen).expand(b, t) * mask
    algo = GrpoConfig(tis_cap=tis_cap, entropy_coef=0.01)
    base = dict(index=torch.arange(b), token_ids=tokens, attention_mask=torch.ones_like(tokens), loss_mask=mask,
                advantages=advantages, num_tokens=float(mask.sum()), num_seqs=float(b))
    logits = torch.randn(b, t, vocab, generator=gen)

    def run(mb: MicroBatch, kept: list[torch.Tensor] | None = None):
        leaf = logits.clone().requires_grad_(True)
        loss, metrics = policy_objective(leaf, mb, algo, kept)
        loss.backward()
        return loss, metrics, leaf.grad

    old = logprobs_from_logits(logits, tokens)
    weights = truncated_is_weights(old, rollout, mask, tis_cap) if tis_cap is not None else None
    given: list[torch.Tensor] = []
    loss, metrics, grad = run(MicroBatch(**base, old_logprobs=old, is_weights=weights), given)
    kept: list[torch.Tensor] = []
    own_loss, own_metrics, own_grad = run(MicroBatch(**base, rollout_logprobs=rollout), kept)
    assert given == []  # old logprobs that came with the micro-batch are not handed back
    assert len(kept) == 1 and not kept[0].requires_grad  # the ones it measured are, for the later epochs
    torch.testing.assert_close(kept[0], old, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(own_loss, loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(own_grad, grad, rtol=1e-6, atol=1e-7)
    for key in ("policy_loss", "entropy", "clip_frac", "approx_kl", "loss"):
        torch.testing.assert_close(own_metrics[key], metrics[key], rtol=1e-6, atol=1e-7)
    assert float(own_metrics["approx_kl"]) == 0.0
    diff = (old - rollout).abs() * mask
    assert float(own_metrics["mismatch_abs_sum"]) == pytest.approx(float(diff.sum()), rel=1e-6)
    assert float(own_metrics["mismatch_abs_max"]) == pytest.approx(float(diff.max()), rel=1e-6)
    assert float(own_metrics["mismatch_tokens"]) == float(mask.sum())
    if tis_cap is None:
        assert "is_weight_sum" not in own_metrics
    else:
        assert float(own_metrics["is_weight_sum"]) == pytest.approx(float(weights.sum()), rel=1e-6)


# --- the real trainer: 2 gloo ranks, DeepSpeed, Ray ------------------------------------------------


def _sequences(count: int = 16, vocab: int = 500, seed: int = 0) -> list[TrainingSequence]:
    """Groups of 4 of varied lengths; rollout logprobs spread around the tiny model's (about -6.2),
    so that truncated IS weights are both capped and not, and the mismatch is far from 0."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n_prompt, n_gen = rng.randint(4, 12), rng.randint(6, 30)
        n = n_prompt + n_gen
        out.append(TrainingSequence(
            session_id=f"s{i}", token_ids=[rng.randrange(3, vocab) for _ in range(n)],
            loss_mask=[0] * n_prompt + [1] * n_gen,
            rollout_logprobs=[0.0] * n_prompt + [rng.uniform(-9.0, -3.5) for _ in range(n_gen)],
            weight_versions=[NO_VERSION] * n, reward=rng.random(), group_id=f"g{i // 4}"))
    return out


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: t for bucket in trainer.export_weights(bucket_bytes=1 << 16) for name, t in bucket}


def _step(tiny_model_dir, sequences, algo, config, monkeypatch, skip: bool):
    """One step from the initial weights; `skip` False forces the no-grad `_forward` pass."""
    forwards = []
    real_forward = Trainer._forward

    def counted(self, *args, **kwargs):
        forwards.append(1)
        return real_forward(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_forward", counted)
        if not skip:
            patch.setattr(trainer_module, "old_logprobs_from_the_update", lambda *args: False)
        with Trainer(tiny_model_dir, algo, config, num_ranks=2, seed=0) as trainer:
            before = _weights(trainer)
            metrics = trainer.train_step(sequences)
            after = _weights(trainer)
    assert len(forwards) == (0 if skip else 1)
    return before, metrics, after


@pytest.mark.slow
@pytest.mark.parametrize("tis_cap, epochs", [(2.0, 1), (None, 1), (2.0, 2), (None, 2)])
def test_a_one_mini_batch_step_equals_the_step_with_a_no_grad_pass(tis_cap, epochs, ray_cluster, tiny_model_dir,
                                                                   monkeypatch):
    sequences = _sequences()
    algo = GrpoConfig(tis_cap=tis_cap, max_staleness=10**6)
    # a small token budget: several micro-batches on each of the 2 ranks
    config = TrainerConfig(lr=1e-3, ppo_epochs=epochs, micro_batch_tokens=128,
                           deepspeed={"zero_optimization": {"stage": 2}})
    start, one_pass, ours = _step(tiny_model_dir, sequences, algo, config, monkeypatch, skip=True)
    start_again, two_pass, theirs = _step(tiny_model_dir, sequences, algo, config, monkeypatch, skip=False)

    assert all(torch.equal(start[k], start_again[k]) for k in start)
    close = dict(rel=1e-5, abs=1e-7)
    for key in ("loss", "policy_loss", "entropy", "clip_frac", "approx_kl", "grad_norm", "mismatch_mean_abs",
                "mismatch_max_abs", "mismatch_kl", "is_weight_mean", "advantage_mean"):
        assert getattr(one_pass, key) == pytest.approx(getattr(two_pass, key), **close), key
    assert one_pass.epoch_losses == pytest.approx(two_pass.epoch_losses, **close)
    assert len(one_pass.epoch_losses) == epochs
    if epochs == 1:  # the update's own logprobs are its old ones: ratio 1
        assert one_pass.approx_kl == 0.0 and two_pass.approx_kl == pytest.approx(0.0, abs=1e-7)
    else:
        # the second epoch runs moved weights against the first's logprobs: old logprobs taken from
        # the second epoch's own pass would give 0, misplaced rows far more than rounding
        assert two_pass.approx_kl > 1e-4, two_pass.approx_kl
    # the data makes these checks bite: a max summed over micro-batches (or over epochs), or IS
    # weights left at 1, would differ by far more than rounding
    assert two_pass.mismatch_mean_abs > 0.5 and two_pass.mismatch_max_abs > 2.0
    if tis_cap is not None:
        assert 0.5 < two_pass.is_weight_mean < 1.9
    moved = max(float((theirs[k] - start[k]).abs().max()) for k in start)
    differ = max(float((ours[k] - theirs[k]).abs().max()) for k in start)
    assert moved > 1e-4, "the step did not move the weights; the test would prove nothing"
    # measured on CPU: 0.0 (the same logprobs to the bit, so the same ratios and gradients); Adam's
    # first step moves every weight by about lr, so a wrong gradient shows as a whole move
    assert differ <= moved * 1e-4, f"the steps differ by {differ:.2e} (moved {moved:.2e})"
