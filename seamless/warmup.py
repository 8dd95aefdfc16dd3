"""Supervised warm-start data: the agent's own prompts followed by the answers it should give.

Each sequence is built from text pieces, each tokenized on its own and concatenated. Pieces are
cut only where the tokenizer cannot merge across (after `<|im_end|>` or `assistant\\n`), so the
tokens equal what vLLM gets from re-tokenizing the rendered conversation: the prompt tokens of a
warm-start sequence are exactly the prompt tokens of the agent's real request.
Loss mask 1 on the tokens the model should produce (answer, tool call, and `<|im_end|>`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from typing import Any

from seamless.agent_specs import agents_package
from seamless.config import SftWarmupConfig
from seamless.data import Task, TaskSet
from seamless.types import NO_VERSION, TrainingSequence

IM_END = "<|im_end|>"
WARMUP_STREAM_START = 10_000_000
"""Index in the train stream where the warm-up draws its tasks: far from the RL tasks of early
steps (step k trains on tasks k*B .. k*B+B-1)."""


def _render(tokenizer, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=generation_prompt,
                                         tokenize=False)


def _sequence(tokenizer, task: Task, pieces: list[tuple[str, bool]]) -> TrainingSequence:
    token_ids: list[int] = []
    mask: list[int] = []
    for text, trained in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        token_ids += ids
        mask += [int(trained)] * len(ids)
    return TrainingSequence(session_id=f"warmup-{task.task_id}", token_ids=token_ids, loss_mask=mask,
                            rollout_logprobs=[0.0] * len(token_ids),
                            weight_versions=[NO_VERSION] * len(token_ids), reward=1.0, task_id=task.task_id)


def math_sequence(task: Task, tokenizer) -> TrainingSequence:
    """The math agent's prompt, then `answer<|im_end|>`."""
    agents_package()  # the example agents live beside seamless/, maybe not on sys.path
    from agents.math_agent import build_messages

    prompt = _render(tokenizer, build_messages(task), None, True)
    return _sequence(tokenizer, task, [(prompt, False), (task.answer + IM_END, True)])


def calculator_expression(task: Task) -> str:
    """The expression the calculator should be called with, from an arithmetic task's metadata."""
    meta = task.metadata
    if not {"a", "op", "b"} <= meta.keys():
        raise ValueError(f"task {task.task_id} has no a/op/b metadata; the calculator warm-start needs "
                         "generated arithmetic tasks (data.source: arithmetic)")
    return f"{meta['a']} {meta['op']} {meta['b']}"


def calculator_sequence(task: Task, tokenizer) -> TrainingSequence:
    """Prompt with the tool, a Hermes tool call, the tool's result, then `answer<|im_end|>`."""
    agents_package()
    from agents.calculator_agent import CALCULATOR_TOOL, TOOL_NAME, build_messages
    from agents.calculator_tool import calculate

    tools = [CALCULATOR_TOOL]
    messages = build_messages(task)
    expression = calculator_expression(task)
    arguments = json.dumps({"expression": expression})
    call_text = f"<tool_call>\n{json.dumps({'name': TOOL_NAME, 'arguments': {'expression': expression}})}\n</tool_call>"
    # what the agent appends after a tool call (structured form; the template renders it as call_text)
    after_call = messages + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0_0", "type": "function", "function": {"name": TOOL_NAME, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_0_0", "content": calculate(expression)}]
    prompt = _render(tokenizer, messages, tools, True)
    second_prompt = _render(tokenizer, after_call, tools, True)
    generated = call_text + IM_END
    assert second_prompt.startswith(prompt + generated), "chat template does not extend the first prompt"
    between = second_prompt[len(prompt + generated):]  # "\n<|im_start|>tool\n...<|im_start|>assistant\n"
    return _sequence(tokenizer, task, [(prompt, False), (generated, True), (between, False),
                                       (task.answer + IM_END, True)])


_BUILDERS = {"math": math_sequence, "calculator": calculator_sequence}


def warmup_sequences(tasks: Sequence[Task], tokenizer, agent: str = "math") -> list[TrainingSequence]:
    """Warm-start sequences for `agent` (`math` or `calculator`) on `tasks`."""
    if agent not in _BUILDERS:
        raise ValueError(f"no warm-start data for agent {agent!r}; use one of {sorted(_BUILDERS)} "
                         "(for a custom agent, skip the supervised warm-up)")
    build = _BUILDERS[agent]
    return [build(task, tokenizer) for task in tasks]


def supervised_warmup(trainer: Any, tasks: TaskSet, tokenizer, warm: SftWarmupConfig, agent: str,
                      progress: bool = True) -> list[float]:
    """`warm.steps` supervised steps of `trainer` (a seamless Trainer) on the agent's warm-start
    sequences; the loss of each step."""
    from tqdm import tqdm

    stream = tasks.train_stream(start=WARMUP_STREAM_START)
    steps = tqdm(range(warm.steps), desc="warm-up (SFT)", unit="step", dynamic_ncols=True, disable=not progress)
    return [trainer.sft_step(warmup_sequences([next(stream) for _ in range(warm.batch_size)], tokenizer, agent)).loss
            for _ in steps]
