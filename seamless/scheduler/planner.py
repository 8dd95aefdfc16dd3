"""`seamless plan`: the simulator chooses the layout (how many GPUs roll out, train, or do both, and
how stale rollout may be) for a recipe on N GPUs.

Every candidate layout runs through the same simulator `seamless sim` uses (sim.py), on the
recipe's workload model (`cluster.sim`) or, better, on one fitted to a recorded run
(validate.fit_workload). The batch (rollout.batch_size x group_size) and the algorithm stay as the
recipe has them; staleness is searched up to what the algorithm still trains on
(`algorithm.max_staleness`). A plan calibrated from a run says how far the simulator was off on
that run, and re-ranks the leaders with the fitted speeds moved by that error, so a reader sees
whether the pick holds within it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from seamless.config import ClusterConfig, Recipe, ResourceGroup, SimConfig
from seamless.errors import ConfigError
from seamless.scheduler.policy import make_policy
from seamless.scheduler.resources import ResourcePool
from seamless.scheduler.sim import SimResult, Simulation, with_server_cap

SHARES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
"""Shares of the GPUs on the training side that the search tries (each rounded to whole GPUs)."""


@dataclass(frozen=True, order=True)
class Layout:
    """One way to use N GPUs: counts per tag set, the policy, and the staleness bound."""

    policy: str
    train: int  # tagged [train] only
    dual: int  # tagged [train, rollout]
    rollout: int  # tagged [rollout] only
    staleness: int

    @property
    def gpus(self) -> int:
        return self.train + self.dual + self.rollout

    def label(self) -> str:
        parts = [f"{n} {name}" for n, name in ((self.train, "train"), (self.dual, "both"), (self.rollout, "rollout")) if n]
        return f"{self.policy} ({', '.join(parts)}; staleness {self.staleness})"

    def groups(self) -> list[tuple[int, list[str]]]:
        """(count, tags) of each tag set this layout uses."""
        return [(n, tags) for n, tags in
                ((self.train, ["train"]), (self.dual, ["train", "rollout"]), (self.rollout, ["rollout"])) if n]

    def cluster(self, base: ClusterConfig) -> ClusterConfig:
        """`base` with this layout's resources, policy and staleness (everything else kept)."""
        groups = [ResourceGroup(count=n, tags=tags) for n, tags in self.groups()]
        return base.model_copy(update={"resources": groups, "policy": self.policy,
                                       "max_async_staleness": self.staleness})

    def _flow_groups(self) -> list[str]:
        return [f"{{count: {n}, tags: [{', '.join(tags)}]}}" for n, tags in self.groups()]

    def yaml(self) -> str:
        """The `cluster:` keys of this layout, ready to paste into a recipe."""
        lines = ["cluster:", f"  policy: {self.policy}", f"  max_async_staleness: {self.staleness}", "  resources:"]
        return "\n".join(lines + [f"    - {group}" for group in self._flow_groups()])

    def overrides(self) -> list[str]:
        """The same as KEY=VALUE overrides for `seamless run`."""
        return [f"cluster.policy={self.policy}", f"cluster.max_async_staleness={self.staleness}",
                f"cluster.resources=[{', '.join(self._flow_groups())}]"]


@dataclass(frozen=True)
class Prediction:
    layout: Layout
    tokens_per_s: float
    bubble_ratio: float
    staleness_mean: float
    step_time_s: float
    bound: str
    """What the layout waits on most: `rollout` (training waits for data), `training` (rollout
    waits for the trainer), or `switching` (role switches and weight syncs)."""


@dataclass(frozen=True)
class Calibration:
    """How far the simulator was off on the run it was fitted to (relative errors)."""

    run_dir: str
    tokens_per_s_error: float
    bubble_ratio_error: float


@dataclass
class Plan:
    gpus: int
    batch_episodes: int
    workload: SimConfig
    ranked: list[Prediction]
    fixed: dict[str, Prediction]
    """The three fixed policies as `seamless sim` sets them up (train_share of cluster.sim)."""
    calibration: Calibration | None = None
    leaders_under_error: list[str] = field(default_factory=list)
    """The best layout in each scenario of the error band (faster/slower decode and training)."""
    seconds: float = 0.0

    @property
    def best(self) -> Prediction:
        return self.ranked[0]

    def to_json(self) -> dict:
        row = lambda p: {"layout": p.layout.label(), "policy": p.layout.policy, "train": p.layout.train,  # noqa: E731
                         "both": p.layout.dual, "rollout": p.layout.rollout, "staleness": p.layout.staleness,
                         "tokens_per_s": round(p.tokens_per_s, 2), "bubble_ratio": round(p.bubble_ratio, 4),
                         "staleness_mean": round(p.staleness_mean, 3), "step_time_s": round(p.step_time_s, 3),
                         "bound": p.bound}
        return {"gpus": self.gpus, "batch_episodes": self.batch_episodes, "seconds": round(self.seconds, 1),
                "best": row(self.best), "cluster_yaml": self.best.layout.yaml(),
                "overrides": self.best.layout.overrides(), "ranked": [row(p) for p in self.ranked],
                "fixed": {k: row(p) for k, p in self.fixed.items()},
                "calibration": None if self.calibration is None else vars(self.calibration),
                "leaders_under_error": self.leaders_under_error}


