"""Run folders: where a run keeps its resolved recipe, logs, services' data, checkpoints and traces."""

from __future__ import annotations

import time
from pathlib import Path

from seamless.config import Recipe


def create_run_dir(recipe: Recipe, run_dir: str | Path | None = None) -> Path:
    """Make `<root_dir>/<name>-<timestamp>` (or `run_dir`) and write the resolved recipe into it."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(recipe.run.root_dir) / f"{recipe.run.name}-{stamp}"
    path = Path(run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    (path / "recipe.resolved.yaml").write_text(recipe.to_yaml())
    return path
