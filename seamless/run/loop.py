"""The main loop of `seamless run`: episodes start as the scheduler admits them, and once a batch
is ready one step runs, phase by phase (`_one_step`): collect -> begin step (roles) -> train ->
publish weights -> end step (roles) -> log -> checkpoint.

Every part is built first (`build_parts`), the tag scheduler among them: it decides when episodes
may start (the policy's staleness bound), when a step starts, and which resources roll out or
train meanwhile; it neither trains nor moves weights (this loop does, between its hooks). Agents
run on a background event loop, so rollout that the policy allows goes on while this thread
trains. Episodes reach the trainer through the store's finished-episode stream
as whole GRPO groups and are acknowledged only once a checkpoint that includes their training step
is on disk, so a run killed at any point and resumed loses no finished episode and trains none
twice: entries the checkpoint already trained are acknowledged without training, the others are
trained after the restore.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from seamless.agent.runner import BackgroundGroups, EpisodeResult, EpisodeTimes
from seamless.config import Recipe
from seamless.agent.evaluation import evaluate
from seamless.run.parts import Parts, build_parts
from seamless.run.profile import StepClock, plot_profile
from seamless.scheduler.validate import RunRecorder
from seamless.traces.audit import EpisodeLedger
from seamless.traces.episodes import EpisodeEntry
from seamless.trainer.trainer import latest_checkpoint
from seamless.traces.export import drop_steps_after, write_step
from seamless.types import TrainingSequence, Trajectory
from seamless.run.warmup import supervised_warmup


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
    restored: bool = False
    """Weights came from a checkpoint (no warm start)."""
    discarded_versions: range = range(0)
    """Weight versions a killed run published after its last checkpoint: those weights are gone,
    and episodes sampled with them never train (they are acknowledged, not trained)."""
    discarded_entry_ids: list[str] = field(default_factory=list)
    """Stream entries dropped for that reason (kept in checkpoints, for the record)."""
    in_train_step: bool = False
    held: dict[str, list[tuple[EpisodeEntry, Trajectory]]] = field(default_factory=dict)
    """Finished episodes of GRPO groups not yet complete (or not yet trained), by group id; not
    acknowledged, so a crash delivers them again."""


@dataclass
class Totals:
    """What the run measured so far (for logs, the summary and the sim-vs-real record)."""

    started: float = field(default_factory=time.monotonic)
    groups_started: int = 0
    trained_tokens: int = 0
    episodes: list[EpisodeResult] = field(default_factory=list)
    """Finished since the last step."""
    recorder: RunRecorder = field(default_factory=RunRecorder)
    """What the simulator is checked against (recorded_run.json)."""
    clock: StepClock = field(default_factory=StepClock)
    """Where each step's wall time goes (the `profile/` columns)."""
    episode_times: dict[str, EpisodeTimes] = field(default_factory=dict)
    """Phase stamps of finished episodes not yet trained, by session id."""
    ledger: EpisodeLedger = field(default_factory=EpisodeLedger)
    """Every episode finished and trained, checked at the end: none lost, none trained twice."""


