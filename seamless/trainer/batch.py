"""From `TrainingSequence` records to padded tensors, and from those to micro-batches per rank.

A `TrainBatch` holds the whole step's sequences, right-padded to one length. Micro-batches are
packed greedily by a token budget that counts padding (what the forward pass actually costs),
then dealt to ranks so every rank runs the same number of forward/backward passes: ZeRO-3
gathers parameters inside each forward, so ranks must stay in lockstep. A rank with fewer real
micro-batches gets empty ones (one padding token, nothing trained).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from seamless.errors import ConfigError
from seamless.types import NO_VERSION, TrainingSequence


@dataclass(frozen=True)
class TrainBatch:
    """One step's sequences as right-padded tensors; B sequences, T = longest length."""

    token_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    loss_mask: torch.Tensor  # (B, T) float, 1 on trained (generated) tokens
    rollout_logprobs: torch.Tensor  # (B, T) float, vLLM's logprob of each generated token
    rewards: torch.Tensor  # (B,) float64
    oldest_versions: torch.Tensor  # (B,) long, NO_VERSION when unknown
    lengths: torch.Tensor  # (B,) long

    @classmethod
    def from_sequences(cls, sequences: list[TrainingSequence], pad_id: int) -> TrainBatch:
        assert sequences, "a batch needs at least one sequence"
        T = max(len(s.token_ids) for s in sequences)
        B = len(sequences)
        token_ids = torch.full((B, T), pad_id, dtype=torch.long)
        attention = torch.zeros(B, T, dtype=torch.long)
        loss_mask = torch.zeros(B, T)
        rollout = torch.zeros(B, T)
        for i, s in enumerate(sequences):
            n = len(s.token_ids)
            token_ids[i, :n] = torch.tensor(s.token_ids)
            attention[i, :n] = 1
            loss_mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
            rollout[i, :n] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
        # the first token has no prediction to train
        loss_mask[:, 0] = 0
        return cls(token_ids=token_ids, attention_mask=attention, loss_mask=loss_mask,
                   rollout_logprobs=rollout,
                   rewards=torch.tensor([s.reward for s in sequences], dtype=torch.float64),
                   oldest_versions=torch.tensor([s.oldest_version for s in sequences], dtype=torch.long),
                   lengths=torch.tensor([len(s.token_ids) for s in sequences], dtype=torch.long))

    @property
    def size(self) -> int:
        return self.token_ids.shape[0]


@dataclass(frozen=True)
class MicroBatch:
    """What one forward/backward pass on one rank needs. Optional tensors are absent in passes
    that do not use them (e.g. the logprob pass has no advantages yet)."""

    index: torch.Tensor  # (b,) rows of the TrainBatch, to scatter results back
    token_ids: torch.Tensor  # (b, t)
    attention_mask: torch.Tensor  # (b, t)
    loss_mask: torch.Tensor  # (b, t)
    old_logprobs: torch.Tensor | None = None  # (b, t)
    ref_logprobs: torch.Tensor | None = None  # (b, t)
    advantages: torch.Tensor | None = None  # (b, t)
    is_weights: torch.Tensor | None = None  # (b, t)
    old_values: torch.Tensor | None = None  # (b, t)
    returns: torch.Tensor | None = None  # (b, t)
    rollout_logprobs: torch.Tensor | None = None  # (b, t), only where the update measures its own old logprobs
    num_tokens: float = 1.0
    """Trained tokens in the whole mini-batch (all ranks): the denominator of token means."""
    num_seqs: float = 1.0
    """Sequences with at least one trained token in the whole mini-batch (all ranks)."""

    @property
    def is_empty(self) -> bool:
        return self.index.numel() == 0

    @property
    def num_real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack_by_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Group sequence indices so that (sequences in a group) x (longest in it) <= budget.

    Longest first, so sequences of similar length share a micro-batch and padding stays small.
    """
    longest = max(lengths)
    if longest > budget:
        raise ConfigError(f"a sequence of {longest} tokens exceeds trainer.micro_batch_tokens={budget}; "
                          f"raise trainer.micro_batch_tokens to at least {longest}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        # the first member of a group is its longest, so a new member costs groups[-1][0]'s length
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def deal_to_ranks(groups: list[list[int]], lengths: list[int], world: int) -> list[list[list[int]]]:
    """Give each rank the same number of micro-batches, balancing tokens; pad with empty ones."""
    per_rank = -(-len(groups) // world)
    ranks: list[list[list[int]]] = [[] for _ in range(world)]
    load = [0] * world
    for group in sorted(groups, key=lambda g: -sum(lengths[i] for i in g)):
        open_ranks = [r for r in range(world) if len(ranks[r]) < per_rank]
        r = min(open_ranks, key=lambda k: load[k])
        ranks[r].append(group)
        load[r] += sum(lengths[i] for i in group)
    for r in range(world):
        ranks[r] += [[] for _ in range(per_rank - len(ranks[r]))]
    return ranks


def slice_micro_batch(batch: TrainBatch, rows: list[int], pad_id: int, **per_token: torch.Tensor | None) -> MicroBatch:
    """Rows of the batch, trimmed to their longest length; `per_token` are (B, T) tensors to slice too."""
    if not rows:  # an empty pass keeps collectives in lockstep and trains nothing
        one = torch.full((1, 2), pad_id, dtype=torch.long)
        zeros = torch.zeros(1, 2)
        extra = {k: (None if v is None else zeros.clone()) for k, v in per_token.items()}
        return MicroBatch(index=torch.zeros(0, dtype=torch.long), token_ids=one,
                          attention_mask=torch.ones_like(one), loss_mask=zeros, **extra)
    index = torch.tensor(rows, dtype=torch.long)
    t = int(batch.lengths[index].max())
    extra = {k: (None if v is None else v[index, :t].contiguous()) for k, v in per_token.items()}
    return MicroBatch(index=index, token_ids=batch.token_ids[index, :t].contiguous(),
                      attention_mask=batch.attention_mask[index, :t].contiguous(),
                      loss_mask=batch.loss_mask[index, :t].contiguous(), **extra)


def with_denominators(micro_batches: list[list[MicroBatch]], loss_mask: torch.Tensor,
                      rows: list[int]) -> list[list[MicroBatch]]:
    """Stamp every micro-batch with its mini-batch's global token and sequence counts."""
    mask = loss_mask[rows]
    num_tokens = float(mask.sum())
    num_seqs = float((mask.sum(-1) > 0).sum())
    return [[replace(mb, num_tokens=num_tokens, num_seqs=num_seqs) for mb in rank] for rank in micro_batches]


def scatter_rows(batch_size: int, width: int, micro_batches: list[MicroBatch],
                 values: list[torch.Tensor]) -> torch.Tensor:
    """Put per-micro-batch (b, t) results back into one (B, T) tensor (zeros elsewhere)."""
    out = torch.zeros(batch_size, width)
    for mb, v in zip(micro_batches, values):
        if not mb.is_empty:
            out[mb.index, : v.shape[1]] = v.float()
    return out


__all__ = ["MicroBatch", "NO_VERSION", "TrainBatch", "deal_to_ranks", "pack_by_tokens", "scatter_rows",
           "slice_micro_batch", "with_denominators"]
