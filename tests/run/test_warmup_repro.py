"""The supervised warm-up is reproducible and is the textbook SFT loop.

Two runs with one seed must print the same warm-up loss and held-out accuracy before RL (issue 15):
the tiny model's files are the same for a seed (tests/models/test_tiny.py), so what is left is
the warm-up through the trainer (same losses, same weights, bit for bit) and greedy scoring on
vLLM (same answers when asked twice, whatever the batch). The warm-up's math is pinned against
plain PyTorch: token-mean NLL of the trained tokens, AdamW, gradient clipping at trainer.grad_clip,
one optimizer step per batch of trainer.sft_warmup.batch_size sequences.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch

from seamless.agent.tasks import load_tasks
from seamless.config import load_recipe
from seamless.run.warmup import WARMUP_STREAM_START, supervised_warmup, warmup_sequences
from seamless.trainer import Trainer

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def _recipe():
    return load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", [f"trainer.sft_warmup.steps={STEPS}"])


def _seamless_warmup(model_dir) -> tuple[list[float], dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    recipe = _recipe()
    with Trainer.from_recipe(recipe, model_dir, num_ranks=1) as trainer:
        losses = supervised_warmup(trainer, load_tasks(recipe.data), AutoTokenizer.from_pretrained(model_dir),
                                   recipe.trainer.sft_warmup, recipe.rollout.agent, progress=False)
        weights = {n: t.clone() for bucket in trainer.export_weights(bucket_bytes=1 << 20) for n, t in bucket}
    return losses, weights


def _plain_warmup(model_dir) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same warm-up written out: same sequences, same optimizer, one batch per step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = _recipe()
    warm, tokenizer = recipe.trainer.sft_warmup, AutoTokenizer.from_pretrained(model_dir)
    stream = load_tasks(recipe.data).train_stream(start=WARMUP_STREAM_START)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=warm.lr, weight_decay=recipe.trainer.weight_decay,
                                  betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(STEPS):
        sequences = warmup_sequences([next(stream) for _ in range(warm.batch_size)], tokenizer, recipe.rollout.agent)
        width = max(len(s.token_ids) for s in sequences)
        ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
        attention, mask = torch.zeros_like(ids), torch.zeros(len(sequences), width)
        for i, s in enumerate(sequences):
            ids[i, : len(s.token_ids)] = torch.tensor(s.token_ids)
            attention[i, : len(s.token_ids)] = 1
            mask[i, : len(s.token_ids)] = torch.tensor(s.loss_mask, dtype=torch.float32)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]  # (B, T-1, V) predicts ids[:, 1:]
        nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.trainer.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach() for n, p in model.named_parameters()}


def test_two_warmups_with_one_seed_are_identical_and_equal_plain_pytorch(ray_cluster, tiny_model_dir):
    first_losses, first = _seamless_warmup(tiny_model_dir)
    second_losses, second = _seamless_warmup(tiny_model_dir)
    assert first_losses == second_losses
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    plain_losses, plain = _plain_warmup(tiny_model_dir)
    assert first_losses == pytest.approx(plain_losses, rel=1e-4)
    moved = max(float((plain[k] - first[k]).abs().max()) for k in plain)
    assert moved < 1e-4, f"seamless's warm-up and plain PyTorch's end {moved:.2e} apart"


def test_greedy_scoring_gives_the_same_answers_twice(vllm_server, tiny_model_dir):
    """Held-out accuracy before RL is greedy answers on vLLM, all tasks at once: the same twice."""
    from agents.math_agent import build_messages

    recipe = _recipe()
    tasks = load_tasks(recipe.data).eval_tasks

    async def answers() -> list[str]:
        async with httpx.AsyncClient(base_url=vllm_server.url, timeout=120) as client:
            async def one(task):
                body = {"model": vllm_server.model_name, "messages": build_messages(task), "temperature": 0.0,
                        "max_tokens": recipe.rollout.max_tokens}
                reply = await client.post("/v1/chat/completions", json=body)
                reply.raise_for_status()
                return reply.json()["choices"][0]["message"]["content"]
            return await asyncio.gather(*(one(t) for t in tasks))

    assert asyncio.run(answers()) == asyncio.run(answers())


def test_an_exported_warm_start_loads_as_the_model_and_leaves_the_sessions_ray_up(ray_cluster, tiny_model_dir,
                                                                                   tmp_path):
    """What bench_e2e.py and run_policies.py start every run from (seamless/run/warm_start.py)."""
    import ray
    from transformers import AutoModelForCausalLM

    from seamless.run.warm_start import export_warm_start

    recipe = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml",
                         [f"trainer.sft_warmup.steps={STEPS}", f"model.path={tiny_model_dir}"])
    start = export_warm_start(recipe, tmp_path)
    assert ray.is_initialized()  # it joined the session's Ray, so it must not stop it
    assert start.folder == tmp_path / "warm" and f"{STEPS} steps" in start.note
    warmed = AutoModelForCausalLM.from_pretrained(start.folder, dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert warmed.keys() == base.keys() and any(not torch.equal(warmed[k], base[k]) for k in base)
    again = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", start.overrides())
    assert again.model.path == str(start.folder) and again.trainer.sft_warmup.steps == 0
