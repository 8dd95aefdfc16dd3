"""Run the tiny GRPO recipe for real under each scheduling policy on 4 logical GPUs, then fit the
simulator to every run and set its numbers beside the measured ones.

    source scripts/env.sh
    flock /tmp/seamless-heavy.lock .venv/bin/python scripts/run_policies.py [--steps 4] [--out runs/policies]
    .venv/bin/python scripts/run_policies.py --compare-only runs/policies/*/   # re-fit recorded runs
    flock /tmp/seamless-heavy.lock .venv/bin/python scripts/run_policies.py --measure-switch

Each case is one `seamless run` of a recipe in recipes/policies/ (a process of its own, so every
run starts and stops its own Ray, Redis, proxy, servers and trainer). Each run folder gets
timeline.json, timeline.png, recorded_run.json and summary.json; the scheduler's metrics are in
its metrics.jsonl (and W&B). Printed per policy: steps, wall time of the RL loop, trained tokens/s,
bubble ratio, role switches, and the simulator's bubble ratio and tokens/s on the fitted workload.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {"colocated": "colocated.yaml", "disaggregated-sync": "disaggregated_sync.yaml",
         "disaggregated-async": "disaggregated_async.yaml", "tagged": "tagged.yaml"}


def run_case(name: str, out: Path, steps: int, extra: list[str]) -> Path:
    """One `seamless run`; returns its run folder."""
    run_dir = out / name
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; pick another --out or remove it")
    cmd = [sys.executable, "-m", "seamless.cli", "run", str(REPO / "recipes" / "policies" / CASES[name]),
           f"trainer.total_steps={steps}", f"trainer.checkpoint_every={steps}", *extra, "--run-dir", str(run_dir)]
    print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
    started = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    print(f"   exit {code} after {time.monotonic() - started:.0f} s (log: {out / f'{name}.log'})", flush=True)
    if code != 0:
        raise SystemExit(f"{name} failed; see {out / f'{name}.log'}")
    return run_dir


def report(run_dirs: dict[str, Path], tolerance: float) -> list[dict]:
    """A row per run: measured numbers and the fitted simulator's."""
    from seamless.config import SimConfig, load_recipe
    from seamless.scheduler.validate import RecordedRun, compare

    rows = []
    for name, run_dir in run_dirs.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        recipe = load_recipe(run_dir / "recipe.resolved.yaml", [])
        # what the timeline cannot tell the fit: how many calls the agents run at once
        base = SimConfig(max_concurrency=recipe.rollout.agent_concurrency)
        recorded = RecordedRun.load(run_dir / "recorded_run.json")
        recorded.agent_concurrency = recorded.agent_concurrency or recipe.rollout.agent_concurrency
        comparison = compare(recorded, base)
        bubble_err, tokens_err = comparison.relative_errors()
        rows.append({"policy": name, "steps": summary["steps"], "loop_s": summary["timeline_s"],
                     "tokens_per_s": summary["trained_tokens"] / summary["timeline_s"],
                     "bubble": summary["bubble_ratio"], "by_phase": summary["bubble_ratio_by_phase"],
                     "switches": summary["role_switches"],
                     "real_bubble_window": comparison.real_bubble_ratio, "sim_bubble": comparison.sim_bubble_ratio,
                     "real_tokens_per_s_window": comparison.real_tokens_per_s,
                     "sim_tokens_per_s": comparison.sim_tokens_per_s, "bubble_err": bubble_err,
                     "tokens_err": tokens_err, "within": comparison.within(tolerance)})
    return rows


def print_table(rows: list[dict], tolerance: float) -> None:
    header = (f"{'policy':<20} {'steps':>5} {'loop s':>7} {'tok/s':>7} {'bubble':>7} {'switches':>8} | "
              f"{'window: real bubble':>19} {'sim':>6} {'err':>5} | {'real tok/s':>10} {'sim':>7} {'err':>5} | ok")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['policy']:<20} {r['steps']:>5} {r['loop_s']:>7.1f} {r['tokens_per_s']:>7.1f} {r['bubble']:>7.1%} "
              f"{r['switches']:>8} | {r['real_bubble_window']:>19.1%} {r['sim_bubble']:>6.1%} {r['bubble_err']:>5.0%} | "
              f"{r['real_tokens_per_s_window']:>10.1f} {r['sim_tokens_per_s']:>7.1f} {r['tokens_err']:>5.0%} | "
              f"{'yes' if r['within'] else 'NO'}")
    print(f"(loop s, tok/s, bubble: the whole RL loop; window: the steps after the simulator's warm-up, "
          f"where sim and real are compared; ok: both within {tolerance:.0%})")
    for r in rows:
        phases = ", ".join(f"{k} {v:.0%}" for k, v in r["by_phase"].items())
        print(f"  {r['policy']}: bubble by phase: {phases}")


