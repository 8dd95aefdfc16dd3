"""Policy, value and KL losses, and the reductions that turn token losses into one number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from seamless.algorithms.token_stats import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits

LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_sum_norm"]
KlEstimator = Literal["k1", "k2", "k3"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1; 0 when the mask is empty."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked positions; masked-out positions become 0."""
    mean = masked_mean(x, mask)
    # unbiased variance, as the usual whitening of RL libraries does
    var = (((x - mean) ** 2) * mask).sum() / (mask.sum() - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: LossAgg, *, num_tokens: float | None = None,
              num_seqs: float | None = None, norm_const: float = 1.0) -> torch.Tensor:
    """Reduce token losses (B, T) to a scalar.

    token_mean: sum over all tokens / number of tokens.
    seq_mean_token_mean: mean over sequences of each sequence's token mean.
    seq_sum_norm: sum over all tokens / (number of sequences * norm_const) (Dr.GRPO).
    `num_tokens` / `num_seqs` override the local counts, so that micro-batches of one global batch
    each contribute their share of the global mean (their partial results then simply add up).
    """
    if mode == "token_mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        return (loss * mask).sum() / max(float(denom), 1.0)
    has_tokens = mask.sum(-1) > 0  # (B,) padding sequences count for nothing
    seqs = has_tokens.sum() if num_seqs is None else num_seqs
    if mode == "seq_mean_token_mean":
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        return per_seq.sum() / max(float(seqs), 1.0)
    if mode == "seq_sum_norm":
        return (loss * mask).sum() / (max(float(seqs), 1.0) * norm_const)
    raise ValueError(f"unknown loss aggregation {mode!r}; use token_mean, seq_mean_token_mean or seq_sum_norm")


@dataclass(frozen=True)
class PolicyLossParts:
    """Token-level pieces of the clipped surrogate, for the loss and its metrics."""

    loss: torch.Tensor  # (B, T) per-token loss, before aggregation
    clipped: torch.Tensor  # (B, T) 1 where the ratio clip was active (the gradient is cut)
    dual_clipped: torch.Tensor  # (B, T) 1 where the dual clip was active
    ratio: torch.Tensor  # (B, T)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                clip_low: float, clip_high: float, dual_clip: float | None = None,
                is_weights: torch.Tensor | None = None) -> PolicyLossParts:
    """PPO clipped surrogate with separate low/high clip (clip-higher) and optional dual clip.

    All inputs (B, T). loss_t = -A_t * clip-objective; with dual clip, for A < 0 the loss is
    capped at -A * dual_clip (a huge ratio on a bad token cannot blow up the step).
    `is_weights` (B, T, no gradient) multiply the token loss: truncated importance sampling that
    corrects for old_logprobs being computed by the trainer while the tokens came from vLLM.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).float()
    dual_clipped = torch.zeros_like(loss)
    if dual_clip is not None:
        capped = torch.minimum(loss, -advantages * dual_clip)
        negative = advantages < 0
        dual_clipped = (negative & (capped < loss)).float()
        loss = torch.where(negative, capped, loss)
    if is_weights is not None:
        loss = loss * is_weights.detach()
    return PolicyLossParts(loss=loss, clipped=was_clipped, dual_clipped=dual_clipped, ratio=ratio)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KlEstimator) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens (Schulman's k1, k2, k3).

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r, with log r = logp - ref_logp.
    k3 is unbiased and non-negative; its log ratio is clamped so one rare token cannot overflow.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        log_ratio = log_ratio.clamp(-20.0, 20.0)
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1, k2 or k3")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((v - R)^2, (v_clipped - R)^2), per token (B, T).

    v_clipped = old_v + clamp(v - old_v, -clip, clip). Returns (loss, clipped-indicator), both (B, T).
    """
    plain = (values - returns) ** 2
    if clip is None:
        return 0.5 * plain, torch.zeros_like(plain)
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.maximum(plain, clipped), (clipped > plain).float()
