"""`cluster.policy: auto`: the run's layout chosen by the planner (scheduler/planner.py) at start.

The planner simulates every layout of the recipe's GPUs (the resources' total count) and the run
goes on with the best: its policy, tags and staleness bound replace the recipe's, and the plan is
written beside the run (`plan.json`, `plan.txt`). A resumed run is planned from its own recorded
steps when it has them, among layouts with the same number of trainer ranks (its checkpoint's
ZeRO shards are cut for that many).
"""

from __future__ import annotations

import json
from pathlib import Path

from seamless.config import Recipe, load_recipe
from seamless.scheduler.planner import Plan, format_plan, make_plan


def resolve_layout(recipe: Recipe, resume_dir: str | Path | None = None) -> tuple[Recipe, Plan | None]:
    """The recipe with a concrete layout, and the plan that chose it (None: not `auto`)."""
    if recipe.cluster.policy != "auto":
        return recipe, None
    trainers, from_run = None, None
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        trained_with = load_recipe(resume_dir / "recipe.resolved.yaml").cluster
        trainers = sum(g.count for g in trained_with.resources if "train" in g.tags)
        from_run = resume_dir if (resume_dir / "recorded_run.json").is_file() else None
    plan = make_plan(recipe, recipe.cluster.num_gpus, from_run, trainers=trainers)
    cluster = plan.best.layout.cluster(recipe.cluster)
    # validated as a whole again: the chosen tags must fit the rest of the recipe (shared-GPU shares, ...)
    chosen = type(recipe).model_validate(recipe.model_copy(update={"cluster": cluster}).model_dump())
    return chosen, plan


def save_plan(plan: Plan, run_dir: Path) -> None:
    (run_dir / "plan.json").write_text(json.dumps(plan.to_json(), indent=1))
    (run_dir / "plan.txt").write_text(format_plan(plan) + "\n")
