"""Training sequences sampled from the session's real vLLM server on the tiny model."""

from __future__ import annotations

import httpx
import pytest

from seamless.types import NO_VERSION, TrainingSequence

PROMPTS = ["What is 3 + 4?", "Compute 12 - 5.", "What is 7 + 9?", "Solve 20 - 13."]
GROUP_SIZE = 4


def _reward(completion: list[int]) -> float:
    """Any deterministic score that differs within a group will do: the trainer only needs signal."""
    return (sum(completion) % 7) / 7.0


def sample_sequences(server, tokenizer, max_tokens: int = 16) -> list[TrainingSequence]:
    """GROUP_SIZE samples per prompt, recorded token for token as the proxy would."""
    sequences = []
    for p, prompt in enumerate(PROMPTS):
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
        body = {"model": server.model_name, "prompt": prompt_ids, "max_tokens": max_tokens, "n": GROUP_SIZE,
                "temperature": 1.0, "logprobs": 1, "return_token_ids": True, "seed": 1000 + p}
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        for k, choice in enumerate(response.json()["choices"]):
            ids, logprobs = choice["token_ids"], choice["logprobs"]["token_logprobs"]
            assert len(ids) == len(logprobs) > 0
            n_p = len(prompt_ids)
            sequences.append(TrainingSequence(
                session_id=f"p{p}-{k}", token_ids=prompt_ids + ids, loss_mask=[0] * n_p + [1] * len(ids),
                rollout_logprobs=[0.0] * n_p + logprobs, weight_versions=[NO_VERSION] * n_p + [0] * len(ids),
                reward=_reward(ids), group_id=f"p{p}"))
    return sequences


@pytest.fixture(scope="session")
def rollout_sequences(vllm_server, tiny_model_dir) -> list[TrainingSequence]:
    from transformers import AutoTokenizer

    return sample_sequences(vllm_server, AutoTokenizer.from_pretrained(tiny_model_dir))
