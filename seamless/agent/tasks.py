"""Tasks (prompts with reference answers): generated arithmetic or counting, JSONL/Parquet files, or a
Hugging Face `datasets` dataset (hub name or `save_to_disk` folder).

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


class GeneratedTasks:
    """Tasks drawn from a seeded generator: a held-out set drawn first, then a train stream with
    random access by index that skips held-out tasks. Subclasses say how to draw one task."""

    salt = "generated"
    """Seeds the generators (with data.seed); part of what makes a task set, so never change it."""

    def __init__(self, config: DataConfig):
        self.config = config
        space = self._space_size()
        if config.eval_size >= space:
            raise ConfigError(
                f"data.eval_size ({config.eval_size}) leaves no training tasks: {self._space_text()} gives only "
                f"{space} distinct tasks; lower data.eval_size or raise data.max_operand")
        rng = random.Random(f"{self.salt}-eval:{config.seed}")
        held: dict[str, Task] = {}
        while len(held) < config.eval_size:
            task = self._draw(rng)
            held.setdefault(task.task_id, task)
        self.eval_tasks = list(held.values())
        self._held_ids = set(held)

    def _space_size(self) -> int:
        raise NotImplementedError

    def _space_text(self) -> str:
        raise NotImplementedError

    def _draw(self, rng: random.Random) -> Task:
        raise NotImplementedError

    def train_task(self, index: int) -> Task:
        # a fresh generator per index gives random access (resume by index) without any state
        rng = random.Random(f"{self.salt}-train:{self.config.seed}:{index}")
        while True:  # terminates: eval_size < space, checked in __init__
            task = self._draw(rng)
            if task.task_id not in self._held_ids:
                return task


class ArithmeticTasks(GeneratedTasks):
    """`a op b` questions with operands in [0, max_operand]; deterministic for a seed."""

    salt = "arith"

    def __init__(self, config: DataConfig):
        self.ops = list(dict.fromkeys(config.operations))
        super().__init__(config)

    def _space_size(self) -> int:
        n = self.config.max_operand + 1
        # a - b and b - a are the same task once swapped to be non-negative
        return sum(n * (n + 1) // 2 if op == "-" else n * n for op in self.ops)

    def _space_text(self) -> str:
        return f"max_operand {self.config.max_operand} with operations {self.ops}"

    def _draw(self, rng: random.Random) -> Task:
        top = self.config.max_operand
        return _triple_task(rng.randint(0, top), rng.choice(self.ops), rng.randint(0, top))


class CountingTasks(GeneratedTasks):
    """"List the numbers from a to b." with a in [0, max_operand] and b - a + 1 in count_lengths;
    the answer is the numbers separated by spaces, so a right answer is long (about three tokens
    a number) while the rule stays learnable by a tiny model."""

    salt = "count"

    def _space_size(self) -> int:
        fewest, most = self.config.count_lengths
        return (self.config.max_operand + 1) * (most - fewest + 1)

    def _space_text(self) -> str:
        return f"max_operand {self.config.max_operand} with count_lengths {list(self.config.count_lengths)}"

    def _draw(self, rng: random.Random) -> Task:
        first = rng.randint(0, self.config.max_operand)
        last = first + rng.randint(*self.config.count_lengths) - 1
        return Task(task_id=f"count-{first}-{last}", prompt=f"List the numbers from {first} to {last}.",
                    answer=" ".join(str(n) for n in range(first, last + 1)),
                    metadata={"first": str(first), "last": str(last)})


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


def read_dataset(config: DataConfig, split: str) -> list[Task]:
    """Tasks from one split of `config.dataset`: a `save_to_disk` folder, else a hub dataset.

    `datasets` is imported only here: it is the optional extra `seamless[datasets]` (setup.sh
    installs it), and nothing else needs it.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source 'datasets' needs the Hugging Face datasets library; "
                          "`pip install 'seamless[datasets]'`, or write the data to JSONL (scripts/prepare_gsm8k.py "
                          "does that for GSM8K) and set data.source: jsonl") from None
    name = config.dataset
    where = f"data.dataset {name!r}"
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"{where} has no split {split!r} (splits: {', '.join(loaded)}); "
                                  "set data.train_split / data.eval_split to one of them")
            loaded = loaded[split]
        elif split != config.train_split:  # a bare Dataset is one split: it can only be the train split
            raise ConfigError(f"{where} is a single Dataset without splits, so data.eval_split {split!r} "
                              "cannot be read from it; unset data.eval_split (tasks are held out of it) "
                              "or save a DatasetDict")
    else:
        try:
            loaded = datasets.load_dataset(name, config.dataset_config, split=split)
        except Exception as exc:  # translated: hub, network and name errors all need the user to act
            raise ConfigError(
                f"{where} (config {config.dataset_config!r}, split {split!r}) could not be loaded: "
                f"{type(exc).__name__}: {exc}. Check the name, data.dataset_config and the split; "
                "offline (HF_HUB_OFFLINE=1, set by scripts/env.sh) only datasets already in the cache "
                "load, so download it once where there is network or point data.dataset at a "
                "save_to_disk folder") from exc
    tasks = [_task_from_record(row, f"{where} split {split!r} row {i}", config, i) for i, row in enumerate(loaded)]
    if not tasks:
        raise ConfigError(f"{where} split {split!r} has no rows")
    return tasks


class FileTasks:
    """Tasks from files or a dataset: the train stream walks a fresh seeded shuffle every epoch."""

    def __init__(self, config: DataConfig):
        if config.source == "datasets":
            tasks = read_dataset(config, config.train_split)
            held = read_dataset(config, config.eval_split) if config.eval_split else None
            origin = f"data.dataset {config.dataset} split {config.train_split}"
        else:
            tasks = _read_file(config.train_path, config)
            held = _read_file(config.eval_path, config) if config.eval_path else None
            origin = config.train_path
        if held is not None:
            self.eval_tasks = held[: config.eval_size]
            self._train = tasks
        else:
            if config.eval_size >= len(tasks):
                raise ConfigError(f"data.eval_size ({config.eval_size}) leaves no training tasks in "
                                  f"{origin} ({len(tasks)} tasks); lower it or set a held-out file/split")
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

    def __init__(self, source: GeneratedTasks | FileTasks, prompt_template: str = "{prompt}"):
        self._source = source
        self._template = prompt_template
        self.eval_tasks: list[Task] = [self._templated(t) for t in source.eval_tasks]

    def _templated(self, task: Task) -> Task:
        if self._template == "{prompt}":
            return task
        # replace, not str.format: templates may hold other braces (\boxed{})
        return replace(task, prompt=self._template.replace("{prompt}", task.prompt))

    def train_task(self, index: int) -> Task:
        if index < 0:
            raise ValueError(f"train task index must be >= 0, got {index}")
        return self._templated(self._source.train_task(index))

    def train_batch(self, step: int, batch_size: int) -> list[Task]:
        """The `batch_size` tasks of training step `step` (0-based); the same for the same step."""
        return [self.train_task(step * batch_size + i) for i in range(batch_size)]

    def train_stream(self, start: int = 0) -> Iterator[Task]:
        index = start
        while True:
            yield self.train_task(index)
            index += 1


def load_tasks(config: DataConfig) -> TaskSet:
    """The recipe's tasks: generated arithmetic, the configured files, or a `datasets` dataset."""
    if config.source == "arithmetic":
        return TaskSet(ArithmeticTasks(config), config.prompt_template)
    if config.source == "counting":
        return TaskSet(CountingTasks(config), config.prompt_template)
    return TaskSet(FileTasks(config), config.prompt_template)