def candidate_layouts(gpus: int, max_staleness: int) -> list[Layout]:
    """Colocated; disaggregated and tagged at every share in SHARES (tagged also all-dual), each at
    staleness 0..max_staleness."""
    if gpus < 2:
        raise ConfigError(f"--gpus {gpus}: plan at least 2 GPUs")
    counts = sorted({min(gpus - 1, max(1, round(gpus * share))) for share in SHARES})
    stale = range(max_staleness + 1)
    layouts = {Layout("colocated", 0, gpus, 0, 0)}
    layouts |= {Layout("disaggregated", t, 0, gpus - t, k) for t in counts for k in stale}
    layouts |= {Layout("tagged", 0, t, gpus - t, k) for t in counts for k in stale}
    layouts |= {Layout("tagged", 0, gpus, 0, k) for k in stale if k}  # at staleness 0 that is colocated
    return sorted(layouts)


def _layouts_with_trainers(gpus: int, trainers: int, max_staleness: int) -> list[Layout]:
    stale = range(max_staleness + 1)
    if trainers >= gpus:
        return [Layout("colocated", 0, gpus, 0, 0)] + [Layout("tagged", 0, gpus, 0, k) for k in stale if k]
    return sorted({Layout(policy, trainers if policy == "disaggregated" else 0,
                          trainers if policy == "tagged" else 0, gpus - trainers, k)
                   for policy in ("disaggregated", "tagged") for k in stale})


def predict(layout: Layout, workload: SimConfig, batch_episodes: int, episode_overhead_s: float = 0.0,
            agent_concurrency: int | None = None) -> Prediction:
    pool = ResourcePool.from_cluster(layout.cluster(ClusterConfig()))
    result = Simulation(make_policy(layout.policy, pool, layout.staleness), workload, layout.label(),
                        batch_episodes=batch_episodes, episode_overhead_s=episode_overhead_s,
                        agent_concurrency=agent_concurrency).run()
    return Prediction(layout, result.tokens_per_s, result.bubble_ratio, result.staleness_mean,
                      result.step_time_s, _bound(result))


def _bound(result: SimResult) -> str:
    """Where the wall time of the measured steps went, by pipeline phase."""
    spent = dict.fromkeys(("rollout", "train", "switching"), 0.0)
    for phase in result.timeline.phases:
        key = "switching" if phase.name in ("switch", "sync") else phase.name
        spent[key] += phase.end - phase.start
    name = max(spent, key=spent.get)
    return {"train": "training"}.get(name, name)


def make_plan(recipe: Recipe, gpus: int, run_dir: str | Path | None = None, trainers: int | None = None) -> Plan:
    """Rank every candidate layout for `recipe` on `gpus` GPUs (calibrated from `run_dir`'s
    recorded_run.json when given; only layouts with `trainers` trainer ranks when given)."""
    started = time.perf_counter()
    batch = recipe.rollout.batch_size * recipe.rollout.group_size
    workload, overhead, concurrency, calibration = recipe.cluster.sim, 0.0, None, None
    if run_dir is not None:
        workload, overhead, concurrency, calibration = _calibrated(recipe, Path(run_dir))
    # the planned recipe's own cap on sequences a server decodes at once (the run's was used to fit)
    workload = with_server_cap(workload, recipe.rollout.max_num_seqs)
    max_stale = int(getattr(recipe.algorithm, "max_staleness", 1))
    run = lambda layout, w=workload: predict(layout, w, batch, overhead, concurrency)  # noqa: E731
    # a resumed run keeps its trainer's size: its split, every policy and staleness
    layouts = candidate_layouts(gpus, max_stale) if trainers is None else _layouts_with_trainers(gpus, trainers, max_stale)
    ranked = sorted((run(layout) for layout in layouts), key=lambda p: (-p.tokens_per_s, p.layout))
    by_layout = {p.layout: p for p in ranked}
    share = min(gpus - 1, max(1, round(gpus * workload.train_share)))
    fixed_layouts = {"colocated": Layout("colocated", 0, gpus, 0, 0),
                     "disaggregated": Layout("disaggregated", share, 0, gpus - share, 0),
                     "tagged": Layout("tagged", 0, share, gpus - share, min(1, max_stale))}
    fixed = {name: by_layout.get(layout) or run(layout) for name, layout in fixed_layouts.items()}
    plan = Plan(gpus, batch, workload, ranked, fixed, calibration)
    if calibration is not None:
        plan.leaders_under_error = _leaders_under_error(ranked[:3], workload, calibration, run)
    plan.seconds = time.perf_counter() - started
    return plan


