import json

import httpx
import psutil
import pytest
import torch

from seamless.errors import ServiceError
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

pytestmark = pytest.mark.vllm


def test_chat_completion_token_ids_decode_and_logprobs_match_transformers(vllm_server, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "system", "content": "You answer arithmetic."},
                {"role": "user", "content": "What is 12 + 7?"}]
    body = {"model": vllm_server.model_name, "messages": messages, "max_tokens": 24,
            "temperature": 0.0, "logprobs": True, "return_token_ids": True}
    response = httpx.post(f"{vllm_server.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    choice = data["choices"][0]
    prompt_ids, completion_ids = data["prompt_token_ids"], choice["token_ids"]
    served_logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
    assert len(completion_ids) == len(served_logprobs) > 0

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # the server rendered the same chat template we ship
    assert prompt_ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
    text = choice["message"]["content"] or ""
    assert tokenizer.decode(completion_ids, skip_special_tokens=True) == text

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (T_completion, V)
    ours = torch.log_softmax(logits.double(), dim=-1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]
    assert torch.allclose(ours, torch.tensor(served_logprobs, dtype=torch.float64), atol=1e-4), (
        (ours - torch.tensor(served_logprobs)).abs().max())
    # greedy: every completion token is the argmax of the transformers logits
    assert logits.argmax(-1).tolist() == completion_ids


def test_completions_accept_token_ids_and_stream_them(vllm_server):
    body = {"model": vllm_server.model_name, "prompt": [5, 6, 7, 8], "max_tokens": 8,
            "temperature": 0.0, "return_token_ids": True, "stream": True,
            "ignore_eos": True}
    streamed: list[int] = []
    with httpx.stream("POST", f"{vllm_server.url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: "):])
                streamed += chunk["choices"][0].get("token_ids") or []
    body.pop("stream")
    whole = httpx.post(f"{vllm_server.url}/v1/completions", json=body, timeout=120).json()
    assert streamed == whole["choices"][0]["token_ids"]
    assert len(streamed) == 8


def test_server_listens_only_on_loopback(vllm_server):
    process = psutil.Process(vllm_server.pid)
    listening = [c for p in [process, *process.children(recursive=True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening
    assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    server = VLLMServer(broken, tmp_path / "vllm", VLLMServerOptions(startup_timeout_s=240))
    with pytest.raises(ServiceError) as err:
        server.start()
    message = str(err.value)
    assert "exited with code" in message and "server.log" in message
    assert "no-such-architecture" in message
