"""Run the tiny GRPO recipe for real under each scheduling policy on 4 logical GPUs, then fit the
simulator to every run and set its numbers beside the measured ones.

    source scripts/env.sh
    flock /tmp/seamless-heavy.lock .venv/bin/python scripts/run_policies.py [--steps 4] [--out runs/policies]
    .venv/bin/python scripts/run_policies.py --compare-only runs/policies/*/   # re-fit recorded runs
    flock /tmp/seamless-heavy.lock .venv/bin/python scripts/run_policies.py --measure-switch
    flock /tmp/seamless-heavy.lock .venv/bin/python scripts/run_policies.py --plan-check RECIPE [--steps 8] [--out DIR]

Each case is one `seamless run` of a recipe in recipes/policies/ (a process of its own, so every
run starts and stops its own Ray, Redis, proxy, servers and trainer). Each run folder gets
timeline.json, timeline.png, recorded_run.json and summary.json; the scheduler's metrics are in
its metrics.jsonl (and W&B). Printed per policy: steps, wall time of the RL loop, trained tokens/s,
bubble ratio, role switches, and the simulator's bubble ratio and tokens/s on the fitted workload.

--plan-check RECIPE (issue 19's measured check of `seamless plan`) runs RECIPE once per layout of
the planner's own candidates on --gpus GPUs (scheduler/plan_check.check_layouts; by default only
the highest staleness of each policy and split, colocated at 0: 8 layouts on 4 GPUs for staleness
1, instead of 14; --every-staleness runs them all). The recipe's supervised warm-up runs once and
every case starts from its weights. Then the planner, calibrated from ONE of the runs
(--calibrate-from; default the recipe's own layout), ranks the same layouts, and one table sets
measured tokens/s (steps after cluster.sim.warmup_steps) beside predicted, with both ranks and the
verdict: is the planner's pick the measured best or within --within (10%) of it. Finished case
folders under --out are reused, so a re-run after a change to the planner re-plans only. The
check's two recipes are recipes/policies/long_answers.yaml and few_sequences.yaml, whose best
layouts differ; cluster/README.md ("Choosing a layout") has their tables.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {"colocated": "colocated.yaml", "disaggregated-sync": "disaggregated_sync.yaml",
         "disaggregated-async": "disaggregated_async.yaml", "tagged": "tagged.yaml"}


def run_case(name: str, out: Path, steps: int, extra: list[str], recipe: Path | None = None,
             timeout_s: float | None = None) -> Path:
    """One `seamless run` (of recipes/policies/CASES[name] unless `recipe`); returns its run folder."""
    run_dir = out / name
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; pick another --out or remove it")
    recipe = recipe or REPO / "recipes" / "policies" / CASES[name]
    cmd = [sys.executable, "-m", "seamless.cli", "run", str(recipe),
           f"trainer.total_steps={steps}", f"trainer.checkpoint_every={steps}", *extra, "--run-dir", str(run_dir)]
    print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
    started = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        child = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # Ctrl-C: the run stops its services itself
            child.send_signal(signal.SIGINT)
            child.wait(timeout=120)
            code = f"timeout after {timeout_s:.0f} s"
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


# --- --plan-check: every layout for real, then the planner calibrated from one of them ----------

def slug(layout) -> str:
    """A folder name for a layout: tagged-3b1r-s1 (t: train only, b: both, r: rollout only)."""
    counts = "".join(f"{n}{c}" for n, c in ((layout.train, "t"), (layout.dual, "b"), (layout.rollout, "r")) if n)
    return f"{layout.policy}-{counts}-s{layout.staleness}"


def warm_start(recipe_path: Path, overrides: list[str], out: Path) -> list[str]:
    """The recipe's supervised warm-up, run once and exported as a Hugging Face folder (as
    bench_e2e.py does): the overrides that start every case from its weights, so no case pays or
    varies it."""
    from seamless.config import load_recipe
    from seamless.run.warm_start import WarmStart, export_warm_start

    recipe = load_recipe(recipe_path, overrides)
    if recipe.trainer.sft_warmup.steps == 0 or recipe.model.path:
        return []
    folder = out / "warm"
    if (folder / "config.json").exists():
        return WarmStart(folder, "").overrides()
    start = export_warm_start(recipe, out)
    print(f"warm start: {start.note}", flush=True)
    return start.overrides()


def plan_check(args) -> int:
    """Run every checked layout of args.plan_check (reusing finished ones), then judge the planner."""
    from seamless.config import load_recipe
    from seamless.scheduler.plan_check import check_layouts, format_check, judge, layout_of, measured_tokens_per_s
    from seamless.scheduler.planner import make_plan

    recipe_path, out = Path(args.plan_check).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, *warm_start(recipe_path, args.overrides, out)]
    recipe = load_recipe(recipe_path, overrides)
    max_stale = int(getattr(recipe.algorithm, "max_staleness", 1))
    layouts = check_layouts(args.gpus, max_stale, args.every_staleness)
    own = layout_of(recipe.cluster) if recipe.cluster.num_gpus == args.gpus else None
    if own in layouts:  # the recipe's own layout first: the default to calibrate from
        layouts.remove(own)
        layouts.insert(0, own)
    if args.layouts:  # a subset the CPU budget allows (named in the output)
        unknown = set(args.layouts) - {slug(lay) for lay in layouts}
        if unknown:
            raise SystemExit(f"--layouts {sorted(unknown)}: not among {[slug(lay) for lay in layouts]}")
        layouts = [lay for lay in layouts if slug(lay) in args.layouts]
    layouts = layouts[:args.limit] if args.limit else layouts
    print(f"plan check: {recipe_path.name} on {args.gpus} GPUs, {len(layouts)} layouts "
          f"({'every staleness' if args.every_staleness else f'staleness {max_stale} only, colocated 0'}), "
          f"{args.steps} steps each", flush=True)
    seconds = {}
    for layout in layouts:
        if (out / slug(layout) / "summary.json").is_file():
            continue
        if (out / slug(layout)).exists():  # an unfinished try: kept aside, not reused
            (out / slug(layout)).rename(out / f"{slug(layout)}.unfinished-{time.strftime('%H%M%S')}")
        started = time.monotonic()
        run_case(slug(layout), out, args.steps, [*overrides, *layout.overrides()], recipe_path, args.case_timeout)
        seconds[slug(layout)] = round(time.monotonic() - started)
    warmup = recipe.cluster.sim.warmup_steps
    measured = {lay: measured_tokens_per_s(out / slug(lay), warmup)[0] for lay in layouts}
    calibrate = next((lay for lay in layouts if slug(lay) == args.calibrate_from), layouts[0])
    plan = make_plan(recipe, args.gpus, run_dir=out / slug(calibrate))
    result = judge(measured, plan, calibrate, args.within)
    units = recipe.cluster.sim.compute_units
    title = (f"{recipe_path.name}, {args.gpus} logical GPUs, {args.steps} steps a layout (measured over the "
             f"steps after the first {warmup}); planner calibrated from {slug(calibrate)} "
             f"(its sim error there: {plan.calibration.tokens_per_s_error:.0%} tokens/s); simulator: "
             + (f"the GPUs share {units:g} compute units" if units else "every GPU computes on its own"))
    unmeasured = "" if plan.best.layout in measured else " -- NOT measured here"
    took = f"{min(seconds.values())}-{max(seconds.values())} s a case, {sum(seconds.values()) / 60:.1f} min" \
        if seconds else "reused"
    text = (format_check(result, title) + f"\nthe planner's pick among all its {len(plan.ranked)} candidates: "
            f"{plan.best.layout.label()} ({plan.best.tokens_per_s:,.1f} tokens/s predicted){unmeasured}"
            f"\nruns: {took}")
    if args.every_calibration:  # the same verdict from each recorded run in turn: how much hangs on which
        for source in layouts:
            other = judge(measured, make_plan(recipe, args.gpus, run_dir=out / slug(source)), source, args.within)
            text += (f"\n  calibrated from {slug(source):<22} pick {slug(other.pick.layout):<22} within "
                     f"{other.shortfall:4.0%} of best: {'PASS' if other.passed else 'FAIL'}")
    print(text, flush=True)
    (out / f"plan_check{args.tag}.txt").write_text(text + "\n")
    (out / f"plan_check{args.tag}.json").write_text(json.dumps({
        "recipe": str(recipe_path), "steps": args.steps, "warmup_steps": warmup, "case_seconds": seconds,
        "calibrated_from": slug(calibrate), "passed": result.passed, "shortfall": result.shortfall,
        "rows": [{"layout": slug(r.layout), "measured": r.measured, "predicted": r.predicted,
                  "measured_rank": r.measured_rank, "planner_rank": r.planner_rank} for r in result.rows],
        "plan": plan.to_json()}, indent=1))
    return 0 if result.passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / f"policies-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per policy")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run only these policies")
    parser.add_argument("--tolerance", type=float, default=0.2, help="sim-vs-real relative error allowed")
    parser.add_argument("--compare-only", nargs="*", metavar="RUN_DIR",
                        help="skip running; fit and compare these run folders (named by their folder)")
    parser.add_argument("--measure-switch", action="store_true", help="time stop+start against park+unpark")
    parser.add_argument("--plan-check", metavar="RECIPE", help="run every planner layout of RECIPE; judge the plan")
    parser.add_argument("--gpus", type=int, default=4, help="--plan-check: the pool's GPUs (logical on CPU)")
    parser.add_argument("--every-staleness", action="store_true", help="--plan-check: every staleness, not the max")
    parser.add_argument("--layouts", nargs="*", metavar="SLUG", help="--plan-check: only these (e.g. colocated-4b-s0)")
    parser.add_argument("--limit", type=int, help="--plan-check: only the first N layouts (a smoke test)")
    parser.add_argument("--calibrate-from", metavar="SLUG", help="--plan-check: the case to calibrate from "
                        "(e.g. tagged-2b2r-s1; default: the recipe's own layout, else the first)")
    parser.add_argument("--every-calibration", action="store_true",
                        help="--plan-check: also the verdict calibrated from each run in turn")
    parser.add_argument("--tag", default="", help="--plan-check: suffix of plan_check.txt/.json (e.g. -units)")
    parser.add_argument("--within", type=float, default=0.1, help="--plan-check: pick's allowed shortfall")
    parser.add_argument("--case-timeout", type=float, default=600, help="--plan-check: seconds a case may run")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="passed to every run")
    args = parser.parse_args()
    out = Path(args.out)
    os.environ.setdefault("WANDB_MODE", "offline")
    if args.measure_switch:
        measure_switch(out / "switch")
        return 0
    if args.plan_check:
        return plan_check(args)
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
