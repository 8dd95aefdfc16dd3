"""Write GSM8K as seamless task files: OUT_DIR/train.jsonl and OUT_DIR/test.jsonl.

Each line is {"task_id", "prompt", "answer", "metadata"}: the question, and the final number of
the reference solution (the text after its "####"), ready for `data.source: jsonl`. Needs the
Hugging Face `datasets` library (the extra `seamless[datasets]`, installed by setup.sh) and, for
the hub, network: run it once where there is some (HF_HUB_OFFLINE=0), then copy the files.

    .venv/bin/python scripts/prepare_gsm8k.py data/gsm8k
    .venv/bin/python scripts/prepare_gsm8k.py data/gsm8k --dataset /path/to/save_to_disk_folder
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from seamless.config import DataConfig
from seamless.agent.tasks import read_dataset
from seamless.errors import ConfigError


def prepare(out_dir: Path, dataset: str = "openai/gsm8k", config: str = "main",
            splits: tuple[str, ...] = ("train", "test")) -> dict[str, int]:
    """Write one JSONL file per split; returns the number of tasks written per split."""
    data = DataConfig(source="datasets", dataset=dataset, dataset_config=config, prompt_key="question",
                      answer_key="answer")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in splits:
        tasks = read_dataset(data, split)
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")  # never leave a half-written file under the final name
        with tmp.open("w", encoding="utf-8") as handle:
            for i, task in enumerate(tasks):
                handle.write(replace(task, task_id=f"gsm8k-{split}-{i}").to_json(with_answer=True) + "\n")
        tmp.replace(path)
        counts[split] = len(tasks)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write train.jsonl and test.jsonl into")
    parser.add_argument("--dataset", default="openai/gsm8k", help="hub name or save_to_disk folder")
    parser.add_argument("--config", default="main", help="dataset configuration (GSM8K: main or socratic)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], help="splits to write")
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.out_dir, args.dataset, args.config, tuple(args.splits))
    except ConfigError as exc:
        print(f"prepare_gsm8k: error: {exc}", file=sys.stderr)
        return 2
    for split, n in counts.items():
        print(f"prepare_gsm8k: wrote {n} tasks to {args.out_dir / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
