"""The DeepSpeed trainer's GRPO step equals the same step written in plain PyTorch.

Everything the trainer adds (Ray actors, DeepSpeed ZeRO, micro-batches by token budget with
global denominators, the no-grad pass for old logprobs, the driver's advantage estimate) must
change nothing about the update: a bug there (a micro-batch's gradient dropped, advantages paired
with the wrong rows, a loss scaled twice) would let the run "train" and learn less, with no error.
"""

from __future__ import annotations

import pytest
import torch

from seamless.algorithms.advantages import group_ids_to_index, grpo_advantages
from seamless.algorithms.losses import aggregate, policy_loss
from seamless.config import AlgorithmConfig, TrainerConfig
from seamless.trainer import Trainer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LR = 1e-3
EPOCHS = 2


def _reference_step(model_dir, sequences) -> dict[str, torch.Tensor]:
    """GRPO, clipped surrogate, token mean, AdamW, grad clip 1.0: the textbook loop, one batch."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    width = max(len(s.token_ids) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    attention = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width)
    for i, s in enumerate(sequences):
        n = len(s.token_ids)
        ids[i, :n] = torch.tensor(s.token_ids)
        attention[i, :n] = 1
        mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)

    def logprobs() -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        picked = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        return torch.nn.functional.pad(picked, (1, 0))

    rewards = torch.tensor([s.reward for s in sequences], dtype=torch.float64)
    groups = group_ids_to_index([s.group_id for s in sequences])
    advantages = grpo_advantages(rewards, groups).float()[:, None] * mask
    with torch.no_grad():
        old = logprobs()
    for _ in range(EPOCHS):
        loss = aggregate(policy_loss(logprobs(), old, advantages, 0.2, 0.28).loss, mask, "token_mean")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


def test_a_grpo_step_matches_plain_pytorch(ray_cluster, tiny_model_dir, rollout_sequences):
    algo = AlgorithmConfig(name="grpo", clip_low=0.2, clip_high=0.28, loss_agg="token_mean", tis_cap=None)
    # a small token budget: the batch is split into several micro-batches that must add up
    config = TrainerConfig(lr=LR, ppo_epochs=EPOCHS, grad_clip=1.0, micro_batch_tokens=128,
                           deepspeed={"zero_optimization": {"stage": 2}})
    from seamless.trainer.batch import pack_by_tokens

    assert len(pack_by_tokens([len(s.token_ids) for s in rollout_sequences], 128)) >= 3
    with Trainer(tiny_model_dir, algo, config, num_ranks=1, seed=0, gpus_per_rank=0) as trainer:
        before = {n: t for bucket in trainer.export_weights(bucket_bytes=1 << 20) for n, t in bucket}
        metrics = trainer.train_step(rollout_sequences)
        ours = {n: t for bucket in trainer.export_weights(bucket_bytes=1 << 20) for n, t in bucket}
    assert metrics is not None and metrics.num_sequences == len(rollout_sequences)
    reference = _reference_step(tiny_model_dir, rollout_sequences)
    assert ours.keys() == reference.keys()
    moved = max(float((reference[k] - before[k]).abs().max()) for k in reference)
    differ = max(float((ours[k] - reference[k]).abs().max()) for k in reference)
    assert moved > 1e-4, "the reference step did not move the weights; the test would prove nothing"
    # float rounding alone: the chunked logprobs' gradients equal log_softmax's to ~3e-7 relative,
    # but the second epoch's clipped surrogate flips tokens that sit at a clip edge (measured: 1.3e-2
    # of the move); a dropped micro-batch or a doubled loss would differ by a large part of it
    assert differ < moved * 5e-2, f"trainer and reference differ by {differ:.2e} (the step moved weights {moved:.2e})"
