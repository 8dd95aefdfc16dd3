"""scripts/gpu_check.py on this CPU machine: the GPU sections skip with their reason, and the
trainer-side sections run on a tiny Qwen2-shaped model, so the script cannot rot where CI has no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_its_trainer_sections_on_cpu_and_skips_the_gpu_ones(tmp_path):
    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--layers", "2", "--hidden", "64", "--intermediate", "128", "--vocab", "1024",
            "--seq-len", "64", "--sequences", "8", "--micro-batch", "2", "--steps", "1", "--out", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    sections = json.loads(out.read_text())["sections"]
    assert sections["build_model"]["tied"] and sections["build_model"]["parameters"] > 0
    for name in ("matmul", "ipc", "rank_ipc", "vllm", "colocated"):
        assert "CUDA device" in sections[name]["skipped"], sections[name]
    # the role switch's DeepSpeed calls run on CPU too (host to host, nothing freed): the rank still trains
    offload = sections["offload"]
    assert "skipped" not in offload and offload["freed_optimizer_gib"] == 0, offload
    assert offload["loss_after_reload"] == offload["loss_after_reload"]  # not NaN

    step = sections["train_step"]
    assert step["seamless"]["tokens_per_s"] > 0 and step["plain_torch"]["tokens_per_s"] > 0
    # fp32 on CPU: the trainer's logprobs are transformers' to float precision
    assert sections["logprobs"]["vs_hf_float32"]["max_abs"] < 1e-4, sections["logprobs"]


def test_gpu_check_without_a_gpu_skips_every_section_saying_why(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    sections = json.loads(out.read_text())["sections"]
    assert sections["environment"]["cuda_available"] is False
    assert all("skipped" in result for name, result in sections.items() if name != "environment"), sections
    assert "--device cpu" in sections["build_model"]["skipped"]