def run(recipe: Recipe, run_dir: Path, resume: bool = False,
        on_step: Callable[[int, Parts], None] | None = None) -> dict:
    """Train `recipe` to the end; `on_step(step, parts)` runs after each step (tests and scripts
    that act at a known step boundary: a node removed, a state checked)."""
    with build_parts(recipe, run_dir, resume) as parts:
        progress = _restore(parts) if resume else Progress()
        if not progress.restored:  # a new run, or one killed before its first checkpoint
            _warm_start(parts)
        if progress.eval_before is None:
            progress.eval_before = _evaluate(parts, step=progress.step, label="before")
        scheduler = parts.scheduler
        scheduler.begin_recording(steps=progress.step)
        totals = Totals(groups_started=progress.step * recipe.rollout.batch_size)
        bar = tqdm(initial=progress.step, total=recipe.trainer.total_steps, desc=recipe.algorithm.name.upper(),
                   unit="step", dynamic_ncols=True)
        try:
            with BackgroundGroups(parts.rollout_runner) as groups:
                totals.clock.mark("other")  # the first step's time starts here
                while progress.step < recipe.trainer.total_steps:
                    # 1. start episodes, a GRPO group at a time, as far as the policy admits
                    _admit(parts, groups, totals)
                    # 2. count the groups that finished (their episodes are on the stream)
                    for group in groups.wait_finished(timeout_s=0.5):
                        scheduler.episodes_finished(len(group))
                        totals.episodes += group
                        totals.ledger.on_finished(e.session_id for e in group)
                        totals.recorder.episode_wall_s.update({e.session_id: e.wall_time_s for e in group})
                        totals.episode_times.update({e.session_id: e.times for e in group if e.times})
                    # 3. a step once a batch is ready: collect, roles, train, publish, roles back, log, checkpoint
                    if scheduler.ready_to_step():
                        _one_step(parts, progress, bar, totals)
                        if on_step is not None:
                            on_step(progress.step, parts)
        except KeyboardInterrupt:
            if progress.in_train_step:  # half a step, or a step not logged yet: keep the last checkpoint
                print("\nseamless run: interrupted inside a step; the last checkpoint stands", flush=True)
            else:
                print("\nseamless run: interrupted; saving a checkpoint first", flush=True)
                _checkpoint(parts, progress)
            raise
        bar.close()
        timeline = _save_timeline(parts, progress, totals)
        after = _evaluate(parts, step=progress.step, label="after")
        return _summary(parts, progress, after, totals, timeline)


