"""`seamless run` killed with SIGKILL in the middle of a run, then resumed with --resume.

The real command runs in a subprocess on a small version of the tiny CPU recipe. It is killed
once a checkpoint exists (step 2) and a later step (3) was trained and logged, so the episode
stream holds entries the checkpoint does not include, and the rollout of step 4 may be half done.
Then it is resumed. Checked: nothing the killed run started outlives it; every finished episode
of the run was trained exactly once in the final weights' history (none lost, none twice); the
metrics continue without a gap; summary.json has every step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

from seamless.services.redis_server import RedisServer
from seamless.traces.export import read_traces

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo_tiny_cpu.yaml"
TOTAL_STEPS, CHECKPOINT_EVERY, EPISODES_PER_STEP = 4, 2, 4 * 2
OVERRIDES = [f"trainer.total_steps={TOTAL_STEPS}", f"trainer.checkpoint_every={CHECKPOINT_EVERY}",
             "trainer.sft_warmup.steps=5", "rollout.batch_size=4", "rollout.group_size=2", "data.eval_size=4",
             "logging.wandb.mode=disabled", "trainer.eval_every=100", "logging.wandb.sample_table_every=100"]
PREFIX = "grpo-tiny-cpu"  # store.key_prefix defaults to run.name


def test_sigkill_mid_run_then_resume_loses_and_trains_twice_nothing(tmp_path: Path):
    run_dir = tmp_path / "run"
    first = _seamless_run(["--run-dir", str(run_dir)], tmp_path / "first.out")
    try:
        # a checkpoint at step 2, and step 3 trained and logged after it: the run is inside step 4
        _wait_for(first, tmp_path / "first.out", lambda: _checkpointed(run_dir, 2) and 3 in _step_rows(run_dir))
        descendants = psutil.Process(first.pid).children(recursive=True)
        logged_before_kill = _step_rows(run_dir)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert not _checkpointed(run_dir, 4), "the kill came too late to cut a step off; see first.out"

    # 1. nothing it started outlives it: Redis, the proxy, vLLM and its engine process, Ray
    started = time.monotonic()
    survivors = _survivors(descendants, within_s=20)
    assert not survivors, f"still running after the kill: {survivors}"
    print(f"{len(descendants)} processes of the killed run gone {time.monotonic() - started:.1f} s after the kill")

    # 2. resume, and run to the end
    second = _seamless_run(["--resume", str(run_dir)], tmp_path / "second.out")
    try:
        assert second.wait(timeout=300) == 0, _tail(tmp_path / "second.out")
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
    out = (tmp_path / "second.out").read_text()
    assert "resumed from" in out and "step_00000002 at step 2" in out, _tail(tmp_path / "second.out")
    # step 3's episodes were trained after the checkpoint and its weights lost: they join step 3 again
    assert "finished episode(s) from before the restart join step 3" in out, _tail(tmp_path / "second.out")

    # 3. the metrics continue: every step once, except the step(s) cut off after the checkpoint,
    #    which the killed run logged and the resumed run trained and logged again
    rows = _step_rows(run_dir)
    assert sorted(rows) == list(range(1, TOTAL_STEPS + 1)), rows
    for step, count in rows.items():
        expected = 1 + (step > 2 and step in logged_before_kill)
        assert count == expected, f"step {step} logged {count} times, expected {expected}: {rows}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == TOTAL_STEPS

    # 4. every finished episode trained exactly once: the final checkpoint's history of trained
    #    stream entries has no repeat and one entry per finished session (finishing publishes one
    #    entry, once); every finished session was acknowledged (its keys got their retention TTL)
    #    and nothing is left in the stream, delivered or not
    state = json.loads((run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}" / "trainer_state.json").read_text())
    trained = state["extra_state"]["trained_entry_ids"]
    # episodes sampled (in part) by weights the kill threw away are acknowledged, never trained
    discarded = state["extra_state"]["discarded_entry_ids"]
    assert len(trained) == len(set(trained)), "an episode was trained twice"
    assert not set(trained) & set(discarded)
    with RedisServer(run_dir / "redis") as server, redis.Redis.from_url(server.url) as client:
        finished = []
        for key in client.scan_iter(f"{PREFIX}:session:*"):
            fields = client.hgetall(key)
            if fields[b"status"] == b"finished":
                finished.append(key)
                assert client.ttl(key) > 0, f"{key!r} finished but never acknowledged (not trained)"
        assert client.xlen(f"{PREFIX}:episodes") == 0
        assert client.xpending(f"{PREFIX}:episodes", "trainer")["pending"] == 0
    # the killed run finished 3 steps' worth at least, the resumed run 2 more
    assert len(finished) >= (3 + 2) * EPISODES_PER_STEP
    assert len(trained) + len(discarded) == len(finished), (f"{len(finished)} finished episodes, {len(trained)} "
                                                           f"trained, {len(discarded)} dropped")
    # the trace export says the same: one file per step, every trained episode in exactly one
    traced = list(read_traces(run_dir))
    assert sorted({t.step for t in traced}) == list(range(1, TOTAL_STEPS + 1))
    assert sorted(t.entry_id for t in traced) == sorted(trained)
    assert len({t.session_id for t in traced}) == len(traced) == len(trained)
    # versions are never reused: the resumed run publishes above every version the killed run did,
    # and nothing it trains carries a version of the lost weights
    lost = _lost_versions(out)
    assert not any(v in lost for t in traced for s in t.sequences for v in s.weight_versions)


def _seamless_run(args: list[str], out: Path) -> subprocess.Popen:
    # PYTHONPATH: the driver, the proxy and Ray's workers all import this checkout's seamless
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(out, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "seamless.cli", "run", str(RECIPE), *OVERRIDES, *args],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _lost_versions(out: str) -> range:
    """The versions the killed run published after its checkpoint, as the resumed run reports them."""
    import re

    match = re.search(r"versions (\d+)-(\d+) of the killed run's weights are lost", out)
    assert match, "the resumed run did not say which versions were lost (step 3's weights were)"
    return range(int(match[1]), int(match[2]) + 1)


def _wait_for(process: subprocess.Popen, out: Path, ready, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"seamless run exited with {process.returncode}:\n{_tail(out)}"
        assert time.monotonic() < deadline, f"not there after {timeout_s} s:\n{_tail(out)}"
        time.sleep(0.02)


def _checkpointed(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").exists()


def _step_rows(run_dir: Path) -> dict[int, int]:
    """How many training-step rows metrics.jsonl holds for each step (warm-up and eval rows aside)."""
    counts: dict[int, int] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return counts
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if "rollout/reward_mean" in row:
            counts[row["step"]] = counts.get(row["step"], 0) + 1
    return counts


def _survivors(processes: list[psutil.Process], within_s: float) -> list[str]:
    """Those of `processes` still running (zombies aside) after up to `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
