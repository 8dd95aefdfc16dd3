"""What one training step reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def add_share(sums: dict[str, float], key: str, value: float) -> None:
    """Fold one micro-batch's or rank's share of a metric into `sums`: maxima (keys ending in
    `_max`) combine by max, everything else adds up."""
    if key.endswith("_max"):
        sums[key] = max(sums.get(key, value), value)
    else:
        sums[key] = sums.get(key, 0.0) + value


@dataclass(frozen=True)
class StepMetrics:
    """Metrics of one `Trainer.train_step`; token means are over trained tokens of the step."""

    step: int
    """Optimizer-independent count of RL steps done, this one included."""
    num_sequences: int
    """Sequences trained on (after filters)."""
    num_dropped_stale: int
    num_dropped_uniform: int
    """Dropped by dynamic sampling (all rewards of the group equal)."""
    num_tokens: int
    """Tokens forwarded per pass (prompts included, padding not)."""
    num_trained_tokens: int
    loss: float
    """Total policy loss of the first mini-batch of the first epoch."""
    policy_loss: float
    kl_loss: float
    entropy: float
    clip_frac: float
    dual_clip_frac: float
    approx_kl: float
    """k3 KL(old || new) on sampled tokens, averaged over optimizer steps."""
    grad_norm: float
    """Policy gradient norm before clipping, averaged over optimizer steps."""
    lr: float
    reward_mean: float
    advantage_mean: float
    mismatch_mean_abs: float
    """Mean |trainer logprob - rollout logprob| over trained tokens, before this step's update."""
    mismatch_max_abs: float
    mismatch_kl: float
    is_weight_mean: float
    """Mean truncated importance weight (1.0 when TIS is off)."""
    kl_penalty: float = 0.0
    """Mean per-token KL penalty subtracted from rewards (kl_in_reward)."""
    value_loss: float = 0.0
    value_clip_frac: float = 0.0
    critic_grad_norm: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)
    """Policy loss per PPO epoch (mean over its mini-batches): falls as the epochs fit the batch."""
    step_time_s: float = 0.0
    tokens_per_s: float = 0.0
    """Forwarded tokens x passes / step time: training throughput over every pass the step ran (one
    per epoch, plus the no-grad logprob pass when the step needs one)."""

    def to_dict(self, prefix: str = "train/") -> dict[str, float]:
        """Flat numbers for a logger."""
        out = {f"{prefix}{k}": float(v) for k, v in asdict(self).items() if not isinstance(v, list)}
        for i, loss in enumerate(self.epoch_losses):
            out[f"{prefix}epoch{i}_loss"] = loss
        return out


@dataclass(frozen=True)
class SftMetrics:
    step: int
    loss: float
    grad_norm: float
    num_tokens: int
    tokens_per_s: float
