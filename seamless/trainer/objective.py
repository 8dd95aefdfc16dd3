"""The loss of one micro-batch on one rank: policy (surrogate + KL + entropy), critic, SFT.

Every loss here is this micro-batch's additive share of the whole mini-batch's loss (global
denominators come with the micro-batch), so shares from all micro-batches and ranks add up to the
loss of the mini-batch. Metrics are shares the same way; the driver adds them up (and takes the
largest of maxima, the `_max` keys).
"""

from __future__ import annotations

from functools import partial

import torch

from seamless.algorithms import (
    aggregate,
    entropy_from_logits,
    kl_estimate,
    logprobs_and_entropy,
    logprobs_from_logits,
    mismatch_sums,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from seamless.config import AlgorithmConfig, PpoConfig
from seamless.trainer.batch import MicroBatch


def _token_share(x: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """This micro-batch's share of the mini-batch's token mean of x (no gradient)."""
    return (x.detach() * mb.loss_mask).sum() / max(mb.num_tokens, 1.0)


def policy_objective(logits: torch.Tensor, mb: MicroBatch, algo: AlgorithmConfig,
                     own_old_logprobs: list[torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (+ KL loss, - entropy bonus) for logits (b, t, V).

    A micro-batch without old logprobs takes its own, detached; with `own_old_logprobs` given they
    are appended to it, (b, t), for the updates after this one."""
    assert mb.advantages is not None
    mask = mb.loss_mask
    agg = partial(aggregate, mask=mask, mode=algo.loss_agg, num_tokens=mb.num_tokens, num_seqs=mb.num_seqs,
                  norm_const=algo.seq_sum_norm_const)
    if algo.entropy_coef > 0:  # one pass over the logits for both, and one gradient of them
        logprobs, entropy = logprobs_and_entropy(logits, mb.token_ids)  # (b, t) each
    else:
        logprobs = logprobs_from_logits(logits, mb.token_ids)  # (b, t)
        with torch.no_grad():  # a metric only
            entropy = entropy_from_logits(logits.detach())
    old_logprobs, is_weights = mb.old_logprobs, mb.is_weights
    metrics: dict[str, torch.Tensor] = {}
    if old_logprobs is None:
        # the step's first update (Trainer: old_logprobs_from_the_update): these logprobs are the
        # old ones, and what the driver derives from a no-grad pass is derived here from them
        assert mb.rollout_logprobs is not None
        old_logprobs = logprobs.detach()
        if own_old_logprobs is not None:
            own_old_logprobs.append(old_logprobs)
        metrics.update(mismatch_sums(old_logprobs, mb.rollout_logprobs, mask))
        if algo.tis_cap is not None:
            is_weights = truncated_is_weights(old_logprobs, mb.rollout_logprobs, mask, algo.tis_cap)
            metrics["is_weight_sum"] = (is_weights * mask).sum()
    parts = policy_loss(logprobs, old_logprobs, mb.advantages, algo.clip_low, algo.clip_high,
                        algo.dual_clip, is_weights)
    pg_loss = agg(parts.loss)
    loss = pg_loss
    metrics["policy_loss"] = pg_loss.detach()
    if algo.kl_coef > 0 and not algo.kl_in_reward:
        assert mb.ref_logprobs is not None
        kl = agg(kl_estimate(logprobs, mb.ref_logprobs, algo.kl_estimator))
        loss = loss + algo.kl_coef * kl
        metrics["kl_loss"] = kl.detach()
    if algo.entropy_coef > 0:
        loss = loss - algo.entropy_coef * agg(entropy)
    metrics["entropy"] = _token_share(entropy, mb)
    metrics["clip_frac"] = _token_share(parts.clipped, mb)
    metrics["dual_clip_frac"] = _token_share(parts.dual_clipped, mb)
    # k3 estimate of KL(old || new) over sampled tokens: how far this epoch moved the policy
    metrics["approx_kl"] = _token_share(kl_estimate(old_logprobs, logprobs.detach(), "k3"), mb)
    metrics["loss"] = loss.detach()
    return loss, metrics


def token_values(critic_logits: torch.Tensor) -> torch.Tensor:
    """Critic output (b, t, 1) -> V of the state before each token, aligned to tokens: (b, t).

    The hidden state at position t-1 has seen exactly the tokens before t, so it values token t's state.
    """
    values = critic_logits[..., 0].float()
    return torch.nn.functional.pad(values[:, :-1], (1, 0))


def critic_objective(critic_logits: torch.Tensor, mb: MicroBatch, algo: PpoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss for the critic's output (b, t, 1)."""
    assert mb.old_values is not None and mb.returns is not None
    values = token_values(critic_logits)
    per_token, clipped = value_loss(values, mb.old_values, mb.returns, algo.value_clip)
    vf = aggregate(per_token, mb.loss_mask, "token_mean", num_tokens=mb.num_tokens)
    return algo.value_loss_coef * vf, {"value_loss": vf.detach(), "value_clip_frac": _token_share(clipped, mb)}


def sft_objective(logits: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean negative log-likelihood of the trained tokens."""
    nll = -logprobs_from_logits(logits, mb.token_ids)
    loss = aggregate(nll, mb.loss_mask, "token_mean", num_tokens=mb.num_tokens)
    return loss, {"sft_loss": loss.detach()}
