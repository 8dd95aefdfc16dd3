import json
import subprocess
import sys
from pathlib import Path

import pytest

from seamless.cli import main
from seamless.traces.export import read_traces

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


def test_overrides_may_follow_options(capsys):
    recipe = str(REPO / "recipes/grpo_tiny_cpu.yaml")
    assert main(["sim", recipe, "--json", "cluster.sim.gpus=[4]", "cluster.sim.steps=3"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sim", recipe, "--json", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


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
@pytest.mark.slow
def test_run_trains_resumes_and_writes_a_summary(tmp_path, capsys):
    """The whole main job on a tiny budget: warm-up, GRPO steps, checkpoint, eval, summary; then a
    resume of the finished run continues from its last checkpoint with nothing left to do."""
    recipe = str(REPO / "recipes/grpo_tiny_cpu.yaml")
    small = ["trainer.total_steps=2", "trainer.checkpoint_every=1", "trainer.sft_warmup.steps=2",
             "rollout.batch_size=2", "rollout.group_size=2", "data.eval_size=4", "logging.wandb.mode=offline"]
    run_dir = tmp_path / "run"
    assert main(["run", recipe, *small, "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["eval_accuracy_after"] <= 1.0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("train/policy_loss" in r and "train/mismatch_mean_abs" in r for r in steps)
    # the step profile: parts that are never negative and add up to the step's wall time, which is
    # the time between two step rows (the logger's own clock)
    for row in steps:
        parts = {k: v for k, v in row.items() if k.startswith("profile/") and k != "profile/step_s"}
        assert len(parts) == 14 and min(parts.values()) >= 0, parts
        assert sum(parts.values()) == pytest.approx(row["profile/step_s"], rel=1e-6)
        assert row["profile/generation_s"] > 0 and row["profile/train_s"] > 0
    assert steps[1]["profile/step_s"] == pytest.approx(steps[1]["time"] - steps[0]["time"], abs=0.25)
    assert (run_dir / "profile.png").is_file()
    # the trace export: every trained episode of every step, with the tokens the trainer saw
    traced = list(read_traces(run_dir))
    assert [t.step for t in traced] == [1] * 4 + [2] * 4
    assert len({t.session_id for t in traced}) == 8
    for step_row in steps:
        sequences = [s for t in traced if t.step == step_row["step"] for s in t.sequences]
        assert len(sequences) == step_row["train/num_sequences"]
        assert sum(map(len, (s.token_ids for s in sequences))) == step_row["train/num_tokens"]
        assert all(v >= 1 for s in sequences for v, m in zip(s.weight_versions, s.loss_mask) if m)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1].endswith("2")
    assert (run_dir / "wandb").is_dir()
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "wandb sync" in out
    # resuming a finished run restores the checkpoint and only evaluates again
    assert main(["run", recipe, *small, "--resume", str(run_dir)]) == 0
    assert "resumed from" in capsys.readouterr().out
