"""`seamless sim`: simulate every policy at the recipe's cluster sizes, print a table or JSON,
draw the comparison plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seamless.config import load_recipe
from seamless.errors import ConfigError
from seamless.scheduler.plot import plot_sweep
from seamless.scheduler.sim import SimResult, default_cases, simulate_pool, sweep, with_server_cap


def run_sim(recipe_path: str, overrides: list[str], gpus: int | None, as_json: bool,
            plot_path: str | None, own_pool: bool = False) -> int:
    recipe = load_recipe(recipe_path, overrides)
    workload = with_server_cap(recipe.cluster.sim, recipe.rollout.max_num_seqs)
    if gpus is not None and gpus < 2:
        raise ConfigError(f"--gpus {gpus}: simulate at least 2 GPUs (or set cluster.sim.gpus)")
    if own_pool and gpus is not None:
        raise ConfigError("--pool simulates the recipe's cluster.resources; drop --gpus")
    sizes = [gpus] if gpus is not None else list(workload.gpus)
    if own_pool:
        results = [simulate_pool(workload, recipe.cluster)]
    else:
        results = sweep(workload, sizes, default_cases(recipe.cluster.max_async_staleness or 1))
    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=1))
    else:
        print(format_table(results))
    if plot_path != "":
        path = Path(plot_path or Path(recipe.run.root_dir) / f"sim-{recipe.run.name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_sweep(results, path)
        print(f"plot: {path}", file=sys.stderr if as_json else sys.stdout)
    return 0


def format_table(results: list[SimResult]) -> str:
    """A fixed-width table, one row per policy and size."""
    header = (f"{'gpus':>5} {'policy':<20} {'tokens/s':>12} {'tok/s/gpu':>9} {'bubble':>7} "
              f"{'rollout':>7} {'switch':>7} {'train':>7} {'sync':>7} {'stale':>5} {'max':>3} {'step s':>7}")
    lines = [header, "-" * len(header)]
    for r in results:
        phase = lambda name: f"{r.bubble_by_phase[name]:7.1%}" if name in r.bubble_by_phase else f"{'-':>7}"  # noqa: E731
        lines.append(
            f"{r.gpus:>5} {r.policy:<20} {r.tokens_per_s:>12,.0f} {r.tokens_per_s / r.gpus:>9,.0f} "
            f"{r.bubble_ratio:>7.1%} {phase('rollout')} {phase('switch')} {phase('train')} {phase('sync')} "
            f"{r.staleness_mean:>5.2f} {r.staleness_max:>3} {r.step_time_s:>7.1f}")
    return "\n".join(lines)