def measure_switch(out: Path) -> None:
    """Leaving and rejoining rollout on one resource: stop + start a vLLM server, against park +
    unpark (unregister, /pause?mode=abort, later reload + /resume + register)."""
    from seamless.config import RolloutConfig
    from seamless.proxy.server import ProxyProcess
    from seamless.cluster.ray_cluster import start_ray, stop_ray
    from seamless.rollout.fleet import VLLMFleet
    from seamless.rollout.proxy_admin import ProxyAdmin
    from seamless.rollout.server_http import post_each
    from seamless.services.redis_server import RedisServer
    from seamless.models.tiny import build_tiny_model
    from seamless.config import TinyModelConfig

    out.mkdir(parents=True, exist_ok=True)
    model = out / "model"
    if not (model / "config.json").exists():
        build_tiny_model(model, TinyModelConfig())
    start_ray(num_gpus=1, num_cpus=2)
    try:
        with RedisServer(out / "redis") as redis, ProxyProcess(redis.url, out / "proxy", prefix="switch") as proxy:
            fleet = VLLMFleet(model, out, ProxyAdmin(proxy.url, proxy.admin_key),
                              config=RolloutConfig(kv_cache_memory_bytes=32 << 20))
            try:
                def timed(f, *args, **kwargs) -> float:
                    started = time.monotonic()
                    f(*args, **kwargs)
                    return time.monotonic() - started

                warm: list[float] = []  # the fleet's warm-up of each new server, timed apart
                fleet_warm = fleet._warm
                fleet._warm = lambda urls: warm.append(timed(fleet_warm, urls))
                start = timed(fleet.add_server, None, 0)
                url = fleet.servers()[0]
                body = {"model": fleet.options.served_model_name, "prompt": "1+2=", "max_tokens": 4, "logprobs": 1}
                after = timed(post_each, [url] * 4, "/v1/completions", json=body)
                print(f"warm-up of a fresh server (4 requests at once): {warm[0]:.2f} s; the same 4 requests "
                      f"right after: {after:.2f} s")
                fleet.publish(model)  # to the server in rotation, and to every later (re)joining one
                stop = timed(fleet.remove_server, 0)
                restart = timed(fleet.add_server, None, 0)
                parks, unparks = [], []
                for _ in range(3):
                    parks.append(timed(fleet.park_server, 0))
                    fleet.publish(model, [])  # staged only: the parked server loads it as it rejoins
                    unparks.append(timed(fleet.add_server, None, 0))
            finally:
                fleet.shutdown()
    finally:
        stop_ray()
    print(f"first start {start:.1f} s (warm-up included); leave rollout by stop {stop:.2f} s, rejoin by "
          f"start (+ weights, warm-up {warm[-1]:.1f} s) {restart:.1f} s")
    print(f"park {min(parks) * 1e3:.0f}-{max(parks) * 1e3:.0f} ms, unpark (+ reload weights) "
          f"{min(unparks) * 1e3:.0f}-{max(unparks) * 1e3:.0f} ms over {len(parks)} round trips")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / f"policies-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per policy")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run only these policies")
    parser.add_argument("--tolerance", type=float, default=0.2, help="sim-vs-real relative error allowed")
    parser.add_argument("--compare-only", nargs="*", metavar="RUN_DIR",
                        help="skip running; fit and compare these run folders (named by their folder)")
    parser.add_argument("--measure-switch", action="store_true", help="time stop+start against park+unpark")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="passed to every run")
    args = parser.parse_args()
    out = Path(args.out)
    os.environ.setdefault("WANDB_MODE", "offline")
    if args.measure_switch:
        measure_switch(out / "switch")
        return 0
    if args.compare_only:
        run_dirs = {Path(d).name: Path(d) for d in args.compare_only}
    else:
        out.mkdir(parents=True, exist_ok=True)
        run_dirs = {name: run_case(name, out, args.steps, args.overrides) for name in (args.only or CASES)}
    rows = report(run_dirs, args.tolerance)
    print_table(rows, args.tolerance)
    (out / "policies.json").write_text(json.dumps(rows, indent=1)) if out.exists() else None
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
