"""Real DeepSpeed on 2 gloo ranks (Ray actors), on sequences sampled by the real vLLM server."""

from __future__ import annotations

import math

import pytest
import torch

from seamless.config import GrpoConfig, PpoConfig, TrainerConfig
from seamless.trainer import Trainer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _config(stage: int, **kw) -> TrainerConfig:
    kw.setdefault("ppo_epochs", 3)
    return TrainerConfig(lr=1e-3, micro_batch_tokens=256, deepspeed={"zero_optimization": {"stage": stage}}, **kw)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: t for bucket in trainer.export_weights(bucket_bytes=1 << 16) for name, t in bucket}


def _trained_logprob_gap(trainer: Trainer, sequences) -> float:
    """Mean |trainer logprob - vLLM logprob| over generated tokens."""
    diffs = []
    for seq, ours in zip(sequences, trainer.compute_logprobs(sequences)):
        diffs += [abs(a - b) for a, b, m in zip(ours, seq.rollout_logprobs, seq.loss_mask) if m]
    return sum(diffs) / len(diffs)


@pytest.mark.parametrize("stage", [2, 3])
def test_grpo_step_on_vllm_rollouts_then_checkpoint_resume(stage, ray_cluster, tiny_model_dir, rollout_sequences,
                                                           tmp_path):
    algo = GrpoConfig(tis_cap=2.0)
    trainer = Trainer(tiny_model_dir, algo, _config(stage), num_ranks=2, seed=0)
    try:
        # ZeRO-3 builds the model as shards (no rank loads it whole), and with the right weights:
        # before any update the trainer reproduces what vLLM recorded (fp32, same weights)
        assert [r["partitioned_at_load"] for r in trainer.describe()] == [stage == 3] * 2
        assert _trained_logprob_gap(trainer, rollout_sequences) < 1e-3
        before = _weights(trainer)
        metrics = trainer.train_step(rollout_sequences)
        assert metrics is not None and metrics.num_sequences == len(rollout_sequences)
        assert metrics.mismatch_mean_abs < 1e-3 and metrics.is_weight_mean == pytest.approx(1.0, abs=1e-2)
        assert all(math.isfinite(x) for x in (metrics.loss, metrics.grad_norm, metrics.entropy)) and metrics.grad_norm > 0
        # the surrogate on the repeated batch falls epoch after epoch
        assert metrics.epoch_losses[-1] < metrics.epoch_losses[0], metrics.epoch_losses
        after = _weights(trainer)
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert _trained_logprob_gap(trainer, rollout_sequences) > 1e-3  # the policy moved

        # checkpoint, one more step, then kill the ranks and resume: the same step again
        trainer.save_checkpoint(tmp_path / "ckpt", extra_state={"data_position": 7})
        expected = trainer.train_step(rollout_sequences)
        expected_logprobs = trainer.compute_logprobs(rollout_sequences[:3])
        trainer.kill()
        trainer = Trainer(tiny_model_dir, algo, _config(stage), num_ranks=2, seed=0)
        assert trainer.load_checkpoint(tmp_path / "ckpt") == {"data_position": 7}
        resumed = trainer.train_step(rollout_sequences)
        assert resumed.step == expected.step == 2
        assert resumed.epoch_losses == pytest.approx(expected.epoch_losses, rel=1e-5, abs=1e-7)
        assert resumed.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)
        got = trainer.compute_logprobs(rollout_sequences[:3])
        assert max(abs(a - b) for x, y in zip(got, expected_logprobs) for a, b in zip(x, y)) < 1e-5
    finally:
        trainer.shutdown()


def test_sft_then_ppo_with_critic_and_reference_runs_and_exports_a_loadable_model(ray_cluster, tiny_model_dir,
                                                                          rollout_sequences, tmp_path):
    from transformers import AutoModelForCausalLM

    algo = PpoConfig(kl_coef=0.05, kl_estimator="k3", entropy_coef=0.01, dual_clip=3.0, critic_lr=1e-3)
    config = _config(2, ppo_epochs=2, mini_batches=2, warmup_steps=2)
    with Trainer(tiny_model_dir, algo, config, num_ranks=2, seed=0) as trainer:
        sft = [trainer.sft_step(rollout_sequences[:8], lr=1e-3) for _ in range(2)]
        assert sft[1].loss < sft[0].loss and sft[0].grad_norm > 0  # supervised warm-start fits its batch
        first = trainer.train_step(rollout_sequences)
        second = trainer.train_step(rollout_sequences)
        for m in (first, second):
            assert all(math.isfinite(v) for v in m.to_dict().values()), m
            assert m.critic_grad_norm > 0 and m.value_loss > 0
        assert first.lr == pytest.approx(1e-3)  # warm-up reached the peak after 2 optimizer steps
        # k3 is non-negative, and zero only until the first update moves the policy off the reference
        assert 0 < first.kl_loss < second.kl_loss
        assert second.value_loss < first.value_loss  # the critic learns the returns
        out = trainer.export_hf(tmp_path / "hf")
        ours = trainer.compute_logprobs(rollout_sequences[:2])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for seq, lp in zip(rollout_sequences[:2], ours):
        with torch.no_grad():
            logits = model(torch.tensor([seq.token_ids])).logits[0, :-1]
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq.token_ids[1:])[:, None])[:, 0]
        assert torch.allclose(ref, torch.tensor(lp[1:]), atol=1e-4)
