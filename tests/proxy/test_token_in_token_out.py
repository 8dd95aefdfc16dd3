"""Token-in/token-out: multi-turn prompts spliced from recorded ids, against real vLLM, plus the
splicing rules on their own."""

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from seamless.config import ProxyConfig
from seamless.proxy.server import ProxyProcess
from seamless.proxy.tito import TemplateDrift, difference, find_continuation, splice
from seamless.types import Turn
from tests.proxy.helpers import Admin


def _turn(prompt, completion, finish="stop"):
    return Turn(session_id="s", index=0, prompt_token_ids=prompt, completion_token_ids=completion,
                completion_logprobs=[0.0] * len(completion), weight_versions=[0] * len(completion),
                finish_reason=finish, upstream="u", started_at=0.0, ended_at=0.0)


SYSTEM = {"role": "system", "content": "be brief"}
USER = {"role": "user", "content": "hi"}


def test_a_call_continues_the_latest_recorded_call_whose_messages_it_extends():
    first, second = _turn([1], [2]), _turn([1, 2, 3], [4])
    recorded = [(first, {"messages": [SYSTEM, USER]}),
                (second, {"messages": [SYSTEM, USER, {"role": "assistant", "content": "x"}, USER]})]
    answer = {"role": "assistant", "content": "y", "refusal": None}  # client extras do not matter
    found = find_continuation([SYSTEM, USER, {"role": "assistant", "content": "x"}, USER, answer, USER], recorded)
    assert found is not None and found.turn is second and found.messages_before_answer == 4
    # a rewritten history, a call that does not end its messages with an answer and new ones, n>1
    assert find_continuation([SYSTEM, {"role": "user", "content": "changed"}, answer, USER], recorded) is None
    assert find_continuation([SYSTEM, USER, answer], recorded) is None
    assert find_continuation([SYSTEM, USER, answer, USER], [(first, {"messages": [SYSTEM, USER], "n": 2})]) is None


def test_splice_keeps_the_sampled_end_of_turn_token_and_adds_the_templates_tail():
    end, newline = 9, 8
    sampled_end = _turn([1, 2], [5, 6, end])
    assert splice(sampled_end, [end, newline], [30, 31]) == [1, 2, 5, 6, end, newline, 30, 31]
    cut_by_length = _turn([1, 2], [5, 6], finish="length")  # the template closes it instead
    assert splice(cut_by_length, [end, newline], [30]) == [1, 2, 5, 6, end, newline, 30]
    assert difference([1, 2, 3], [1, 2], "x") == [3]
    with pytest.raises(TemplateDrift, match="renders earlier messages differently"):
        difference([1, 7, 3], [1, 2], "a new message")


@pytest.fixture(scope="module")
def tito_proxy(redis_server, vllm_server, tmp_path_factory):
    with ProxyProcess(redis_server.url, tmp_path_factory.mktemp("tito-proxy"), upstreams=[vllm_server.url],
                      prefix="tito", config=ProxyConfig(token_in_token_out=True, health_interval_s=0.5)) as process:
        yield process


def _conversation(proxy, tokenizer, turns: int) -> dict:
    """A chat whose answers re-tokenize differently: the model may only sample the token 'f', and
    the text 'ffffff' tokenizes as three 'ff' tokens."""
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    f = tokenizer.convert_tokens_to_ids("f")
    assert tokenizer.encode("ffffff", add_special_tokens=False) != [f] * 6  # the premise of the test
    messages = [SYSTEM, USER]
    for turn in range(turns):
        reply = client.chat.completions.create(model="m", messages=messages, max_tokens=6,
                                               extra_body={"allowed_token_ids": [f]})
        assert reply.choices[0].message.content == "ffffff"
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": f"again {turn}"}]
    # allowed_token_ids constrains every answer: read the sequences as train_constrained trains them
    return admin.get(f"/sessions/{session['session_id']}/trajectory?train_constrained=true").json()


@pytest.mark.vllm
def test_without_it_a_re_tokenized_answer_starts_a_new_branch_every_turn(proxy, tiny_model_dir):
    trajectory = _conversation(proxy, AutoTokenizer.from_pretrained(tiny_model_dir), turns=3)
    assert trajectory["num_branches"] == 2 and len(trajectory["sequences"]) == 3


@pytest.mark.vllm
def test_token_in_token_out_keeps_a_drifting_conversation_one_exact_sequence(tito_proxy, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trajectory = _conversation(tito_proxy, tokenizer, turns=4)
    assert trajectory["num_branches"] == 0
    (sequence,) = trajectory["sequences"]
    turns = trajectory["turns"]
    for before, after in zip(turns, turns[1:]):
        done = before["prompt_token_ids"] + before["completion_token_ids"]
        assert after["prompt_token_ids"][:len(done)] == done
    f = tokenizer.convert_tokens_to_ids("f")
    assert [t for t, m in zip(sequence["token_ids"], sequence["loss_mask"]) if m] == [f] * 24
    # the spliced prompt is what the template would show, with the sampled tokens kept
    text = tokenizer.decode(sequence["token_ids"])
    assert text.count("<|im_start|>assistant\nffffff<|im_end|>\n<|im_start|>user\nagain") == 3
    metrics = httpx.get(f"{tito_proxy.url}/metrics",
                        headers={"Authorization": f"Bearer {tito_proxy.admin_key}"}).text
    assert 'seamless_proxy_token_in_prompts_total{outcome="spliced"} 3' in metrics
    assert 'seamless_proxy_token_in_prompts_total{outcome="rendered"} 0' in metrics
