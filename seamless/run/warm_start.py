"""A recipe's supervised warm-up, run once on its own and exported as a Hugging Face folder, so that
several runs (a benchmark's two sides, the planner check's layouts) start from the same weights and
none of them pays for or varies it: they load the folder with `model.path=` and
`trainer.sft_warmup.steps=0`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from seamless.config import Recipe


@dataclass(frozen=True)
class WarmStart:
    folder: Path
    """The weights to start from (the recipe's model itself when it has no warm-up)."""
    note: str
    """What was done: steps, loss first -> last, seconds."""

    def overrides(self) -> list[str]:
        """What starts a run of the same recipe from these weights."""
        return [f"model.path={self.folder}", "trainer.sft_warmup.steps=0"]


def export_warm_start(recipe: Recipe, out: Path) -> WarmStart:
    """The recipe's model (built under out/tiny when it names none) after the recipe's supervised
    warm-up on its own trainer, exported to out/warm. Uses the Ray this process is connected to, or
    starts a local one for the while."""
    from seamless.agent.tasks import load_tasks
    from seamless.models.tiny import build_tiny_model

    base = Path(recipe.model.path) if recipe.model.path else build_tiny_model(out / "tiny", recipe.model.tiny)
    warm = recipe.trainer.sft_warmup
    if warm.steps == 0:
        return WarmStart(base, "no warm-up (trainer.sft_warmup.steps is 0)")
    from transformers import AutoTokenizer

    from seamless.cluster.ray_cluster import start_ray, stop_ray
    from seamless.run.warmup import supervised_warmup
    from seamless.scheduler import ResourcePool
    from seamless.trainer import Trainer

    ranks = len(ResourcePool.from_cluster(recipe.cluster).trainers)
    started = time.monotonic()
    ours = start_ray(num_gpus=recipe.cluster.num_gpus, num_cpus=recipe.cluster.num_cpus)  # False: joined one
    try:
        with Trainer.from_recipe(recipe, base, num_ranks=ranks) as trainer:
            tokenizer = AutoTokenizer.from_pretrained(base)
            losses = supervised_warmup(trainer, load_tasks(recipe.data), tokenizer, warm, recipe.rollout.agent,
                                       progress=False)
            folder = trainer.export_hf(out / "warm")
    finally:
        if ours:
            stop_ray()
    return WarmStart(folder, f"seamless's SFT warm-up, {warm.steps} steps of {warm.batch_size}, loss "
                             f"{losses[0]:.3f} -> {losses[-1]:.3f}, {time.monotonic() - started:.0f} s")
