"""Trained tokens/s of the seamless trainer on the tiny model at ZeRO 0, 2 and 3 (a benchmark, not a test).

    source scripts/env.sh && .venv/bin/python scripts/bench_trainer.py [--ranks 2] [--steps 5]

Each GRPO step forwards the batch once without gradients (logprobs it is trained from) and then
ppo_epochs times with gradients; "trained tokens/s" counts the gradient passes' tokens over the
whole step's wall time, "all tokens/s" counts every pass.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seamless.config import GrpoConfig, TrainerConfig  # noqa: E402
from seamless.models.tiny import build_tiny_model  # noqa: E402
from seamless.cluster.ray_cluster import start_ray, stop_ray  # noqa: E402
from seamless.trainer import Trainer  # noqa: E402
from seamless.types import NO_VERSION, TrainingSequence  # noqa: E402


def synthetic_sequences(count: int, prompt_len: int, gen_len: int, vocab: int, seed: int = 0) -> list[TrainingSequence]:
    """Groups of 4 with random tokens and rewards: the cost of a step does not depend on content."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = prompt_len + gen_len
        out.append(TrainingSequence(
            session_id=f"s{i}", token_ids=[rng.randrange(3, vocab) for _ in range(n)],
            loss_mask=[0] * prompt_len + [1] * gen_len, rollout_logprobs=[0.0] * prompt_len + [-5.0] * gen_len,
            weight_versions=[NO_VERSION] * n, reward=rng.random(), group_id=f"g{i // 4}"))
    return out


def bench_stage(model_dir: Path, stage: int, ranks: int, steps: int, sequences: list[TrainingSequence],
                budget: int) -> tuple[float, float, float]:
    config = TrainerConfig(lr=1e-4, micro_batch_tokens=budget, deepspeed={"zero_optimization": {"stage": stage}})
    algo = GrpoConfig(max_staleness=10**6)
    with Trainer(model_dir, algo, config, num_ranks=ranks) as trainer:
        trainer.train_step(sequences)  # warm-up: first-call allocations, gloo connections
        times, tokens = [], 0
        for _ in range(steps):
            start = time.perf_counter()
            metrics = trainer.train_step(sequences)
            times.append(time.perf_counter() - start)
            tokens = metrics.num_tokens
    step_s = statistics.median(times)
    return step_s, tokens * config.ppo_epochs / step_s, tokens * (1 + config.ppo_epochs) / step_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=96)
    parser.add_argument("--micro-batch-tokens", type=int, default=1024)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seamless-bench-"))
    model_dir = build_tiny_model(work / "tiny")
    sequences = synthetic_sequences(args.sequences, args.prompt_len, args.gen_len, vocab=500)
    start_ray(num_gpus=max(args.ranks, 1), num_cpus=2)
    try:
        print(f"tiny model, {args.ranks} ranks, {args.sequences} sequences x {args.prompt_len + args.gen_len} tokens, "
              f"micro-batch {args.micro_batch_tokens} tokens")
        for stage in args.stages:
            step_s, trained, total = bench_stage(model_dir, stage, args.ranks, args.steps, sequences,
                                                 args.micro_batch_tokens)
            print(f"ZeRO-{stage}: step {step_s * 1000:7.1f} ms   trained tokens/s {trained:9.0f}   "
                  f"all tokens/s {total:9.0f}", flush=True)
    finally:
        stop_ray()
    return 0


if __name__ == "__main__":
    sys.exit(main())
