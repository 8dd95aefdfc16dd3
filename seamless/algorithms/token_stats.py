"""Per-token log-probabilities and entropies of the next-token distribution, computed in chunks.

A plain `log_softmax(logits.float())` makes (tokens x vocab) fp32 copies of the logits, and autograd
keeps one for the backward pass: at 16k tokens and Qwen's 152k vocabulary that is about 10 GB per
copy. Here the logits are read a chunk of rows at a time (at most `CHUNK_ELEMENTS` fp32 values
materialized at once), only (tokens,) results are kept, and the backward pass recomputes the
softmax chunk by chunk from the logits autograd already holds. Values equal the plain formulas
(fp32 arithmetic throughout); gradients come back in the logits' dtype.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 25
"""fp32 values of one chunk (128 MiB): large enough that GPUs stay efficient, small beside the logits."""


def _chunks(rows: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class _TokenLogprob(torch.autograd.Function):
    """log softmax(z)[target] per row of z (N, V) -> (N,) fp32."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for rows in _chunks(*logits.shape):
            z = logits[rows].float()  # (n, V): the only fp32 copy, one chunk at a time
            lse[rows] = torch.logsumexp(z, dim=-1)
            out[rows] = z.gather(-1, targets[rows, None])[:, 0] - lse[rows]
        ctx.save_for_backward(logits, targets, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for rows in _chunks(*logits.shape):
            g = grad_out[rows, None].float()  # (n, 1)
            # d logp[target] / dz = onehot(target) - softmax(z)
            chunk = torch.exp(logits[rows].float() - lse[rows, None]).mul_(-g)
            chunk.scatter_add_(-1, targets[rows, None], g)
            grad[rows] = chunk.to(grad.dtype)
        return grad, None


class _LogprobEntropy(torch.autograd.Function):
    """(log softmax(z)[target], -sum p log p) per row of z (N, V) -> two (N,) fp32 tensors.

    One function for both, so a loss that uses both gets one (N, V) gradient, not two that
    autograd then adds into a third."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logprob = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        entropy, lse = torch.empty_like(logprob), torch.empty_like(logprob)
        for rows in _chunks(*logits.shape):
            z = logits[rows].float()
            lse[rows] = torch.logsumexp(z, dim=-1)
            logprob[rows] = z.gather(-1, targets[rows, None])[:, 0] - lse[rows]
            entropy[rows] = lse[rows] - (torch.exp(z - lse[rows, None]) * z).sum(-1)  # H = lse - E_p[z]
        ctx.save_for_backward(logits, targets, lse, entropy)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob: torch.Tensor | None, grad_entropy: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        logits, targets, lse, entropy = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for rows in _chunks(*logits.shape):
            logp = logits[rows].float() - lse[rows, None]  # (n, V)
            p = torch.exp(logp)
            chunk = torch.zeros_like(p)
            if grad_entropy is not None:  # dH/dz_k = -p_k (log p_k + H)
                chunk.addcmul_(p, logp.add_(entropy[rows, None]), value=-1.0).mul_(grad_entropy[rows, None].float())
            if grad_logprob is not None:  # d logp[target] / dz = onehot(target) - p
                g = grad_logprob[rows, None].float()
                chunk.sub_(p.mul_(g)).scatter_add_(-1, targets[rows, None], g)
            grad[rows] = chunk.to(grad.dtype)
        return grad, None


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B*T, V) without a copy when the logits are contiguous."""
    return logits.reshape(-1, logits.shape[-1])


def logprobs_from_logits(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the ones before it.

    logits (B, T, V) where logits[:, t] predicts token t+1; token_ids (B, T).
    Returns (B, T) fp32 aligned to tokens; position 0 (no prediction) is 0.
    """
    B, T, _ = logits.shape
    # position t predicts token t+1; the last position predicts nothing (its target is a dummy 0
    # and its value is dropped), which keeps the logits a contiguous (B*T, V) view
    targets = torch.nn.functional.pad(token_ids[:, 1:], (0, 1)).reshape(-1)  # (B*T,)
    picked = _TokenLogprob.apply(_rows(logits), targets).view(B, T)
    return torch.nn.functional.pad(picked[:, :-1], (1, 0))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned like `logprobs_from_logits`: (B, T) fp32."""
    return logprobs_and_entropy(logits, torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device))[1]


def logprobs_and_entropy(logits: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprobs_from_logits` and `entropy_from_logits` in one pass over the logits (and one
    gradient of them): what a policy loss with an entropy term needs. Both (B, T) fp32."""
    B, T, _ = logits.shape
    targets = torch.nn.functional.pad(token_ids[:, 1:], (0, 1)).reshape(-1)  # (B*T,)
    logprob, entropy = _LogprobEntropy.apply(_rows(logits), targets)
    shift = lambda x: torch.nn.functional.pad(x.view(B, T)[:, :-1], (1, 0))  # noqa: E731
    return shift(logprob), shift(entropy)
