"""Supervised warm-start: a few SFT steps on the agent's own prompts followed by the answers it
should give, so a tiny policy knows the task's format before RL.

The data comes from the agent (its `warmup` attribute, see `agent.api.WarmupFn`) as text pieces;
each piece is tokenized on its own and the ids concatenated. Pieces are cut only where the
tokenizer cannot merge across (after `<|im_end|>` or `assistant\\n`), so the tokens equal what
vLLM gets from re-tokenizing the rendered conversation: the prompt tokens of a warm-start sequence
are exactly the prompt tokens of the agent's real request. Loss mask 1 on the tokens the model
should produce (answer, tool call, and `<|im_end|>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seamless.agent.specs import resolve_warmup
from seamless.config import SftWarmupConfig
from seamless.agent.tasks import Task, TaskSet
from seamless.types import NO_VERSION, TrainingSequence

IM_END = "<|im_end|>"
WARMUP_STREAM_START = 10_000_000
"""Index in the train stream where the warm-up draws its tasks: far from the RL tasks of early
steps (step k trains on tasks k*B .. k*B+B-1)."""


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    """The conversation as the model's chat template renders it (text, as vLLM renders it too)."""
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


def warmup_sequences(tasks: Sequence[Task], tokenizer, agent: str = "math") -> list[TrainingSequence]:
    """Warm-start sequences for the agent `agent` (a `rollout.agent` spec) on `tasks`."""
    demonstrate = resolve_warmup(agent)
    return [_sequence(tokenizer, task, demonstrate(task, tokenizer)) for task in tasks]


def supervised_warmup(trainer: Any, tasks: TaskSet, tokenizer, warm: SftWarmupConfig, agent: str,
                      progress: bool = True) -> list[float]:
    """`warm.steps` supervised steps of `trainer` (a seamless Trainer) on the agent's warm-start
    sequences; the loss of each step."""
    from tqdm import tqdm

    stream = tasks.train_stream(start=WARMUP_STREAM_START)
    steps = tqdm(range(warm.steps), desc="warm-up (SFT)", unit="step", dynamic_ncols=True, disable=not progress)
    return [trainer.sft_step(warmup_sequences([next(stream) for _ in range(warm.batch_size)], tokenizer, agent)).loss
            for _ in steps]
