"""A verifiers environment for tests: a SingleTurnEnv whose rubric scores the reply's length plus
0.5 when the reference answer is "42", so a test can tell the rubric's reward (and that the
rubric got the reference answer) from any other."""

import verifiers as vf
from datasets import Dataset


def length_and_answer(completion, answer, parser: vf.Parser, **kwargs) -> float:
    return len(parser.parse_answer(completion) or "") + (0.5 if answer == "42" else 0.0)


def load_environment(**kwargs) -> vf.SingleTurnEnv:
    parser = vf.Parser()
    return vf.SingleTurnEnv(dataset=Dataset.from_list([{"question": "What is 6 * 7?", "answer": "42"}]),
                            system_prompt="Reply briefly.", parser=parser,
                            rubric=vf.Rubric(funcs=[length_and_answer], parser=parser), **kwargs)