def _calibrated(recipe: Recipe, run_dir: Path) -> tuple[SimConfig, float, int | None, Calibration]:
    from seamless.scheduler.validate import RecordedRun, compare_fitted, fit_workload

    path = run_dir / "recorded_run.json"
    if not path.is_file():
        raise ConfigError(f"--from-run {run_dir}: no recorded_run.json there; point it at the folder of a "
                          "`seamless run` that trained at least a few steps")
    try:
        run = RecordedRun.load(path)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--from-run: {path} does not read as a recorded run ({exc}); re-run the recipe "
                          "to write a fresh one") from None
    base = recipe.cluster.sim
    workload = fit_workload(run, base)
    bubble_err, tokens_err = compare_fitted(run, workload).relative_errors()
    calibration = Calibration(str(run_dir), tokens_per_s_error=tokens_err, bubble_ratio_error=bubble_err)
    return workload, run.episode_overhead_s, run.agent_concurrency, calibration


def _leaders_under_error(leaders: list[Prediction], workload: SimConfig, calibration: Calibration, run) -> list[str]:
    """Re-rank the leaders with decode and training speeds each moved by the calibration error
    (four corners: times or divided by 1 + error): which layout leads in each."""
    e = max(calibration.tokens_per_s_error, 0.01)
    slow = 1 / (1 + e)  # not 1 - e: an error above 100% would make a speed negative (the sim never ends)
    out = []
    for decode, train in ((slow, slow), (slow, 1 + e), (1 + e, slow), (1 + e, 1 + e)):
        moved = workload.model_copy(update={"decode_tokens_per_s": workload.decode_tokens_per_s * decode,
                                            "train_tokens_per_s": workload.train_tokens_per_s * train})
        best = max((run(p.layout, moved) for p in leaders), key=lambda p: p.tokens_per_s)
        out.append(f"decode x{decode:.2f}, train x{train:.2f}: {best.layout.label()}")
    return out


def format_plan(plan: Plan, top: int = 10) -> str:
    head = f"{'#':>3} {'layout':<52} {'tokens/s':>11} {'bubble':>7} {'stale':>5} {'step s':>7}  bound"
    lines = [f"seamless plan: {plan.gpus} GPUs, {plan.batch_episodes} episodes a step, "
             f"{len(plan.ranked)} layouts simulated in {plan.seconds:.1f} s", "", head, "-" * len(head)]
    fixed = {p.layout: name for name, p in plan.fixed.items()}
    for i, p in enumerate(plan.ranked[:top], 1):
        mark = f"  (= fixed {fixed[p.layout]})" if p.layout in fixed else ""
        lines.append(f"{i:>3} {p.layout.label():<52} {p.tokens_per_s:>11,.1f} {p.bubble_ratio:>7.1%} "
                     f"{p.staleness_mean:>5.2f} {p.step_time_s:>7.2f}  {p.bound}{mark}")
    lines += ["", "the three fixed policies (as `seamless sim` sets them up):"]
    for name, p in plan.fixed.items():
        rank = plan.ranked.index(p) + 1 if p in plan.ranked else "-"
        lines.append(f"  {name:<14} rank {rank}: {p.tokens_per_s:,.1f} tokens/s, bubble {p.bubble_ratio:.1%}; "
                     f"the pick is {plan.best.tokens_per_s / max(p.tokens_per_s, 1e-9):.2f}x")
    if plan.calibration is None:
        lines += ["", "calibration: none (the recipe's cluster.sim model of costs); pass --from-run RUN_DIR to fit "
                      "it to a recorded run and see the simulator's error"]
    else:
        c = plan.calibration
        lines += ["", f"calibration: {c.run_dir}: on that run the simulator was off by {c.tokens_per_s_error:.0%} "
                      f"in tokens/s and {c.bubble_ratio_error:.0%} in bubble ratio",
                  "leader of the top 3 with the fitted speeds moved by that error:"]
        lines += [f"  {line}" for line in plan.leaders_under_error]
    # the engine properties the fit cannot read off a run (a timeline has no per-server load or
    # processes), which decide between few large servers and many small ones
    w = plan.workload
    lines += ["", f"a rollout server reaches half its peak decode throughput at {w.half_load_concurrency:g} sequences "
              f"and runs at most {w.max_concurrency} at once (cluster.sim.half_load_concurrency and max_concurrency, "
              "which rollout.max_num_seqs lowers; neither is fitted: measure your engine's, e.g. "
              "scripts/bench_generation.py)"]
    if w.compute_units is not None:
        lines.append(f"the GPUs share {w.compute_units:g} compute units, a decoding server keeping {w.server_workers:g} "
                     "of them busy (cluster.sim.compute_units, server_workers: a CPU test bed)")
    lines += ["", "best layout (paste into the recipe, or pass the overrides to `seamless run`):", plan.best.layout.yaml(),
              "overrides: " + " ".join(f"'{o}'" for o in plan.best.layout.overrides())]
    return "\n".join(lines)
