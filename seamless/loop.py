"""The main loop of `seamless run`: roll out, collect, train, push weights, checkpoint, log.

Every part is built first (`build_parts`); the loop is a flat sequence of numbered phases.
Episodes reach the trainer through the store's finished-episode stream and are acknowledged
only once a checkpoint that includes their training step is on disk, so a run killed at any
point and resumed loses no finished episode and trains none twice: entries the checkpoint
already trained are acknowledged without training, the others are trained after the restore.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from seamless.config import Recipe
from seamless.evaluation import evaluate
from seamless.parts import Parts, build_parts
from seamless.store import EpisodeEntry
from seamless.trainer.trainer import latest_checkpoint
from seamless.types import TrainingSequence
from seamless.warmup import warmup_sequences


@dataclass
class Progress:
    """What a checkpoint must remember besides the weights."""

    step: int = 0
    trained_entry_ids: list[str] = field(default_factory=list)
    """Stream entries trained since the run began (acknowledged or not)."""
    unacked: list[EpisodeEntry] = field(default_factory=list)
    backlog: list[EpisodeEntry] = field(default_factory=list)
    """Finished episodes a killed run left untrained in the stream; they join the next step."""
    eval_before: float | None = None
    in_train_step: bool = False


def run(recipe: Recipe, run_dir: Path, resume: bool = False) -> dict:
    with build_parts(recipe, run_dir, resume) as parts:
        progress = _restore(parts) if resume else Progress()
        if parts.trainer.version == 0:  # nothing restored: a new run, or one killed before its first checkpoint
            _warm_start(parts)
        if progress.eval_before is None:
            progress.eval_before = _evaluate(parts, step=progress.step, label="before")
        totals = {"started": time.monotonic(), "trained_tokens": 0}
        bar = tqdm(range(progress.step, recipe.trainer.total_steps), initial=progress.step,
                   total=recipe.trainer.total_steps, desc="GRPO" if recipe.algorithm.name == "grpo" else "RL",
                   unit="step", dynamic_ncols=True)
        try:
            for step in bar:
                _one_step(parts, progress, step, bar, totals)
        except KeyboardInterrupt:
            if progress.in_train_step:  # half a step, or a step not logged yet: keep the last checkpoint
                print("\nseamless run: interrupted inside a step; the last checkpoint stands", flush=True)
            else:
                print("\nseamless run: interrupted; saving a checkpoint first", flush=True)
                _checkpoint(parts, progress)
            raise
        bar.close()
        after = _evaluate(parts, step=progress.step, label="after")
        return _summary(parts, progress, after, totals["trained_tokens"], time.monotonic() - totals["started"])


def _one_step(parts: Parts, progress: Progress, step: int, bar: tqdm, totals: dict) -> None:
    """One RL step, phase by phase."""
    recipe = parts.recipe
    # 1. roll out this step's GRPO groups through the trajectory manager
    episodes = _rollout(parts, step)
    # 2. take the finished episodes from the stream, merged into training sequences
    entries, sequences = _collect(parts, progress, len(episodes))
    # 3. one RL step; progress moves with the weights, so an interrupt checkpoints a consistent pair.
    #    The step stays open until its row is logged: a checkpoint never holds a step whose row is
    #    missing, so the logged curve has no gap after a resume (a step cut off before its
    #    checkpoint is trained again and logged twice, the later row being the one that counts)
    progress.in_train_step = True
    metrics = parts.trainer.train_step(sequences)
    progress.step = step + 1
    progress.trained_entry_ids += [e.entry_id for e in entries]
    progress.unacked += entries
    # 4. push the new weights to the rollout servers (in-flight calls span the update);
    #    nothing to push when the filters left nothing to train on
    update = parts.fleet.sync_weights(parts.trainer, parts.trainer.version) if metrics else None
    # 5. log
    totals["trained_tokens"] += sum(s.num_generated for s in sequences)
    row = _step_metrics(episodes, sequences, metrics, update, totals["trained_tokens"], totals["started"])
    parts.logger.log(progress.step, row)
    progress.in_train_step = False
    # 6. checkpoint, then acknowledge what it includes; evaluate every N steps
    if progress.step % recipe.trainer.checkpoint_every == 0 or progress.step == recipe.trainer.total_steps:
        _checkpoint(parts, progress)
    if progress.step % recipe.trainer.eval_every == 0 and progress.step < recipe.trainer.total_steps:
        _evaluate(parts, step=progress.step, label=f"step{progress.step}")
    if progress.step % recipe.logging.wandb.sample_table_every == 0:
        _log_samples(parts, progress.step, episodes)
    bar.set_postfix(reward=f"{row['rollout/reward_mean']:.2f}", tok_s=f"{row['perf/trained_tokens_per_s']:.0f}")


def _warm_start(parts: Parts) -> None:
    """A short supervised pass so the tiny policy knows the task's format, then publish it."""
    warm = parts.recipe.trainer.sft_warmup
    if warm.steps == 0:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parts.model_dir)
    stream = parts.tasks.train_stream(start=10_000_000)  # far from the RL tasks of early steps
    losses = []
    for _ in tqdm(range(warm.steps), desc="warm-up (SFT)", unit="step", dynamic_ncols=True):
        tasks = [next(stream) for _ in range(warm.batch_size)]
        losses.append(parts.trainer.sft_step(warmup_sequences(tasks, tokenizer, parts.recipe.rollout.agent)).loss)
    # the warm-started weights are a version of their own: rollout after this is never stamped 0
    parts.trainer.version += 1
    parts.fleet.sync_weights(parts.trainer, parts.trainer.version)
    parts.logger.log(0, {"warmup/loss_first": losses[0], "warmup/loss_last": losses[-1]})
    print(f"seamless run: warm-up loss {losses[0]:.3f} -> {losses[-1]:.3f} over {warm.steps} steps")


