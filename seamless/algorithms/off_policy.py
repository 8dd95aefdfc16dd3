"""Off-policy correction: rollouts come from older weights and from vLLM's numerics."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def truncated_is_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_old / pi_rollout, cap) per token: (B, T).

    old_logprobs: the trainer's logprobs under the weights the batch is trained from; rollout_logprobs:
    what vLLM reported when it sampled the token (older weights, different kernels). Truncation
    bounds the variance; the weights carry no gradient. Untrained positions get weight 0.
    """
    log_ratio = (old_logprobs - rollout_logprobs).clamp(max=20.0)
    return torch.exp(log_ratio).clamp(max=cap).detach() * mask


@dataclass(frozen=True)
class LogprobMismatch:
    """How far the trainer's logprobs are from the rollout's, over trained tokens."""

    mean_abs_diff: float
    max_abs_diff: float
    kl_k3: float
    """k3 estimate of KL(rollout || trainer), using the sampled tokens."""

    @classmethod
    def from_sums(cls, sums: dict[str, float]) -> LogprobMismatch:
        """From `mismatch_sums` of the whole batch, or of its parts combined (sums added, maxima by max)."""
        tokens = max(sums["mismatch_tokens"], 1.0)
        return cls(mean_abs_diff=sums["mismatch_abs_sum"] / tokens, max_abs_diff=sums["mismatch_abs_max"],
                   kl_k3=sums["mismatch_k3_sum"] / tokens)


def mismatch_sums(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                  mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The parts of `logprob_mismatch` that combine over pieces of a batch (micro-batches, ranks):
    masked sums and the token count add up, `mismatch_abs_max` combines by max."""
    diff = (trainer_logprobs - rollout_logprobs) * mask
    log_ratio = (trainer_logprobs - rollout_logprobs).clamp(-20.0, 20.0)
    k3 = torch.exp(log_ratio) - 1.0 - log_ratio
    return {"mismatch_abs_sum": (diff.abs() * mask).sum(),
            "mismatch_abs_max": diff.abs().max() if diff.numel() else torch.zeros(()),
            "mismatch_k3_sum": (k3 * mask).sum(), "mismatch_tokens": mask.sum()}


def logprob_mismatch(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> LogprobMismatch:
    """Training/inference mismatch of (B, T) logprobs over positions where mask is 1."""
    sums = mismatch_sums(trainer_logprobs, rollout_logprobs, mask)
    return LogprobMismatch.from_sums({key: float(value) for key, value in sums.items()})


def staleness_keep(oldest_versions: torch.Tensor, current_version: int, max_staleness: int) -> torch.Tensor:
    """Which sequences are fresh enough: (B,) bool.

    oldest_versions (B,) is the oldest weight version among a sequence's generated tokens (-1 when
    unknown: kept). A sequence is dropped when current_version - oldest > max_staleness.
    """
    known = oldest_versions >= 0
    return ~known | (current_version - oldest_versions <= max_staleness)
