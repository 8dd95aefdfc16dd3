import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seamless.config import TinyModelConfig
from seamless.models.tiny import build_tiny_model

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}]


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_files_other_seed_other_weights(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", TinyModelConfig(seed=0))
    assert _digest(again) == _digest(tiny_model_dir)
    other = build_tiny_model(tmp_path / "other", TinyModelConfig(seed=1))
    assert _digest(other)["model.safetensors"] != _digest(tiny_model_dir)["model.safetensors"]


def test_folder_loads_in_transformers_with_the_requested_size(tmp_path):
    spec = TinyModelConfig(hidden_size=64, num_layers=3, num_heads=2, num_kv_heads=1,
                           intermediate_size=96, vocab_size=400)
    folder = build_tiny_model(tmp_path / "m", spec)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tokenizer)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    ids = tokenizer("What is 12 + 34?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_digits_are_single_tokens_and_text_round_trips(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Answer: 12345 = 12 * 1028 + 9, done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    digit_tokens = [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).strip().isdigit()]
    assert all(len(t.strip()) == 1 for t in digit_tokens)


def test_chat_template_renders_every_role_and_the_tools(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "2+3"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.\n\n# Tools\nYou may call functions. Their signatures are "
        "inside <tools></tools>:\n<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>\n"
        'To call one, answer with <tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>tool\n5<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 5.<|im_end|>\n"
        "<|im_start|>assistant\n")
    # dict arguments (as vLLM passes them after parsing) render the same
    messages[2]["tool_calls"][0]["function"]["arguments"] = {"expression": "2+3"}
    assert tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                         add_generation_prompt=True) == text
    # without tools or a system message there is no system block
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                          add_generation_prompt=False)
    assert plain == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.vllm
def test_vllm_hermes_parser_reads_the_templates_tool_calls(tiny_model_dir):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    output = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "7*6"}}\n</tool_call>'
    # the markers must be single, non-special tokens that survive skip_special_tokens
    ids = tokenizer.encode(output, add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids("<tool_call>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == output
    parser = Hermes2ProToolParser(tokenizer)
    request = ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": "7*6"}], tools=TOOLS)
    info = parser.extract_tool_calls(output, request)
    assert info.tools_called
    assert info.tool_calls[0].function.name == "calculator"
    assert json.loads(info.tool_calls[0].function.arguments) == {"expression": "7*6"}
