"""`seamless run` on the tiny CPU recipe with its private Redis stopped (SIGSTOP) for a while once
step 1 is logged: does the run ride it out? Prints the exit code, the steps logged, the wall time
and the run's lines about retries and failures.

    .venv/bin/python scripts/bench_run_stall.py [--stall-s 30] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the run with INFO logging (retries, server events), and a traceback if it fails
WRAPPER = """
import logging, sys, traceback
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("httpx").setLevel(logging.WARNING)
import seamless.run.parts as parts
describe = parts.describe_failure
parts.describe_failure = lambda exc, d: describe(exc, d) + "\\n" + "".join(traceback.format_exception(exc))
from seamless.cli import main
sys.exit(main(sys.argv[1:]))
"""
SHOWN = ("Retrying request", "Redis", "failed", "Error", "server r0 died", "Traceback")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stall-s", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-stall-")) / "run"
    overrides = [f"trainer.total_steps={args.steps}", "trainer.checkpoint_every=1", "trainer.sft_warmup.steps=2",
                 "rollout.batch_size=2", "rollout.group_size=4", "data.eval_size=4", "logging.wandb.mode=offline"]
    log_path = run_dir.parent / "run.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "run", str(REPO / "recipes/grpo_tiny_cpu.yaml"),
                                 *overrides, "--run-dir", str(run_dir)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        while proc.poll() is None and 1 not in _steps(run_dir):
            time.sleep(0.5)
        pid_file = run_dir / "redis" / "redis.pid"
        if proc.poll() is None and pid_file.is_file():
            pid = int(pid_file.read_text())
            print(f"step 1 logged after {time.monotonic() - started:.0f} s; stopping Redis (pid {pid})", flush=True)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(args.stall_s)
            try:
                os.kill(pid, signal.SIGCONT)
                print(f"Redis continued after {args.stall_s:g} s", flush=True)
            except ProcessLookupError:
                print("Redis was gone before SIGCONT: the run ended during the stall")
        code = proc.wait()
    print(f"exit code {code}; steps logged {sorted(_steps(run_dir))} of {args.steps}; "
          f"{time.monotonic() - started:.0f} s; log {log_path}")
    for line in log_path.read_text().splitlines():
        if any(word in line for word in SHOWN):
            print("  ", line[:240])
    return code


def _steps(run_dir: Path) -> set[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["step"] for row in rows if "rollout/reward_mean" in row}


if __name__ == "__main__":
    sys.exit(main())
