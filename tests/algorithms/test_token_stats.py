"""Chunked per-token logprobs and entropy: the same values and gradients as the plain formulas, and
peak memory that no longer grows by several (tokens x vocab) fp32 copies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from seamless.algorithms import token_stats
from seamless.algorithms.token_stats import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits


def _plain_logprobs(logits, ids):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return torch.nn.functional.pad(logp.gather(-1, ids[:, 1:, None])[..., 0], (1, 0))


def _plain_entropy(logits):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return torch.nn.functional.pad(-(logp.exp() * logp).sum(-1), (1, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_the_plain_formulas_across_chunk_edges(monkeypatch, dtype):
    monkeypatch.setattr(token_stats, "CHUNK_ELEMENTS", 7 * 50)  # 7 rows a chunk: edges inside sequences
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 11, 50, generator=gen) * 3).to(dtype)
    ids = torch.randint(0, 50, (3, 11), generator=gen)
    weights = torch.randn(3, 11, generator=gen)

    grads = []
    fused = lambda x, i: logprobs_and_entropy(x, i)  # noqa: E731
    apart = lambda x, i: (logprobs_from_logits(x, i), entropy_from_logits(x))  # noqa: E731
    plain = lambda x, i: (_plain_logprobs(x, i), _plain_entropy(x))  # noqa: E731
    for both in (fused, apart, plain):
        leaf = logits.clone().requires_grad_(True)
        lp, ent = both(leaf, ids)
        ((lp * weights).sum() + (ent * weights.flip(0)).sum()).backward()
        grads.append((lp.detach(), ent.detach(), leaf.grad.float()))
    ref_lp, ref_ent, ref_grad = grads[-1]
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 gradients round once, on the way out
    for lp, ent, grad in grads[:-1]:
        assert lp.dtype == torch.float32 and lp.shape == (3, 11) and (lp[:, 0] == 0).all() and (ent[:, 0] == 0).all()
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=tol, rtol=tol)


_MEASURE = r"""
import json, resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from seamless.algorithms.token_stats import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
plain = sys.argv[1] == "plain"
vocab, tokens = 150_000, 1024
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
ids = torch.randint(0, vocab, (1, tokens))
logits = model(input_ids=ids).logits  # (1, T, V) fp32, part of the graph
torch.autograd.grad(logits.sum(), logits)  # warm the allocator's bookkeeping, then measure from here
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if plain:
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
else:
    lp, ent = logprobs_and_entropy(logits, ids)
(lp.sum() + 0.01 * ent.sum()).backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_bytes": (after - before) * 1024, "logits_bytes": logits.numel() * 4,
                  "lp": lp.detach()[0, -5:].tolist(), "grad_norm": float(model.lm_head.weight.grad.norm())}))
"""


def _measure(kind: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, kind], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_150k_vocab_model_trains_without_extra_vocab_sized_fp32_copies():
    """Peak memory a token adds while its logprob and entropy are computed and back-propagated,
    beside the plain formulas on the same model: at most the logits' own gradient plus chunks."""
    chunked, plain = _measure("chunked"), _measure("plain")
    per_token_vocab = chunked["logits_bytes"]  # one fp32 (tokens x vocab) tensor
    # the same numbers
    assert chunked["lp"] == pytest.approx(plain["lp"], abs=1e-4)
    assert chunked["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    # the gradient of the logits (one fp32 copy, which autograd needs anyway) and a few chunks
    chunk_bytes = token_stats.CHUNK_ELEMENTS * 4
    assert chunked["extra_bytes"] < per_token_vocab + 6 * chunk_bytes, (chunked, plain)
    assert plain["extra_bytes"] > 2.5 * per_token_vocab, (chunked, plain)  # the bound above has teeth