def _rollout(parts: Parts, step: int) -> list:
    tasks = parts.tasks.train_batch(step, parts.recipe.rollout.batch_size)
    groups = asyncio.run(_run_groups(parts, tasks))
    return [episode for group in groups for episode in group]


async def _run_groups(parts: Parts, tasks: list) -> list:
    try:
        return await parts.runner.run_groups(tasks, parts.recipe.rollout.group_size)
    finally:
        await parts.runner.aclose()


def _collect(parts: Parts, progress: Progress, expected: int) -> tuple[list[EpisodeEntry], list[TrainingSequence]]:
    """`expected` finished episodes from the stream, as sequences; a killed run's backlog joins them."""
    entries, progress.backlog = progress.backlog, []
    expected += len(entries)
    trained = set(progress.trained_entry_ids)
    while len(entries) < expected:
        batch = parts.episodes.take(expected - len(entries), block_ms=5000)
        if not batch:
            raise RuntimeError(f"the episode stream delivered {len(entries)} of {expected} finished episodes "
                               "within 5 s; check the agent runner's log and the proxy's log")
        for entry in batch:
            if entry.entry_id in trained:  # trained before a crash, in the restored checkpoint
                progress.unacked.append(entry)
            else:
                entries.append(entry)
    sequences = [s for e in entries for s in parts.episodes.trajectory(e.session_id).sequences]
    return entries, sequences


def _checkpoint(parts: Parts, progress: Progress) -> None:
    extra = {"step": progress.step, "trained_entry_ids": progress.trained_entry_ids[-100_000:],
             "eval_before": progress.eval_before}
    parts.trainer.save_checkpoint(parts.checkpoint_dir, extra_state=extra)
    parts.episodes.ack(progress.unacked, parts.recipe.store.retention_s)
    progress.unacked = []


