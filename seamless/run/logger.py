"""Where a run's numbers go: a JSONL file in the run folder always, Weights & Biases when enabled.

W&B mode `auto` is online when WANDB_API_KEY is set and offline otherwise (the run folder's
`wandb/` then holds a run that `wandb sync` uploads later). Nothing here decides what to log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from seamless.config import Recipe


class RunLogger:
    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self._wandb = None
        mode = recipe.logging.wandb.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb_mode = mode
        if mode != "disabled":
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            run_id_file = run_dir / "wandb_run_id"
            run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else None
            self._wandb = wandb.init(project=recipe.logging.wandb.project, entity=recipe.logging.wandb.entity,
                                     name=run_dir.name, dir=str(run_dir), mode=mode, id=run_id,
                                     resume="allow" if run_id else None,
                                     config=recipe.model_dump(mode="json"))
            run_id_file.write_text(self._wandb.id)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def table(self, step: int, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table of samples (W&B) and the same rows as JSONL in the run folder."""
        with open(self.run_dir / f"{name}.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **dict(zip(columns, row))}) + "\n")
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def image(self, step: int, name: str, path: Path) -> None:
        if self._wandb is not None and path.exists():
            import wandb

            self._wandb.log({name: wandb.Image(str(path))}, step=step)

    def finish(self) -> str | None:
        """Close the W&B run; returns the `wandb sync` hint for offline runs."""
        if self._wandb is None:
            return None
        folder = Path(self._wandb.dir).parent
        self._wandb.finish()
        return f"wandb sync {folder}" if self.wandb_mode == "offline" else None
