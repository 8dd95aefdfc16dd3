import json

import pytest

from seamless.config import DataConfig
from seamless.data import Task, load_tasks, read_jsonl, read_parquet
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


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path):
    # seamless does not install pyarrow; reading Parquet must say what to do instead of crashing
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="needs pyarrow; `pip install pyarrow`, or convert the file to JSONL"):
        read_parquet(tmp_path / "t.parquet")