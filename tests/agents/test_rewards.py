import pytest

from agents.rewards import extract_final_integer, integer_match
from seamless.data import Task


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
