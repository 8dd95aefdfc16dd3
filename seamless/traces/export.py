"""The run folder's trace export: what every training step learned from, token by token.

`<run_dir>/traces/step-000007.jsonl` holds one line per episode that step 7 trained: its session,
task, group and reward, its LLM calls (lengths, finish reason, server, timing) and the merged
training sequences (token ids, loss mask, vLLM logprobs, weight version per token). A step's file
is written whole (temporary file, then rename) after the step trains and before its checkpoint;
a resume deletes the files of steps after the checkpoint it restores, which it trains again, so a
run killed and resumed has exactly one file per step and every trained episode in exactly one.

Redis keeps the raw turns only until they are acknowledged (then they expire); these files are
the record that stays, in plain JSON for notebooks and `jq`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from seamless.errors import SeamlessError
from seamless.types import Trajectory, TrainingSequence, Turn

TRACES_DIR = "traces"


@dataclass(frozen=True, slots=True)
class TracedCall:
    """One LLM call of a traced episode (its tokens are in the episode's sequences)."""

    index: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    upstream: str
    started_at: float
    """When the agent's request reached the proxy (wall clock; the fields below as on `Turn`)."""
    ended_at: float
    sent_at: float = 0.0
    answered_at: float = 0.0
    first_token_at: float = 0.0
    """0.0 for the stamps of trace files written before the proxy recorded them."""


@dataclass(frozen=True, slots=True)
class TracedEpisode:
    """One line of a step's trace file, read back."""

    step: int
    entry_id: str
    """The finished-episode stream entry the trainer took it from."""
    session_id: str
    task_id: str | None
    group_id: str | None
    reward: float
    calls: list[TracedCall]
    sequences: list[TrainingSequence]
    num_branches: int
    metadata: dict[str, str]


def step_path(run_dir: Path, step: int) -> Path:
    return run_dir / TRACES_DIR / f"step-{step:06d}.jsonl"


def _call_record(turn: Turn) -> dict:
    return asdict(TracedCall(index=turn.index, prompt_tokens=len(turn.prompt_token_ids),
                             completion_tokens=len(turn.completion_token_ids), finish_reason=turn.finish_reason,
                             upstream=turn.upstream, started_at=turn.started_at, ended_at=turn.ended_at,
                             sent_at=turn.sent_at, answered_at=turn.answered_at,
                             first_token_at=turn.first_token_at))


def _sequence_record(sequence: TrainingSequence) -> dict:
    return {"token_ids": sequence.token_ids, "loss_mask": sequence.loss_mask,
            "logprobs": sequence.rollout_logprobs, "weight_versions": sequence.weight_versions}


def write_step(run_dir: Path, step: int, entry_ids: list[str], trajectories: list[Trajectory]) -> Path:
    """Write step `step`'s trace file, replacing one a killed run may have left."""
    if len(entry_ids) != len(trajectories):
        raise ValueError(f"{len(entry_ids)} stream entries for {len(trajectories)} trajectories")
    path = step_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for entry_id, t in zip(entry_ids, trajectories):
            f.write(json.dumps({
                "step": step, "entry_id": entry_id, "session_id": t.session_id, "task_id": t.task_id,
                "group_id": t.group_id, "reward": t.reward, "num_branches": t.num_branches,
                "metadata": t.metadata, "calls": [_call_record(turn) for turn in t.turns],
                "sequences": [_sequence_record(s) for s in t.sequences]}) + "\n")
    os.replace(tmp, path)
    return path


def drop_steps_after(run_dir: Path, step: int) -> list[int]:
    """Delete the trace files of steps after `step` (a resume trains them again); their numbers."""
    dropped = []
    for path in sorted((run_dir / TRACES_DIR).glob("step-*.jsonl")):
        number = int(path.stem.removeprefix("step-"))
        if number > step:
            path.unlink()
            dropped.append(number)
    return dropped


def read_traces(run_dir: str | Path) -> Iterator[TracedEpisode]:
    """Every traced episode of a run, step by step; a malformed line is an error naming its file and line."""
    folder = Path(run_dir) / TRACES_DIR
    for path in sorted(folder.glob("step-*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                yield _episode(json.loads(line))
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                raise SeamlessError(f"{path}:{number}: not a trace record ({type(exc).__name__}: {exc}); "
                                    "the file was edited or cut short; delete it to skip that step") from exc


def _episode(record: dict) -> TracedEpisode:
    sid, reward = record["session_id"], float(record["reward"])
    sequences = [TrainingSequence(session_id=sid, token_ids=s["token_ids"], loss_mask=s["loss_mask"],
                                  rollout_logprobs=s["logprobs"], weight_versions=s["weight_versions"],
                                  reward=reward, group_id=record["group_id"], task_id=record["task_id"])
                 for s in record["sequences"]]
    return TracedEpisode(step=int(record["step"]), entry_id=record["entry_id"], session_id=sid,
                         task_id=record["task_id"], group_id=record["group_id"], reward=reward,
                         calls=[TracedCall(**call) for call in record["calls"]], sequences=sequences,
                         num_branches=int(record["num_branches"]), metadata=record["metadata"])