def _admit(parts: Parts, groups: BackgroundGroups, totals: Totals) -> None:
    rollout = parts.recipe.rollout
    for _ in range(parts.scheduler.admission() // rollout.group_size):
        step, index = divmod(totals.groups_started, rollout.batch_size)
        groups.start(parts.tasks.train_batch(step, rollout.batch_size)[index], rollout.group_size)
        parts.scheduler.episodes_started(rollout.group_size)
        totals.groups_started += 1


def _one_step(parts: Parts, progress: Progress, bar: tqdm, totals: Totals) -> None:
    """One RL step, phase by phase. The step stays open until its row is logged: a checkpoint
    never holds a step whose row is missing, so the logged curve has no gap after a resume (a step
    cut off before its checkpoint is trained again and logged twice, the later row counting)."""
    recipe, scheduler, clock = parts.recipe, parts.scheduler, totals.clock
    clock.mark("rollout")  # the profile's clock: each mark closes the phase named
    # 3a. collect: whole GRPO groups from the stream, merged into training sequences
    entries, trajectories = _collect(parts, progress)
    sequences = [s for t in trajectories for s in t.sequences]
    totals.ledger.on_trained(t.session_id for t in trajectories)
    progress.in_train_step = True
    clock.mark("stream")
    # 3b. roles: the resources that train leave rollout (their calls continue on the other servers)
    scheduler.begin_step()
    clock.mark("switch")
    # 3c. train
    metrics = _train(parts, sequences)
    clock.mark("train")
    # 3d. publish the weights: to the servers that stayed in rollout now, to the others as they rejoin
    sync = _publish(parts)
    clock.mark("sync")
    # 3e. roles back: resources return to rollout on the new weights
    report = scheduler.end_step()
    clock.mark("switch")
    # progress moves with the weights, so an interrupt checkpoints a consistent pair
    progress.step += 1
    progress.trained_entry_ids += [e.entry_id for e in entries]
    progress.unacked += entries
    # 4. log: the step's traces (replacing those of a killed run's cut-off step), then its row
    if recipe.logging.traces:
        write_step(parts.run_dir, progress.step, [e.entry_id for e in entries], trajectories)
    totals.trained_tokens += totals.recorder.step(trajectories, sequences)
    row = _step_metrics(parts, trajectories, sequences, totals, report) | sync | _switch_metrics(parts) | metrics
    row |= _capacity_metrics(parts)
    clock.mark("log")
    row |= clock.take([(totals.episode_times.pop(t.session_id), t.turns) for t in trajectories
                       if t.session_id in totals.episode_times])
    parts.logger.log(progress.step, row)
    progress.in_train_step = False
    # 5. checkpoint, then acknowledge what it includes; evaluate every N steps
    if progress.step % recipe.trainer.checkpoint_every == 0 or progress.step == recipe.trainer.total_steps:
        _checkpoint(parts, progress)
    if progress.step % recipe.trainer.eval_every == 0 and progress.step < recipe.trainer.total_steps:
        _evaluate(parts, step=progress.step, label=f"step{progress.step}")
    if progress.step % recipe.logging.wandb.sample_table_every == 0:
        _log_samples(parts, progress.step, totals.episodes)
    totals.episodes = []
    clock.mark("other")
    bar.update(1)
    bar.set_postfix(reward=f"{row['rollout/reward_mean']:.2f}", tok_s=f"{row['perf/trained_tokens_per_s']:.0f}",
                    bubble=f"{row.get('scheduler/bubble_ratio', 0.0):.0%}")


def _train(parts: Parts, sequences: list[TrainingSequence]) -> dict[str, float]:
    """One optimizer step of the trainer's ranks (on the train leases begin_step took); staleness
    counts from the weights rollout serves now. A step whose filters left nothing to train on
    still publishes (the same weights under the next version), so every step moves the version."""
    metrics = parts.trainer.train_step(sequences, serving_version=parts.fleet.version)
    return metrics.to_dict() if metrics is not None else {}


def _publish(parts: Parts) -> dict[str, float]:
    """The trainer's new weights, as the next version, through the fleet's one publisher: loaded
    into the servers that stayed in rollout without a trainer rank beside them (paused meanwhile);
    servers that rejoin in end_step() load them there. Returns the update's metrics."""
    servers = parts.scheduler.begin_sync()  # the trainer's resources go idle here
    update = parts.fleet.publish(parts.trainer, servers)
    return {"sync/version": update.version, "sync/stage_s": update.stage_s, "sync/paused_s": update.paused_s,
            "sync/transfer_s": update.transfer_s}


def _switch_metrics(parts: Parts) -> dict[str, float]:
    """Seconds of each memory move of the step's GPU role switches (vLLM sleep/wake, trainer
    offload/reload), summed over the resources that switched, and each move on the timeline in
    its GPU's row; none on CPU."""
    row: dict[str, float] = {}
    moves = parts.fleet.switch.take_moves()
    resource_of = {url: rid for rid, url in parts.fleet.all_servers().items()} if moves else {}
    for move in moves:
        for url in move.urls:  # the timeline shows each part in the row of the GPU it ran on
            if url in resource_of:
                parts.scheduler.mark(resource_of[url], move.name, move.started, move.seconds)
        row[f"switch/{move.name}_s"] = row.get(f"switch/{move.name}_s", 0.0) + move.seconds
        if move.freed_bytes:
            row["switch/trainer_freed_gib"] = row.get("switch/trainer_freed_gib", 0.0) + move.freed_bytes / 2**30
    return row


def _capacity_metrics(parts: Parts) -> dict[str, float]:
    """Rollout capacity: servers serving now, and the Ray nodes and servers that came and went since
    the previous row (each is on the timeline already, drawn where it happened), printed too."""
    row = {"fleet/servers": float(len(parts.fleet.servers()))}
    for event in parts.fleet.take_events():
        if event.kind in ("node_joined", "node_lost", "waiting", "died", "restarted", "restart_failed", "gave_up"):
            row[f"fleet/{event.kind}"] = row.get(f"fleet/{event.kind}", 0.0) + 1
            tqdm.write(f"seamless run: {event.describe()}")
    return row


def _warm_start(parts: Parts) -> None:
    """A short supervised pass so the tiny policy knows the task's format, then publish it."""
    warm = parts.recipe.trainer.sft_warmup
    if warm.steps == 0:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parts.model_dir)
    losses = supervised_warmup(parts.trainer, parts.tasks, tokenizer, warm, parts.recipe.rollout.agent)
    # the warm-started weights are a version of their own: rollout after this is never stamped 0
    parts.fleet.publish(parts.trainer)
    parts.logger.log(0, {"warmup/loss_first": losses[0], "warmup/loss_last": losses[-1]})
    print(f"seamless run: warm-up loss {losses[0]:.3f} -> {losses[-1]:.3f} over {warm.steps} steps")


