import pytest

from seamless.agent.api import Sampling
from seamless.agent.runner import AgentRunner
from seamless.agent.tasks import Task
from seamless.errors import ConfigError
from seamless.types import NO_VERSION
from seamless.run.warmup import warmup_sequences
from tests.proxy.helpers import Admin

TASK = Task("add-7-5", "What is 7 + 5?", "12", {"a": "7", "op": "+", "b": "5"})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _parts(tokenizer, sequence):
    """Decoded runs of tokens with the same mask value: [(text, mask), ...]."""
    runs, start = [], 0
    for i in range(1, len(sequence.token_ids) + 1):
        if i == len(sequence.token_ids) or sequence.loss_mask[i] != sequence.loss_mask[start]:
            runs.append((tokenizer.decode(sequence.token_ids[start:i]), sequence.loss_mask[start]))
            start = i
    return runs


def test_math_warmup_masks_exactly_the_answer(tokenizer):
    [seq] = warmup_sequences([TASK], tokenizer, "math")
    assert _parts(tokenizer, seq) == [
        ("<|im_start|>system\nAnswer with the final number only.<|im_end|>\n<|im_start|>user\n"
         "What is 7 + 5?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("12<|im_end|>", 1)]
    assert set(seq.rollout_logprobs) == {0.0} and set(seq.weight_versions) == {NO_VERSION}
    assert seq.num_generated == 3  # "1", "2", "<|im_end|>": digits are one token each


def test_calculator_warmup_teaches_the_tool_call_then_the_answer(tokenizer):
    [seq] = warmup_sequences([TASK], tokenizer, "calculator")
    parts = _parts(tokenizer, seq)
    assert [mask for _, mask in parts] == [0, 1, 0, 1]
    assert parts[1][0] == ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "7 + 5"}}\n'
                           "</tool_call><|im_end|>")
    assert parts[2][0] == "\n<|im_start|>tool\n12<|im_end|>\n<|im_start|>assistant\n"
    assert parts[3][0] == "12<|im_end|>"
    # the pieces tokenize as the whole text does: no drift when vLLM re-tokenizes the conversation
    text = tokenizer.decode(seq.token_ids)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == seq.token_ids


def test_warmup_rejects_unknown_agents_and_tasks_without_expressions(tokenizer):
    with pytest.raises(ConfigError, match="rollout.agent 'mine' supplies no warm-start data"):
        warmup_sequences([TASK], tokenizer, "mine")
    with pytest.raises(ConfigError, match="rollout.agent 'agents.rewards:integer_match' supplies no warm-start"):
        warmup_sequences([TASK], tokenizer, "agents.rewards:integer_match")
    with pytest.raises(ValueError, match="a/op/b metadata"):
        warmup_sequences([Task("x", "What is 1 + 1?", "2")], tokenizer, "calculator")


@pytest.mark.vllm
@pytest.mark.parametrize("agent", ["math", "calculator"])
def test_warmup_prompt_is_the_prompt_vllm_sees(proxy, tokenizer, agent):
    runner = AgentRunner(proxy.url, proxy.admin_key, agent, timeout_s=60, max_turns=1,
                         sampling=Sampling(temperature=0.0, max_tokens=1))
    [[result]] = runner.run_groups_sync([TASK], 1)
    recorded = Admin(proxy).trajectory(result.session_id)["turns"][0]["prompt_token_ids"]
    [seq] = warmup_sequences([TASK], tokenizer, agent)
    prompt_len = seq.loss_mask.index(1)
    assert seq.token_ids[:prompt_len] == recorded


@pytest.mark.vllm
def test_openai_agents_warmup_prompt_is_the_prompt_vllm_sees(tool_proxy, tokenizer):
    """The SDK agent's Responses call, as the proxy renders it, starts with the warm-up's prompt."""
    from agents.openai_sdk_calculator import sdk_python
    from seamless.agent.specs import AgentFailed

    try:
        sdk_python()
    except AgentFailed as exc:
        pytest.skip(str(exc))
    runner = AgentRunner(tool_proxy.url, tool_proxy.admin_key, "openai-agents", timeout_s=120, max_turns=1,
                         sampling=Sampling(temperature=0.0, max_tokens=1))
    [[result]] = runner.run_groups_sync([TASK], 1)
    assert "incomplete" in (result.error or "")  # one token is a cut-off answer, which the SDK raises on
    recorded = Admin(tool_proxy).trajectory(result.session_id)["turns"][0]["prompt_token_ids"]
    [seq] = warmup_sequences([TASK], tokenizer, "openai-agents")
    assert seq.token_ids[:seq.loss_mask.index(1)] == recorded
