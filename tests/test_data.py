import json
import os
import sys
from pathlib import Path

import pytest

from seamless.config import DataConfig
from seamless.agent.tasks import Task, load_tasks, read_jsonl, read_parquet
from seamless.errors import ConfigError


def test_arithmetic_is_deterministic_per_seed_and_random_access():
    config = DataConfig(eval_size=16, seed=3)
    a, b = load_tasks(config), load_tasks(config)
    assert a.eval_tasks == b.eval_tasks
    assert a.train_batch(5, 8) == b.train_batch(5, 8)
    # random access: step 5 is the same whether or not earlier steps were drawn (resume by step)
    fresh = load_tasks(config)
    assert fresh.train_batch(5, 8) == [a.train_task(40 + i) for i in range(8)]
    assert load_tasks(DataConfig(eval_size=16, seed=4)).eval_tasks != a.eval_tasks


def test_arithmetic_held_out_set_is_disjoint_from_training_and_correct():
    config = DataConfig(eval_size=40, max_operand=9, operations=["+", "-", "*"])
    tasks = load_tasks(config)
    held = {t.task_id for t in tasks.eval_tasks}
    assert len(held) == 40
    train = [tasks.train_task(i) for i in range(2000)]
    assert not held & {t.task_id for t in train}
    for task in train[:200] + tasks.eval_tasks:
        a, op, b = int(task.metadata["a"]), task.metadata["op"], int(task.metadata["b"])
        assert task.prompt == f"What is {a} {op} {b}?"
        assert int(task.answer) == {"+": a + b, "-": a - b, "*": a * b}[op] >= 0


def test_arithmetic_eval_size_must_leave_training_tasks():
    with pytest.raises(ConfigError, match="eval_size"):
        load_tasks(DataConfig(eval_size=4, max_operand=1, operations=["+"]))


def test_counting_tasks_list_long_answers_and_hold_out_a_disjoint_set():
    config = DataConfig(source="counting", max_operand=50, count_lengths=(48, 56), eval_size=100, seed=1)
    tasks = load_tasks(config)
    assert load_tasks(config).eval_tasks == tasks.eval_tasks
    held = {t.task_id for t in tasks.eval_tasks}
    train = [tasks.train_task(i) for i in range(500)]
    assert len(held) == 100 and not held & {t.task_id for t in train}
    for task in train + tasks.eval_tasks:
        first, last = int(task.metadata["first"]), int(task.metadata["last"])
        assert task.prompt == f"List the numbers from {first} to {last}."
        assert task.answer.split() == [str(n) for n in range(first, last + 1)]
        assert 0 <= first <= 50 and 48 <= last - first + 1 <= 56


def test_counting_rejects_bad_lengths_and_too_few_tasks():
    with pytest.raises(ValueError, match="count_lengths"):
        DataConfig(source="counting", count_lengths=(10, 5))
    with pytest.raises(ConfigError, match="eval_size"):
        load_tasks(DataConfig(source="counting", max_operand=3, count_lengths=(4, 4), eval_size=4))


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_loading_split_and_gsm8k_answers(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "answer": f"work... #### {i}"}) for i in range(10)]
    path = _write(tmp_path / "train.jsonl", lines[:5] + [""] + lines[5:])
    tasks = load_tasks(DataConfig(source="jsonl", train_path=str(path), eval_size=3))
    assert len(tasks.eval_tasks) == 3
    train = {tasks.train_task(i).prompt for i in range(7)}
    assert len(train) == 7 and not train & {t.prompt for t in tasks.eval_tasks}
    assert all(t.answer == t.prompt[1:] for t in tasks.eval_tasks)
    # epochs reshuffle but cover the same tasks
    assert {tasks.train_task(i).prompt for i in range(7, 14)} == train


def test_jsonl_custom_keys_and_eval_file(tmp_path):
    train = _write(tmp_path / "t.jsonl", [json.dumps({"question": "1+1", "solution": 2, "id": "a"})])
    held = _write(tmp_path / "e.jsonl", [json.dumps({"question": "2+2", "solution": 4})])
    config = DataConfig(source="jsonl", train_path=str(train), eval_path=str(held), prompt_key="question",
                        answer_key="solution", eval_size=5)
    tasks = load_tasks(config)
    assert tasks.train_task(3) == Task("a", "1+1", "2")
    assert tasks.eval_tasks == [Task("row-1", "2+2", "4")]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad.jsonl:2: expected a JSON object"),
    ('{"prompt": "q"}', r"bad.jsonl:2: missing 'answer'.*data.prompt_key"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "answer": "1"}), line])
    with pytest.raises(ConfigError, match=message):
        read_jsonl(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="no tasks"):
        read_jsonl(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(ValueError, match="train_path is not set"):
        DataConfig(source="jsonl")


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    # seamless does not install pyarrow; reading Parquet must say what to do instead of crashing
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed, also where it is
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="needs pyarrow; `pip install pyarrow`, or convert the file to JSONL"):
        read_parquet(tmp_path / "t.parquet")

