import subprocess
import sys
from pathlib import Path

import pytest

from seamless.cli import main

REPO = Path(__file__).parents[1]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "config", "model", "proxy", "sim"):
        assert command in out


def test_console_script_is_installed():
    result = subprocess.run([Path(sys.executable).parent / "seamless", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "usage: seamless" in result.stdout


def test_invalid_override_is_an_error_that_names_the_key(capsys):
    code = main(["config", str(REPO / "recipes/grpo_tiny_cpu.yaml"), "rollout.batch_size=-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("seamless: error: ")
    assert "rollout.batch_size: Input should be greater than or equal to 1 (got -1)" in err


def test_config_prints_the_resolved_recipe(capsys):
    assert main(["config", str(REPO / "recipes/grpo_tiny_cpu.yaml"), "trainer.total_steps=7"]) == 0
    assert "total_steps: 7" in capsys.readouterr().out


def test_model_tiny_writes_a_model_folder(tmp_path, capsys):
    assert main(["model", "tiny", str(tmp_path / "m"), "--seed", "3", "--hidden-size", "64",
                 "--heads", "2", "--kv-heads", "1", "--layers", "1"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_model_tiny_rejects_impossible_sizes(tmp_path, capsys):
    assert main(["model", "tiny", str(tmp_path / "m"), "--hidden-size", "100", "--heads", "3"]) == 2
    assert "must be a multiple of num_heads" in capsys.readouterr().err


@pytest.mark.vllm
def test_run_sends_one_completion_through_the_services(tmp_path, vllm_server, capsys):
    # reuses the session's vLLM server; starts its own private Redis in the run folder
    code = main(["run", str(REPO / "recipes/grpo_tiny_cpu.yaml"), f"rollout.server_urls=[{vllm_server.url}]",
                 "--run-dir", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "started private Redis" in out and "recorded one turn in Redis" in out
    assert "weight version [0]" in out and "tokens in the loss mask" in out
    assert (tmp_path / "run" / "recipe.resolved.yaml").is_file()
    assert (tmp_path / "run" / "redis" / "redis.log").is_file()
