"""Trained tokens/s of the seamless trainer on the tiny model at ZeRO 0, 2 and 3 (a benchmark, not a test).

    source scripts/env.sh && .venv/bin/python scripts/bench_trainer.py [--ranks 2] [--steps 5] [--ppo-epochs 2]

Each GRPO step (one mini-batch, no reference) forwards the batch ppo_epochs times with gradients,
one optimizer update each. The logprobs it is trained from come from the first update's own pass
(`old_logprobs_from_the_update`), or, where that rule says no, from a no-grad pass before the
updates; the header prints how many passes a step runs. "trained tokens/s" counts the gradient
passes' tokens over the whole step's wall time, "all tokens/s" counts every pass the step ran.
The baseline, in the same run: the same step on the same batch in plain PyTorch (one process, no
DeepSpeed, no Ray; seamless's batching and loss, and the same rule for the old logprobs), at 1 and
2 torch threads. Compare it with `--ranks 1`.
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

from seamless.algorithms import make_algorithm  # noqa: E402
from seamless.config import GrpoConfig, TrainerConfig  # noqa: E402
from seamless.models.tiny import build_tiny_model  # noqa: E402
from seamless.cluster.ray_cluster import start_ray, stop_ray  # noqa: E402
from seamless.trainer import Trainer  # noqa: E402
from seamless.trainer.trainer import old_logprobs_from_the_update  # noqa: E402
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


def passes_per_step(config: TrainerConfig, algo: GrpoConfig, batch_size: int) -> int:
    """Forward passes over the batch in one step: one per epoch, plus the no-grad one if it runs."""
    skipped = old_logprobs_from_the_update(config, make_algorithm(algo), batch_size)
    return config.ppo_epochs + (0 if skipped else 1)


def bench_stage(model_dir: Path, stage: int, ranks: int, steps: int, sequences: list[TrainingSequence],
                budget: int, epochs: int) -> tuple[float, float, float]:
    config = TrainerConfig(lr=1e-4, micro_batch_tokens=budget, ppo_epochs=epochs,
                           deepspeed={"zero_optimization": {"stage": stage}})
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
    return step_s, tokens * config.ppo_epochs / step_s, tokens * passes_per_step(config, algo, len(sequences)) / step_s


def bench_plain(model_dir: Path, steps: int, sequences: list[TrainingSequence], budget: int,
                threads: int, epochs: int) -> float:
    """The baseline: the same GRPO step on the same batch in plain PyTorch (one process, AdamW, no
    DeepSpeed, no Ray), with seamless's batching and loss so only the engine differs: a no-grad
    pass for the old logprobs where the trainer runs one, then ppo_epochs x (forward, backward per
    micro-batch, clip, step), the first keeping its own logprobs for the rest where the trainer
    skips the no-grad pass.
    Returns the median step in seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    from seamless.algorithms import group_ids_to_index, logprobs_from_logits, truncated_is_weights
    from seamless.trainer.batch import TrainBatch, pack_by_tokens, scatter_rows, slice_micro_batch, with_denominators
    from seamless.trainer.objective import policy_objective

    torch.set_num_threads(threads)
    config = TrainerConfig(lr=1e-4, micro_batch_tokens=budget, ppo_epochs=epochs)
    algo_config = GrpoConfig(max_staleness=10**6)
    algorithm = make_algorithm(algo_config)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.999), eps=1e-8)

    def micro_batches(batch: TrainBatch, rows: list[int], **per_token: torch.Tensor | None) -> list:
        lengths = [int(batch.lengths[i]) for i in rows]
        mbs = [slice_micro_batch(batch, [rows[i] for i in g], 0, **per_token) for g in pack_by_tokens(lengths, budget)]
        return with_denominators([mbs], batch.loss_mask, rows)[0]

    def logits(mb) -> torch.Tensor:
        return model(input_ids=mb.token_ids, attention_mask=mb.attention_mask).logits

    def from_old(batch: TrainBatch, old: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """What the updates take from old logprobs (B, T), as Trainer._optimize gives them."""
        cap = algo_config.tis_cap
        weights = truncated_is_weights(old, batch.rollout_logprobs, batch.loss_mask, cap) if cap is not None else None
        return {"old_logprobs": old, "is_weights": weights, "rollout_logprobs": None}

    def step() -> None:
        batch = TrainBatch.from_sequences(sequences, 0)
        B, T = batch.token_ids.shape
        rows = list(range(batch.size))  # one mini-batch
        # without old logprobs the objective takes its own pass's (and the IS weights from them)
        per_token = {"old_logprobs": None, "is_weights": None, "rollout_logprobs": batch.rollout_logprobs}
        if not old_logprobs_from_the_update(config, algorithm, batch.size):
            everything = micro_batches(batch, rows)
            model.eval()
            with torch.no_grad():
                outs = [logprobs_from_logits(logits(mb), mb.token_ids) for mb in everything]
            per_token = from_old(batch, scatter_rows(B, T, everything, outs))
        groups = group_ids_to_index([s.group_id for s in sequences])
        adv = algorithm.advantages(batch.rewards.clone(), groups, batch.loss_mask, per_token["old_logprobs"],
                                   None, None)
        model.train()
        for epoch in range(config.ppo_epochs):
            mbs = micro_batches(batch, rows, advantages=adv.advantages, **per_token)
            kept = [] if per_token["old_logprobs"] is None and epoch + 1 < config.ppo_epochs else None
            for mb in mbs:
                loss, _ = policy_objective(logits(mb), mb, algo_config, kept)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if kept is not None:
                per_token = from_old(batch, scatter_rows(B, T, mbs, kept))

    step()  # warm-up, as for the trainer
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=96)
    parser.add_argument("--micro-batch-tokens", type=int, default=1024)
    parser.add_argument("--ppo-epochs", type=int, default=TrainerConfig().ppo_epochs,
                        help="optimizer updates per step (one mini-batch each); the tiny recipes use 2")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--plain-threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads of the plain-PyTorch baseline (the trainer's ranks run with "
                             "OMP_NUM_THREADS, 1 unless set)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seamless-bench-"))
    model_dir = build_tiny_model(work / "tiny")
    sequences = synthetic_sequences(args.sequences, args.prompt_len, args.gen_len, vocab=500)
    start_ray(num_gpus=max(args.ranks, 1), num_cpus=2)
    try:
        epochs = args.ppo_epochs
        passes = passes_per_step(TrainerConfig(ppo_epochs=epochs), GrpoConfig(), args.sequences)
        print(f"tiny model, {args.ranks} ranks, {args.sequences} sequences x {args.prompt_len + args.gen_len} tokens, "
              f"micro-batch {args.micro_batch_tokens} tokens, {passes} forward passes a step "
              f"({epochs} with gradients)")
        tokens = sum(len(s.token_ids) for s in sequences)
        for threads in args.plain_threads:
            step_s = bench_plain(model_dir, args.steps, sequences, args.micro_batch_tokens, threads, epochs)
            print(f"plain PyTorch, 1 process, {threads} thread(s): step {step_s * 1000:7.1f} ms   trained tokens/s "
                  f"{tokens * epochs / step_s:9.0f}   all tokens/s {tokens * passes / step_s:9.0f}", flush=True)
        for stage in args.stages:
            step_s, trained, total = bench_stage(model_dir, stage, args.ranks, args.steps, sequences,
                                                 args.micro_batch_tokens, epochs)
            print(f"seamless ZeRO-{stage}, {args.ranks} rank(s): step {step_s * 1000:7.1f} ms   trained tokens/s "
                  f"{trained:9.0f}   all tokens/s {total:9.0f}", flush=True)
    finally:
        stop_ray()
    return 0


if __name__ == "__main__":
    sys.exit(main())