def test_prompt_template_wraps_every_prompt_and_needs_the_placeholder(tmp_path):
    path = _write(tmp_path / "t.jsonl", [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(4)])
    config = DataConfig(source="jsonl", train_path=str(path), eval_size=1,
                        prompt_template="{prompt} Put the answer in \\boxed{}.")
    tasks = load_tasks(config)
    assert tasks.eval_tasks[0].prompt.endswith(" Put the answer in \\boxed{}.")
    assert {tasks.train_task(i).prompt for i in range(3)} == \
        {f"q{i} Put the answer in \\boxed{{}}." for i in range(4)} - {tasks.eval_tasks[0].prompt}
    assert load_tasks(DataConfig(prompt_template="Q: {prompt}")).train_task(0).prompt.startswith("Q: What is ")
    with pytest.raises(ValueError, match="prompt_template 'Solve it.' has no {prompt}"):
        DataConfig(prompt_template="Solve it.")


def test_datasets_source_needs_a_dataset_name():
    with pytest.raises(ValueError, match="dataset is not set; set data.dataset"):
        DataConfig(source="datasets")


def test_datasets_source_without_the_library_says_how_to_get_it(monkeypatch):
    # `datasets` is an optional extra; without it the source must say what to do instead of crashing
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed, also where it is
    with pytest.raises(ConfigError, match="needs the Hugging Face datasets library; `pip install 'seamless\\[datasets\\]'`"):
        load_tasks(DataConfig(source="datasets", dataset="openai/gsm8k", dataset_config="main"))


GSM8K_ROWS = [{"question": f"Tom has {i} apples and buys {i} more. How many now?",
               "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"} for i in range(12)]


def save_dataset(tmp_path: Path, name: str, splits: dict[str, list[dict]] | None = None,
                 rows: list[dict] | None = None) -> Path:
    """A `save_to_disk` folder, as a user who downloaded a dataset once would have.

    Built from parquet files: `Dataset.from_list` fingerprints the in-memory table with dill, which
    fails on datasets 5.2 with pyarrow >= 24 (`Can't pickle <class 'MonthDayNano'>`).
    """
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for split, split_rows in (splits or {"train": rows}).items():
        files[split] = str(tmp_path / f"{name}-{split}.parquet")
        pq.write_table(pa.Table.from_pylist(split_rows), files[split])
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf-cache"))
    folder = tmp_path / name
    (loaded if splits else loaded["train"]).save_to_disk(str(folder))
    return folder


def test_datasets_source_reads_splits_of_a_saved_dataset_dict(tmp_path):
    folder = save_dataset(tmp_path, "gsm8k", splits={"train": GSM8K_ROWS[:10], "test": GSM8K_ROWS[10:]})
    config = DataConfig(source="datasets", dataset=str(folder), eval_split="test", prompt_key="question",
                        eval_size=5)
    tasks = load_tasks(config)
    assert [(t.prompt[:14], t.answer) for t in tasks.eval_tasks] == [("Tom has 10 app", "20"), ("Tom has 11 app", "22")]
    train = [tasks.train_task(i) for i in range(10)]
    assert sorted(int(t.answer) for t in train) == [2 * i for i in range(10)]
    with pytest.raises(ConfigError, match="has no split 'validation' \\(splits: train, test\\)"):
        load_tasks(config.model_copy(update={"eval_split": "validation"}))


def test_datasets_source_holds_out_of_a_single_saved_dataset(tmp_path):
    folder = save_dataset(tmp_path, "one", rows=GSM8K_ROWS)
    tasks = load_tasks(DataConfig(source="datasets", dataset=str(folder), prompt_key="question", eval_size=4))
    held = {t.task_id for t in tasks.eval_tasks}
    assert len(held) == 4 and not held & {tasks.train_task(i).task_id for i in range(8)}
    with pytest.raises(ConfigError, match="single Dataset without splits"):
        load_tasks(DataConfig(source="datasets", dataset=str(folder), prompt_key="question", eval_split="test"))


def test_datasets_source_explains_a_dataset_that_cannot_be_loaded(tmp_path):
    with pytest.raises(ConfigError, match="could not be loaded.*HF_HUB_OFFLINE"):
        load_tasks(DataConfig(source="datasets", dataset=str(tmp_path / "no-such-dataset"), dataset_config="main"))


def test_prepare_gsm8k_writes_task_files_the_jsonl_source_reads(tmp_path):
    import subprocess

    folder = save_dataset(tmp_path, "gsm8k", splits={"train": GSM8K_ROWS[:10], "test": GSM8K_ROWS[10:]})
    repo = Path(__file__).resolve().parents[1]
    script = repo / "scripts" / "prepare_gsm8k.py"
    # this checkout's seamless, also where the venv's editable install points at another one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "--dataset", str(folder)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "wrote 10 tasks" in done.stdout and "wrote 2 tasks" in done.stdout
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert first["task_id"] == "gsm8k-train-0" and first["answer"] == "0" and first["prompt"].startswith("Tom has 0")
    tasks = load_tasks(DataConfig(source="jsonl", train_path=str(tmp_path / "out" / "train.jsonl"),
                                  eval_path=str(tmp_path / "out" / "test.jsonl"), eval_size=5))
    assert [t.answer for t in tasks.eval_tasks] == ["20", "22"]
    failed = subprocess.run([sys.executable, str(script), str(tmp_path / "x"), "--dataset", str(folder),
                             "--splits", "validation"], capture_output=True, text=True, timeout=60, env=env)
    assert failed.returncode == 2 and "has no split 'validation'" in failed.stderr