def _collect(parts: Parts, progress: Progress) -> tuple[list[EpisodeEntry], list[Trajectory]]:
    """rollout.batch_size whole GRPO groups from the stream (replayed entries first). Episodes of
    groups not complete yet are held for a later step (asynchronous policies finish groups of the
    next batch while this one trains)."""
    rollout = parts.recipe.rollout
    # a killed run's finished, untrained episodes join this step whole or not: their group's other
    # members died with it, and waiting for them would hold the episodes (unacknowledged) forever
    leftover: set[str] = set()
    for entry in progress.backlog:
        trajectory = parts.episodes.trajectory(entry.session_id)
        group = trajectory.group_id or entry.session_id
        progress.held.setdefault(group, []).append((entry, trajectory))
        leftover.add(group)
    progress.backlog = []
    trained = set(progress.trained_entry_ids)
    complete = lambda: [g for g, members in progress.held.items()  # noqa: E731
                        if len(members) >= rollout.group_size and g not in leftover]
    while len(complete()) < rollout.batch_size:
        batch = parts.episodes.take(rollout.batch_size * rollout.group_size, block_ms=5000)
        if not batch:
            raise RuntimeError(f"the episode stream delivered {len(complete())} of {rollout.batch_size} whole "
                               "GRPO groups within 5 s; check the agent runner's log and the proxy's log")
        for entry in batch:
            if entry.entry_id in trained:  # trained before a crash, in the restored checkpoint
                progress.unacked.append(entry)
                continue
            trajectory = parts.episodes.trajectory(entry.session_id)
            progress.held.setdefault(trajectory.group_id or entry.session_id, []).append((entry, trajectory))
    taken = [progress.held.pop(g) for g in [*complete()[: rollout.batch_size], *leftover]]
    return [e for members in taken for e, _ in members], [t for members in taken for _, t in members]


def _checkpoint(parts: Parts, progress: Progress) -> None:
    extra = {"step": progress.step, "trained_entry_ids": progress.trained_entry_ids[-100_000:],
             "eval_before": progress.eval_before, "weight_version": parts.fleet.version,
             "discarded_entry_ids": progress.discarded_entry_ids[-100_000:]}
    parts.trainer.save_checkpoint(parts.checkpoint_dir, extra_state=extra)
    parts.episodes.ack(progress.unacked, parts.recipe.store.retention_s)
    progress.unacked = []


def _restore(parts: Parts) -> Progress:
    # versions are never reused: the killed run may have published (and the proxy stamped tokens
    # with) versions after its checkpoint; whatever is published now is newer than all of them
    stamped = parts.fleet.proxy.upstreams()["weight_version"]
    try:
        path = latest_checkpoint(parts.checkpoint_dir)
    except Exception:
        print("seamless run: no checkpoint to resume from yet; starting from the beginning")
        parts.fleet.publisher.start_above(stamped)
        # every trained weight of the killed run is gone (the base model's, version 0, is not)
        return _take_backlog(parts, Progress(discarded_versions=range(1, stamped + 1)))
    extra = parts.trainer.load_checkpoint(path)
    kept = extra.get("weight_version", stamped)  # the checkpoint's weights
    floor = max(stamped, kept)  # the newest version the killed run published
    parts.fleet.publisher.start_above(floor)
    progress = Progress(step=extra["step"], trained_entry_ids=list(extra["trained_entry_ids"]),
                        eval_before=extra.get("eval_before"), restored=True,
                        discarded_entry_ids=list(extra.get("discarded_entry_ids", [])),
                        discarded_versions=range(kept + 1, floor + 1))
    update = parts.fleet.publish(parts.trainer)
    lost = progress.discarded_versions
    print(f"seamless run: resumed from {path} at step {progress.step} (weights version {update.version}"
          + (f"; versions {lost.start}-{lost.stop - 1} of the killed run's weights are lost and never reused"
             if lost else "") + ")")
    return _take_backlog(parts, progress)


def _take_backlog(parts: Parts, progress: Progress) -> Progress:
    """Sort what the killed run left in the stream: entries the checkpoint already trained are only
    acknowledged (at the next checkpoint), and so are episodes sampled (in part) by weights the kill
    threw away; the others (trained after the checkpoint on the checkpoint's weights, or finished
    and never trained) join the next step, so none is lost and none is left over at the end."""
    # steps after the checkpoint are trained again: their old trace files would count episodes twice
    drop_steps_after(parts.run_dir, progress.step)
    trained = set(progress.trained_entry_ids)
    lost = progress.discarded_versions
    for entry in parts.episodes.backlog():
        if entry.entry_id in trained:
            progress.unacked.append(entry)
        elif lost and any(v in lost for turn in parts.episodes.trajectory(entry.session_id).turns
                          for v in turn.weight_versions):
            progress.unacked.append(entry)
            progress.discarded_entry_ids.append(entry.entry_id)
        else:
            progress.backlog.append(entry)
    if progress.discarded_entry_ids:
        print(f"seamless run: {len(progress.discarded_entry_ids)} finished episode(s) sampled by the lost "
              "weights are dropped, not trained")
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


