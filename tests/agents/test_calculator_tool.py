from fractions import Fraction

import pytest

from agents.calculator_tool import CalculatorError, calculate, evaluate


@pytest.mark.parametrize("expression, value", [
    ("2+3", 5), ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("10 - 4 - 3", 3), ("24 / 4 / 2", 3),
    ("-3 * -(2+1)", 9), ("+5", 5), ("7 / 2", Fraction(7, 2)), ("0.5 + .25", Fraction(3, 4)),
    ("((((1))))", 1), ("  12\t*\n3 ", 36),
])
def test_evaluates_arithmetic_exactly(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression, reply", [
    ("7 / 2", "3.5"), ("1 / 3", "0.333333"), ("6 / 3", "2"), ("19 - 4", "15"),
])
def test_reply_formatting(expression, reply):
    assert calculate(expression) == reply


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('id')", "unsupported character"),
    ("2 ** 8", "unexpected '\\*'"),
    ("1e9", "unsupported character 'e'"),
    ("abs(-1)", "unsupported character"),
    ("1 / 0", "division by zero"),
    ("1 / (2 - 2)", "division by zero"),
    ("(1 + 2", "ends early"),
    ("1 + 2)", "unexpected '\\)'"),
    ("1 2", "unexpected '2'"),
    ("", "empty expression"),
    ("1+" * 150 + "1", "longer than"),
    ("(" * 40 + "1" + ")" * 40, "nests deeper"),
    ("9" * 31, "more than 30 digits"),
    ("-" * 60 + "1", "nests deeper"),
])
def test_rejects_anything_else(expression, message):
    with pytest.raises(CalculatorError, match=message):
        evaluate(expression)
    assert calculate(expression).startswith("error: ")
