"""`tiny-arith`: a verifiers environment (plain verifiers code, no seamless import) for the
arithmetic tasks of the tiny recipes: a `SingleTurnEnv` with a built-in dataset of "What is a + b?"
questions, the system prompt of the `math` example, and a rubric that gives 1.0 when the reply's
last integer is the answer.

`vf.load_environment("tiny-arith")` finds it when this folder is on sys.path (the seamless
`verifiers:` agent puts it there); it runs on its own as well, e.g. `env.evaluate(client, model)`.
"""

import itertools
import re

import verifiers as vf
from datasets import Dataset

SYSTEM_PROMPT = "Answer with the final number only."
_INTEGER = re.compile(r"-?\d+")


def arithmetic_rows(max_operand: int = 19, operations: tuple[str, ...] = ("+",)) -> list[dict]:
    """Every `a op b` question with operands in [0, max_operand], worded as seamless's tasks."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    return [{"question": f"What is {a} {op} {b}?", "answer": str(ops[op](a, b))}
            for op in operations for a, b in itertools.product(range(max_operand + 1), repeat=2)
            if op != "-" or a >= b]


def last_integer_matches(completion, answer, parser: vf.Parser, **kwargs) -> float:
    """1.0 when the last integer of the final reply equals the reference answer."""
    numbers = _INTEGER.findall(parser.parse_answer(completion) or "")
    return float(bool(numbers) and numbers[-1] == str(answer).strip())


def load_environment(max_operand: int = 19, operations: tuple[str, ...] = ("+",), **kwargs) -> vf.SingleTurnEnv:
    parser = vf.Parser()
    rubric = vf.Rubric(funcs=[last_integer_matches], weights=[1.0], parser=parser)
    return vf.SingleTurnEnv(dataset=Dataset.from_list(arithmetic_rows(max_operand, tuple(operations))),
                            system_prompt=SYSTEM_PROMPT, parser=parser, rubric=rubric, **kwargs)
