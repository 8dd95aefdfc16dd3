"""The calculator tool: a small parser for + - * / and parentheses over exact fractions.

No eval/exec: the expression is tokenized and parsed here by recursive descent, so model output
can never run code. Limits on length, nesting and number size keep a hostile expression cheap.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 200
MAX_DEPTH = 32
MAX_DIGITS = 30

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(.))")


class CalculatorError(ValueError):
    """The expression is not arithmetic this calculator accepts; the message says why."""


def _tokens(expression: str) -> list[str]:
    tokens = []
    for number, symbol in _TOKEN.findall(expression):
        if number:
            if len(number.replace(".", "")) > MAX_DIGITS:
                raise CalculatorError(f"number {number[:12]}... has more than {MAX_DIGITS} digits")
            tokens.append(number)
        elif symbol.strip():
            if symbol not in "+-*/()":
                raise CalculatorError(f"unsupported character {symbol!r}; use numbers, + - * / and parentheses")
            tokens.append(symbol)
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := ('+'|'-') factor | NUMBER | '(' expr ')'"""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CalculatorError("expression ends early")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.factor()
            if op == "/" and rhs == 0:
                raise CalculatorError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CalculatorError(f"expression nests deeper than {MAX_DEPTH}")
        try:
            token = self.take()
            if token in ("+", "-"):
                value = self.factor()
                return -value if token == "-" else value
            if token == "(":
                value = self.expr()
                if self.take() != ")":
                    raise CalculatorError("missing ')'")
                return value
            if token in "*/)":
                raise CalculatorError(f"unexpected {token!r}")
            return Fraction(token)
        finally:
            self.depth -= 1


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; CalculatorError for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("empty expression; pass e.g. '12 * (3 + 4)'")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    parser = _Parser(_tokens(expression))
    value = parser.expr()
    if parser.peek() is not None:
        raise CalculatorError(f"unexpected {parser.peek()!r} after a complete expression")
    return value


def format_number(value: Fraction) -> str:
    """Whole numbers as integers; others as a decimal with at most 6 places."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def calculate(expression: str) -> str:
    """The tool's reply text: the value, or `error: ...` (fed back to the model, never raised)."""
    try:
        return format_number(evaluate(expression))
    except CalculatorError as exc:
        return f"error: {exc}"
