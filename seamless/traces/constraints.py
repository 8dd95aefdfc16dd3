"""Which request parameters make a call's tokens something other than a free draw from the policy.

vLLM reports each sampled token's logprob under the model's own distribution, but a call may have
sampled from a changed one: structured outputs and `guided_*` mask every token the grammar
forbids (a forced choice is recorded at logprob 0.0 after masking, or at its raw logprob), a
`logit_bias`, `allowed_token_ids` or `bad_words` shift or cut the distribution, a named or
required `tool_choice` runs the tool call through a grammar, `min_tokens` forbids stopping,
penalties reweight tokens already seen. Training on such tokens as if the policy had chosen them
teaches it what the constraint did. The codec marks every turn of such a call with the names
found here (`Turn.constraints`), and `traces/merge.py` keeps them out of the loss unless the recipe
says `rollout.train_constrained: true`. Imports nothing beyond the standard library.
"""

from __future__ import annotations

from typing import Any

GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_whitespace_pattern",
          "structural_tag")
"""vLLM's older structured-output parameters (each one alone constrains)."""
MASKS = ("structured_outputs", "logit_bias", "allowed_token_ids", "bad_words", "logits_processors",
         "vllm_xargs", "thinking_token_budget")
"""Parameters that constrain sampling whenever they are set to something non-empty."""
NEUTRAL = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_tokens": 0}
"""Parameters that reweight or mask tokens unless they have these values."""


def constraints_of(request: dict[str, Any] | None) -> tuple[str, ...]:
    """The request keys under which its tokens were sampled from something other than the policy's
    distribution (sorted); () for a free draw (temperature, top_p, top_k, stop and seed only
    choose how the policy's own distribution is sampled or cut off)."""
    if not isinstance(request, dict):
        return ()
    found = {name for name in (*GUIDED, *MASKS) if request.get(name) not in (None, "", {}, [], False)}
    found |= {name for name, neutral in NEUTRAL.items() if request.get(name) not in (None, neutral)}
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        found.add("response_format")
    tool_choice = request.get("tool_choice")
    if request.get("tools") and (tool_choice == "required" or isinstance(tool_choice, dict)):
        found.add("tool_choice")
    return tuple(sorted(found))


PROMPT_REPLACING = {
    "kv_transfer_params": "it can carry prompt_token_ids that vLLM generates from instead of the messages",
    "ec_transfer_params": "it hands vLLM encoder outputs computed elsewhere",
    "prompt_embeds": "vLLM would condition on embeddings, which the trace cannot hold as tokens",
}
"""Request keys that would make vLLM condition on something other than the prompt the trace records;
the proxy refuses them (an agent of a run has no use for disaggregated-serving plumbing)."""


def prompt_replacement(request: dict[str, Any]) -> tuple[str, str] | None:
    """(key, why) when the proxy must refuse this request (a key that replaces the recorded
    prompt), else None."""
    for name, why in PROMPT_REPLACING.items():
        if request.get(name) not in (None, {}, [], ""):
            return name, (f"'{name}' is not accepted through the seamless proxy: {why}, so the trace would "
                          "not record what the model was conditioned on")
    return None
