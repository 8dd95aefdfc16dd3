"""The planner checked against measurement: every layout of a small pool run for real, then the
planner, calibrated from one of those runs, ranks the same layouts; did it pick the measured best
or one close to it? (scripts/run_policies.py --plan-check runs the layouts; this module holds
what does not need a run: which layouts, the measured speed of a run folder, the verdict.)

Measured and predicted tokens/s cover the same window: the steps after the simulator's warm-up
(`cluster.sim.warmup_steps`), as `validate.compare` measures a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seamless.config import ClusterConfig
from seamless.scheduler.planner import Layout, Plan, candidate_layouts


def check_layouts(gpus: int, max_staleness: int, every_staleness: bool = False) -> list[Layout]:
    """The planner's own candidate layouts of `gpus` GPUs, each once. Unless `every_staleness`,
    only the highest staleness of each policy and split (colocated stays synchronous): the cheaper
    check, since more staleness never lengthens a step in the simulator or, rollout ahead of
    training, in a real run; the planner is then judged on that same set."""
    layouts = candidate_layouts(gpus, max_staleness)
    if not every_staleness:
        layouts = [lay for lay in layouts if lay.policy == "colocated" or lay.staleness == max_staleness]
    # two layouts that build the same pool and policy are one case (e.g. all-dual tagged at 0 is colocated)
    seen: dict[tuple, Layout] = {}
    for lay in layouts:
        seen.setdefault((lay.policy, lay.staleness, tuple((n, tuple(t)) for n, t in lay.groups())), lay)
    return list(seen.values())


def layout_of(cluster: ClusterConfig) -> Layout:
    """The Layout a recipe's cluster section describes (its staleness resolved as the run uses it)."""
    counts = {"train": 0, "dual": 0, "rollout": 0}
    for group in cluster.resources:
        tags = set(group.tags)
        key = "dual" if {"train", "rollout"} <= tags else "train" if "train" in tags else "rollout"
        counts[key] += group.count
    return Layout(cluster.policy, counts["train"], counts["dual"], counts["rollout"], cluster.staleness)


def measured_tokens_per_s(run_dir: str | Path, warmup_steps: int) -> tuple[float, int]:
    """Trained (generated) tokens per second of a run folder over its steps after `warmup_steps`
    (fewer when the run had no more), and how many steps that window holds."""
    from seamless.scheduler.validate import RecordedRun, real_tokens_per_s

    run = RecordedRun.load(Path(run_dir) / "recorded_run.json")
    steps = len(run.step_tokens or [])
    first = min(warmup_steps, max(0, steps - 1))
    return real_tokens_per_s(run, first), steps - first


@dataclass(frozen=True)
class CheckRow:
    layout: Layout
    measured: float
    predicted: float
    measured_rank: int
    planner_rank: int


@dataclass(frozen=True)
class CheckResult:
    rows: list[CheckRow]
    """By measured tokens/s, fastest first."""
    calibrated_from: Layout
    tolerance: float

    @property
    def pick(self) -> CheckRow:
        return min(self.rows, key=lambda r: r.planner_rank)

    @property
    def best(self) -> CheckRow:
        return self.rows[0]

    @property
    def shortfall(self) -> float:
        """How much slower (measured) the planner's pick ran than the measured best."""
        return 1 - self.pick.measured / max(self.best.measured, 1e-9)

    @property
    def passed(self) -> bool:
        return self.shortfall <= self.tolerance


def judge(measured: dict[Layout, float], plan: Plan, calibrated_from: Layout, tolerance: float = 0.1) -> CheckResult:
    """Rank the measured layouts by measurement and by the plan's prediction (the plan judged on
    the measured layouts only; its candidates must include them all)."""
    predicted = {p.layout: p.tokens_per_s for p in plan.ranked}
    missing = [lay.label() for lay in measured if lay not in predicted]
    if missing:
        raise ValueError(f"the plan has no prediction for {missing}; plan the same GPU count and staleness")
    by_plan = sorted(measured, key=lambda lay: (-predicted[lay], lay))
    by_real = sorted(measured, key=lambda lay: (-measured[lay], lay))
    rows = [CheckRow(lay, measured[lay], predicted[lay], by_real.index(lay) + 1, by_plan.index(lay) + 1)
            for lay in by_real]
    return CheckResult(rows, calibrated_from, tolerance)


def format_check(result: CheckResult, title: str = "") -> str:
    head = f"{'layout':<48} {'measured tok/s':>14} {'predicted':>9} {'measured rank':>13} {'planner rank':>12}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in result.rows:
        mark = " (calibrated from)" if r.layout == result.calibrated_from else ""
        lines.append(f"{r.layout.label():<48} {r.measured:>14,.1f} {r.predicted:>9,.1f} {r.measured_rank:>13} "
                     f"{r.planner_rank:>12}{mark}")
    lines.append(f"planner pick: {result.pick.layout.label()}, measured best: {result.best.layout.label()}, "
                 f"pick within {result.shortfall:.0%} of best: {'PASS' if result.passed else 'FAIL'} "
                 f"(allowed {result.tolerance:.0%})")
    return "\n".join(lines)