def _step_metrics(parts: Parts, trajectories: list[Trajectory], sequences: list[TrainingSequence],
                  totals: Totals, report) -> dict:
    rewards = [t.reward for t in trajectories]
    mean = sum(rewards) / len(rewards)
    row = {"rollout/reward_mean": mean,
           "rollout/reward_std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5,
           "rollout/accuracy": sum(r >= 1.0 for r in rewards) / len(rewards),
           "rollout/response_tokens_mean": sum(s.num_generated for s in sequences) / max(1, len(sequences)),
           "rollout/agent_errors": sum(e.error is not None for e in totals.episodes),
           "perf/trained_tokens_per_s": totals.trained_tokens / max(1e-9, time.monotonic() - totals.started),
           "scheduler/switch_s": report.switch_s, "scheduler/train_s": report.train_s,
           "scheduler/sync_s": report.sync_s}
    row.update(parts.scheduler.metrics())
    return row


def _save_timeline(parts: Parts, progress: Progress, totals: Totals):
    """timeline.json + timeline.png and the sim-vs-real record into the run folder, and to W&B."""
    scheduler, recipe = parts.scheduler, parts.recipe
    timeline = scheduler.finish_recording()
    _, png = scheduler.save(parts.run_dir, timeline)
    rollout = recipe.rollout
    recorded = totals.recorder.recorded_run(recipe.cluster, timeline, rollout.batch_size * rollout.group_size,
                                            rollout.agent_concurrency, rollout.max_num_seqs)
    recorded.save(parts.run_dir / "recorded_run.json")
    parts.logger.log(progress.step, timeline.metrics("scheduler/final/"))
    parts.logger.image(progress.step, "scheduler/timeline", png)
    if totals.clock.history:
        parts.logger.image(progress.step, "profile/steps", plot_profile(totals.clock.history,
                                                                        parts.run_dir / "profile.png"))
    return timeline


def _log_samples(parts: Parts, step: int, episodes: list) -> None:
    rows = [[e.task_id, e.answer, e.reward, e.error or ""] for e in episodes[:16]]
    parts.logger.table(step, "samples", ["task_id", "answer", "reward", "error"], rows)


def _summary(parts: Parts, progress: Progress, after: float, totals: Totals, timeline) -> dict:
    wall_s = time.monotonic() - totals.started
    audit = totals.ledger.audit(e.session_id for e in parts.episodes.in_stream())
    print(f"seamless run: {audit.line()}")
    summary = {"steps": progress.step, "eval_accuracy_before": progress.eval_before, "eval_accuracy_after": after,
               "wall_time_s": wall_s, "trained_tokens": totals.trained_tokens,
               "trained_tokens_per_s": totals.trained_tokens / max(1e-9, wall_s),
               "policy": parts.scheduler.policy.name, "staleness": parts.scheduler.policy.staleness,
               "bubble_ratio": timeline.bubble_ratio(), "bubble_ratio_by_phase": timeline.bubble_by_phase(),
               "role_switches": timeline.role_switches(), "timeline_s": timeline.end - timeline.t0,
               "seed": parts.recipe.run.seed, "run_dir": str(parts.run_dir),
               "episodes": audit.as_dict(), "fleet_events": [e.describe() for e in parts.fleet.events
                                                             if e.kind not in ("started", "removed", "parked", "unparked")]}
    (parts.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    hint = parts.logger.finish()
    print(f"seamless run: held-out accuracy {progress.eval_before:.1%} before -> {after:.1%} after "
          f"{progress.step} steps ({wall_s / 60:.1f} min, bubble ratio {summary['bubble_ratio']:.1%}, "
          f"{summary['role_switches']} role switches); summary in {parts.run_dir / 'summary.json'}")
    if hint:
        print(f"seamless run: W&B run saved offline; upload it with: {hint}")
    return summary


__all__ = ["run", "Path"]
