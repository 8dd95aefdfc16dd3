import pytest

from agents.rewards import extract_final_integer, integer_match, list_match
from seamless.agent.tasks import Task


@pytest.mark.parametrize("text, value", [
    ("12", 12), (" 12<|im_end|>", 12), ("The answer is 42.", 42), ("7 + 5 = 12", 12), ("-3", -3),
    ("1,234 apples", 1234), ("3,4", 4), ("\\boxed{17} and then 99", 17), ("so #### 8\n", 8),
    ("12.0", 12), ("2.5", None), ("", None), (None, None), ("no digits", None),
])
def test_extract_final_integer(text, value):
    assert extract_final_integer(text) == value


@pytest.mark.parametrize("answer, reward", [
    ("12", 1.0), ("It is 12", 1.0), ("12 or 13", 0.0), ("13", 0.0), ("", 0.0), ("twelve", 0.0),
])
def test_integer_match(answer, reward):
    assert integer_match(Task("t", "What is 7 + 5?", "12"), answer) == reward


def test_non_integer_reference_compares_text():
    assert integer_match(Task("t", "capital?", "Paris"), " Paris ") == 1.0
    assert integer_match(Task("t", "capital?", "Paris"), "Rome") == 0.0


# a GSM8K training record as the dataset ships it: reasoning with <<calculator>> annotations, then "#### 72"
GSM8K_RECORD = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                "May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
              "altogether in April and May.\n#### 72",
}


@pytest.mark.parametrize("reply, reward", [
    ("48 + 24 = 72 clips.\n#### 72", 1.0),
    ("#### 72\nThat is 72 clips over 2 months.", 1.0),   # the number right after ####, not the last one
    ("She sold 24 in May, so 72 in all.", 1.0),           # no marker: the last number
    ("The answer is \\boxed{72}.", 1.0),
    ("#### 1,072", 0.0),
    ("May: 24 clips\n#### 24", 0.0),
    ("####", 0.0),
])
def test_gsm8k_answers_end_with_hashes(tmp_path, reply, reward):
    import json

    from seamless.config import DataConfig
    from seamless.agent.tasks import read_jsonl

    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_RECORD) + "\n")
    [task] = read_jsonl(path, DataConfig(source="jsonl", train_path=str(path), prompt_key="question"))
    assert task.answer == "72" and task.prompt.startswith("Natalia")
    assert integer_match(task, reply) == reward


def test_gsm8k_reference_with_thousands_separator():
    assert integer_match(Task("t", "q", "#### 1,200"), "so 1200 dollars") == 1.0


@pytest.mark.parametrize("answer, reward", [
    ("3 4 5 6", 1.0), (" 3  4\n5 6 ", 1.0), ("3 4 5", 0.75), ("3 4 9 6", 0.5), ("3 4 5 6 7 8", 4 / 6),
    ("", 0.0), (None, 0.0), ("4 5 6", 0.0)])
def test_list_match_gives_the_share_of_the_list_given_right(answer, reward):
    assert list_match(Task("t", "List the numbers from 3 to 6.", "3 4 5 6"), answer) == pytest.approx(reward)
