"""Rule-based rewards: 1.0 when the agent's final integer equals the reference answer, else 0.0
(`integer_match`); for list answers, the share of the list given right (`list_match`)."""

from __future__ import annotations

import re
from fractions import Fraction

from seamless.agent.tasks import Task

# a number: thousands groups with commas, or plain digits; an optional decimal part
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_INTEGER = re.compile(r"-?\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_final_integer(text: str | None) -> int | None:
    """The integer a reply ends on: the last number inside the last \\boxed{}, else the first number
    after the last #### (GSM8K's `#### 72`, whatever text follows it), else the last number in
    the text. None when there is none, or when that number is not whole (2.5)."""
    if not text:
        return None
    boxed = _BOXED.findall(text)
    if boxed:
        numbers = _NUMBER.findall(boxed[-1])[-1:]
    elif "####" in text:
        # first, not last: a model often keeps talking after "#### 72" ("... 72 apples in 3 days")
        numbers = _NUMBER.findall(text.rsplit("####", 1)[1])[:1]
    else:
        numbers = _NUMBER.findall(text)[-1:]
    if not numbers:
        return None
    value = Fraction(numbers[0].replace(",", ""))
    return int(value) if value.denominator == 1 else None


def integer_match(task: Task, answer: str | None) -> float:
    """1.0 if the reply's final integer equals the task's answer; 0.0 otherwise (also for no answer).

    A reference answer that is not an integer is compared as stripped text instead.
    """
    expected = extract_final_integer(task.answer)
    if expected is None:
        return float(bool(answer) and answer.strip() == task.answer.strip())
    return float(extract_final_integer(answer) == expected)


def list_match(task: Task, answer: str | None) -> float:
    """The numbers of the reply against the task's list: the length of the longest common prefix
    over the longer of the two lists. 1.0 only for exactly the list; partial credit gives GRPO a
    signal on long answers that are almost right; numbers past the end of the list cost too."""
    expected = [int(n) for n in _INTEGER.findall(task.answer)]
    got = [int(n) for n in _INTEGER.findall(answer or "")]
    prefix = 0
    for want, have in zip(expected, got):
        if want != have:
            break
        prefix += 1
    return prefix / max(len(expected), len(got), 1)
