"""Multi-turn episodes, pause/resume around a weight reload, and bad input, against real vLLM."""

import threading
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from seamless.models.tiny import build_tiny_model
from seamless.config import TinyModelConfig
from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm


def _digit_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]


def test_five_tool_turns_become_one_sequence_with_the_right_loss_mask(proxy, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    messages = [{"role": "system", "content": "Use the calculator."}, {"role": "user", "content": "12*7?"}]
    completions = []
    for turn in range(5):
        # digits re-tokenize identically when the history is rendered again (one token per digit),
        # so the next prompt extends this one exactly
        reply = client.chat.completions.create(
            model="m", messages=messages, max_tokens=4, temperature=1.0, seed=turn,
            extra_body={"allowed_token_ids": _digit_ids(tokenizer), "return_token_ids": True})
        completions.append(reply.choices[0].token_ids)
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "tool", "tool_call_id": f"call_{turn}", "content": f"result {turn}"}]
    # allowed_token_ids constrains every answer: read the sequences as train_constrained trains them
    # (by default those tokens join as context, loss mask 0: tests/faults/test_constrained_sampling.py)
    trajectory = admin.get(f"/sessions/{session['session_id']}/trajectory?train_constrained=true").json()
    assert len(trajectory["turns"]) == 5 and trajectory["num_branches"] == 0
    (sequence,) = trajectory["sequences"]
    ids, mask = sequence["token_ids"], sequence["loss_mask"]
    assert sum(mask) == sum(len(c) for c in completions) == 20
    # the masked tokens are exactly the completions, in order
    assert [t for t, m in zip(ids, mask) if m] == [t for c in completions for t in c]
    # the sequence is the last prompt plus the last completion
    last = trajectory["turns"][-1]
    assert ids == last["prompt_token_ids"] + last["completion_token_ids"]
    assert "result 3" in tokenizer.decode(ids) and "<|im_start|>tool" in tokenizer.decode(ids)
    assert all(v == 0 for v, m in zip(sequence["weight_versions"], mask) if m)
    # each call's clock runs in order: reached the proxy, sent, headers, first token, end
    for turn in trajectory["turns"]:
        stamps = [turn[k] for k in ("started_at", "sent_at", "answered_at", "first_token_at", "ended_at")]
        assert stamps == sorted(stamps) and stamps[0] > 0, stamps


def test_a_rewritten_history_starts_a_new_branch(proxy):
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "one"}], max_tokens=3)
    client.chat.completions.create(model="m", max_tokens=3, messages=[
        {"role": "user", "content": "one, rewritten"},  # the agent changed its history
        {"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "two"}])
    trajectory = admin.trajectory(session["session_id"])
    assert trajectory["num_branches"] == 1
    assert len(trajectory["sequences"]) == 2


@pytest.fixture
def other_weights(tmp_path, tiny_model_dir, vllm_server):
    """A second set of weights for the same architecture; the server gets its own back afterwards."""
    folder = build_tiny_model(tmp_path / "seed1", TinyModelConfig(seed=1))
    yield folder
    _reload(vllm_server.url, tiny_model_dir)


def _reload(url: str, folder) -> None:
    response = httpx.post(f"{url}/collective_rpc", timeout=120,
                          json={"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
    assert response.status_code == 200, response.text


def test_a_call_spanning_pause_reload_resume_succeeds_with_two_weight_versions(proxy, vllm_server, other_weights):
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    first_tokens = threading.Event()
    result: dict = {}

    def agent() -> None:
        stream = client.completions.create(model="m", prompt="count", max_tokens=300, temperature=0.0,
                                           stream=True, extra_body={"ignore_eos": True})
        text = ""
        for chunk in stream:
            text += chunk.choices[0].text if chunk.choices else ""
            first_tokens.set()
        result["text"] = text

    thread = threading.Thread(target=agent)
    thread.start()
    assert first_tokens.wait(60)
    assert admin.post("/admin/pause", {"mode": "keep"}).json()["paused"] is True
    # a new call while paused waits instead of failing
    waiting = threading.Thread(target=lambda: result.setdefault(
        "during_pause", client.completions.create(model="m", prompt="x", max_tokens=2).choices[0].text))
    waiting.start()
    _reload(vllm_server.url, other_weights)
    assert "during_pause" not in result
    resumed_at = time.time()
    assert admin.post("/admin/resume", {"weight_version": 7}).json()["weight_version"] == 7
    thread.join(120)
    waiting.join(120)
    assert "text" in result and "during_pause" in result
    turns = admin.trajectory(session["session_id"])["turns"]
    (long_call,) = [t for t in turns if len(t["completion_token_ids"]) == 300]
    (paused_call,) = [t for t in turns if len(t["completion_token_ids"]) == 2]
    assert paused_call["weight_versions"] == [7, 7]  # it waited for the new weights
    # ... and that wait is part of the call on its clock (the agent was waiting for the LLM)
    assert paused_call["started_at"] <= paused_call["sent_at"] and paused_call["sent_at"] >= resumed_at
    versions = long_call["weight_versions"]
    assert versions[0] == 0 and versions[-1] == 7 and set(versions) == {0, 7}
    assert versions == sorted(versions)  # one switch, old tokens first
    admin.post("/admin/pause", {"mode": "keep"})
    admin.post("/admin/resume", {"weight_version": 0})
