"""Tasks (prompts with reference answers): generated arithmetic, or read from JSONL/Parquet files.

`load_tasks(config)` gives a `TaskSet`: a fixed held-out list for evaluation and a train stream
with random access by index (`train_task(i)`, `train_batch(step, size)`), so a resumed run asks
for the same tasks again by step number and nothing needs to be saved but the step.
Held-out tasks never appear in the train stream.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seamless.config import DataConfig
from seamless.errors import ConfigError

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_NAMES = {"+": "add", "-": "sub", "*": "mul"}


@dataclass(frozen=True, slots=True)
class Task:
    """One prompt an agent works on, and the answer its reward is checked against."""

    task_id: str
    prompt: str
    answer: str
    metadata: dict[str, str] = field(default_factory=dict)

    def without_answer(self) -> Task:
        """The task as an agent sees it: the reference answer blanked, so no agent can read it."""
        return replace(self, answer="")

    def to_json(self, with_answer: bool = False) -> str:
        record: dict[str, Any] = {"task_id": self.task_id, "prompt": self.prompt, "metadata": self.metadata}
        if with_answer:
            record["answer"] = self.answer
        return json.dumps(record)


# --- arithmetic --------------------------------------------------------------------------------

def _triple_task(a: int, op: str, b: int) -> Task:
    if op == "-" and b > a:  # keep answers non-negative: fewer tokens for a tiny model to learn
        a, b = b, a
    return Task(task_id=f"{_NAMES[op]}-{a}-{b}", prompt=f"What is {a} {op} {b}?",
                answer=str(_OPS[op](a, b)), metadata={"a": str(a), "op": op, "b": str(b)})


class ArithmeticTasks:
    """`a op b` questions with operands in [0, max_operand]; deterministic for a seed."""

    def __init__(self, config: DataConfig):
        self.config = config
        self.ops = list(dict.fromkeys(config.operations))
        space = self._space_size()
        if config.eval_size >= space:
            raise ConfigError(
                f"data.eval_size ({config.eval_size}) leaves no training tasks: max_operand "
                f"{config.max_operand} with operations {self.ops} gives only {space} distinct tasks; "
                "lower data.eval_size or raise data.max_operand")
        rng = random.Random(f"arith-eval:{config.seed}")
        held: dict[str, Task] = {}
        while len(held) < config.eval_size:
            task = self._draw(rng)
            held.setdefault(task.task_id, task)
        self.eval_tasks = list(held.values())
        self._held_ids = set(held)

    def _space_size(self) -> int:
        n = self.config.max_operand + 1
        # a - b and b - a are the same task once swapped to be non-negative
        return sum(n * (n + 1) // 2 if op == "-" else n * n for op in self.ops)

    def _draw(self, rng: random.Random) -> Task:
        top = self.config.max_operand
        return _triple_task(rng.randint(0, top), rng.choice(self.ops), rng.randint(0, top))

    def train_task(self, index: int) -> Task:
        # a fresh generator per index gives random access (resume by index) without any state
        rng = random.Random(f"arith-train:{self.config.seed}:{index}")
        while True:  # terminates: eval_size < space, checked in __init__
            task = self._draw(rng)
            if task.task_id not in self._held_ids:
                return task


# --- files -------------------------------------------------------------------------------------

def _answer_text(value: Any) -> str:
    text = str(value).strip()
    if "####" in text:  # GSM8K: reasoning, then "#### 42"
        text = text.rsplit("####", 1)[1].strip()
    return text


def _task_from_record(record: Any, where: str, config: DataConfig, index: int) -> Task:
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object with {config.prompt_key!r} and "
                          f"{config.answer_key!r}, found a {type(record).__name__}")
    missing = [key for key in (config.prompt_key, config.answer_key) if record.get(key) in (None, "")]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(repr(k) for k in missing)} (keys present: "
                          f"{', '.join(sorted(map(str, record))) or 'none'}); add it, or set "
                          "data.prompt_key / data.answer_key to the names your file uses")
    task_id = str(record.get("task_id") or record.get("id") or f"row-{index}")
    metadata = {str(k): str(v) for k, v in (record.get("metadata") or {}).items()} \
        if isinstance(record.get("metadata"), dict) else {}
    return Task(task_id=task_id, prompt=str(record[config.prompt_key]),
                answer=_answer_text(record[config.answer_key]), metadata=metadata)


def read_jsonl(path: str | Path, config: DataConfig | None = None) -> list[Task]:
    """Tasks from a JSONL file, one object per line; blank lines are skipped."""
    config = config or DataConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist; set data.train_path / data.eval_path to a JSONL file")
    tasks = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
            tasks.append(_task_from_record(record, where, config, lineno))
    if not tasks:
        raise ConfigError(f"data file {path} has no tasks; write one JSON object per line")
    return tasks


def read_parquet(path: str | Path, config: DataConfig | None = None) -> list[Task]:
    """Tasks from a Parquet file (needs pyarrow, which seamless does not install)."""
    config = config or DataConfig()
    path = Path(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow; `pip install pyarrow`, or convert the file to "
                          "JSONL and set data.source: jsonl") from None
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist; set data.train_path / data.eval_path")
    rows = pq.read_table(path).to_pylist()
    return [_task_from_record(row, f"{path} row {i}", config, i) for i, row in enumerate(rows)]


def _read_file(path: str, config: DataConfig) -> list[Task]:
    return read_parquet(path, config) if config.source == "parquet" else read_jsonl(path, config)


class FileTasks:
    """Tasks from files: the train stream walks a fresh seeded shuffle of the file every epoch."""

    def __init__(self, config: DataConfig):
        tasks = _read_file(config.train_path, config)
        if config.eval_path:
            self.eval_tasks = _read_file(config.eval_path, config)[: config.eval_size]
            self._train = tasks
        else:
            if config.eval_size >= len(tasks):
                raise ConfigError(f"data.eval_size ({config.eval_size}) leaves no training tasks in "
                                  f"{config.train_path} ({len(tasks)} tasks); lower it or set data.eval_path")
            shuffled = tasks[:]
            random.Random(f"file-split:{config.seed}").shuffle(shuffled)
            self.eval_tasks, self._train = shuffled[-config.eval_size:], shuffled[: -config.eval_size]
        self.seed = config.seed
        self._epoch_order: tuple[int, list[int]] | None = None

    def train_task(self, index: int) -> Task:
        epoch, position = divmod(index, len(self._train))
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = list(range(len(self._train)))
            random.Random(f"file-epoch:{self.seed}:{epoch}").shuffle(order)
            self._epoch_order = (epoch, order)
        return self._train[self._epoch_order[1][position]]


class TaskSet:
    """Held-out tasks plus an endless, index-addressable train stream."""

    def __init__(self, source: ArithmeticTasks | FileTasks):
        self._source = source
        self.eval_tasks: list[Task] = source.eval_tasks

    def train_task(self, index: int) -> Task:
        if index < 0:
            raise ValueError(f"train task index must be >= 0, got {index}")
        return self._source.train_task(index)

    def train_batch(self, step: int, batch_size: int) -> list[Task]:
        """The `batch_size` tasks of training step `step` (0-based); the same for the same step."""
        return [self.train_task(step * batch_size + i) for i in range(batch_size)]

    def train_stream(self, start: int = 0) -> Iterator[Task]:
        index = start
        while True:
            yield self.train_task(index)
            index += 1


def load_tasks(config: DataConfig) -> TaskSet:
    """The recipe's tasks: generated arithmetic, or the configured files."""
    if config.source == "arithmetic":
        return TaskSet(ArithmeticTasks(config))
    return TaskSet(FileTasks(config))