def _restore(parts: Parts) -> Progress:
    try:
        path = latest_checkpoint(parts.checkpoint_dir)
    except Exception:
        print("seamless run: no checkpoint to resume from yet; starting from the beginning")
        return _take_backlog(parts, Progress())
    extra = parts.trainer.load_checkpoint(path)
    progress = Progress(step=extra["step"], trained_entry_ids=list(extra["trained_entry_ids"]),
                        eval_before=extra.get("eval_before"))
    parts.fleet.sync_weights(parts.trainer, parts.trainer.version)
    print(f"seamless run: resumed from {path} at step {progress.step} (weights version {parts.trainer.version})")
    return _take_backlog(parts, progress)


def _take_backlog(parts: Parts, progress: Progress) -> Progress:
    """Sort what the killed run left in the stream: entries the checkpoint already trained are only
    acknowledged (at the next checkpoint); the others (trained after the checkpoint, or finished
    and never trained) join the next step, so none is lost and none is left over at the end."""
    trained = set(progress.trained_entry_ids)
    for entry in parts.episodes.backlog():
        (progress.unacked if entry.entry_id in trained else progress.backlog).append(entry)
    if progress.backlog:
        print(f"seamless run: {len(progress.backlog)} finished episode(s) from before the restart "
              f"join step {progress.step + 1}")
    return progress


def _evaluate(parts: Parts, step: int, label: str) -> float:
    tasks = parts.tasks.eval_tasks

    async def main():
        try:
            return await evaluate(parts.runner, tasks, label=label)
        finally:
            await parts.runner.aclose()

    report = asyncio.run(main())
    parts.logger.log(step, {"eval/accuracy": report.accuracy, "eval/mean_reward": report.mean_reward})
    print(f"seamless run: held-out accuracy ({label}, {report.num_tasks} tasks, greedy): {report.accuracy:.1%}")
    return report.accuracy


def _step_metrics(episodes: list, sequences: list[TrainingSequence], metrics, update, trained_tokens: int,
                  started: float) -> dict:
    rewards = [e.reward for e in episodes]
    mean = sum(rewards) / len(rewards)
    row = {"rollout/reward_mean": mean,
           "rollout/reward_std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5,
           "rollout/accuracy": sum(r >= 1.0 for r in rewards) / len(rewards),
           "rollout/response_tokens_mean": sum(s.num_generated for s in sequences) / max(1, len(sequences)),
           "rollout/agent_errors": sum(e.error is not None for e in episodes),
           "perf/trained_tokens_per_s": trained_tokens / max(1e-9, time.monotonic() - started)}
    if update is not None:
        row.update({"sync/pause_s": update.pause_s, "sync/transfer_s": update.transfer_s,
                    "sync/resume_s": update.resume_s, "sync/bytes": update.bytes})
    if metrics is not None:
        row.update(metrics.to_dict())
    return row


def _log_samples(parts: Parts, step: int, episodes: list) -> None:
    rows = [[e.task_id, e.answer, e.reward, e.error or ""] for e in episodes[:16]]
    parts.logger.table(step, "samples", ["task_id", "answer", "reward", "error"], rows)


def _summary(parts: Parts, progress: Progress, after: float, trained_tokens: int, wall_s: float) -> dict:
    summary = {"steps": progress.step, "eval_accuracy_before": progress.eval_before, "eval_accuracy_after": after,
               "wall_time_s": wall_s, "trained_tokens": trained_tokens,
               "trained_tokens_per_s": trained_tokens / max(1e-9, wall_s),
               "seed": parts.recipe.run.seed, "run_dir": str(parts.run_dir)}
    (parts.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    hint = parts.logger.finish()
    print(f"seamless run: held-out accuracy {progress.eval_before:.1%} before -> {after:.1%} after "
          f"{progress.step} steps ({wall_s / 60:.1f} min); summary in {parts.run_dir / 'summary.json'}")
    if hint:
        print(f"seamless run: W&B run saved offline; upload it with: {hint}")
    return summary


__all__ = ["run", "Path"]
