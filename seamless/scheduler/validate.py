"""Sim-vs-real: fit the simulator's workload to a recorded real run, simulate the same pool and
policy, and compare bubble ratio and throughput.

The main loop feeds a `RunRecorder` every trained step (what only the loop knows: completion
lengths, tokens per step, time outside LLM calls), which makes the `RecordedRun` (that plus the
scheduler's timeline) at the end; `compare(run)` answers whether the simulator is within
a tolerance of reality (the issue asks for 20%).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seamless.config import ClusterConfig, SimConfig
from seamless.scheduler.policy import make_policy
from seamless.scheduler.resources import ResourcePool, Role
from seamless.scheduler.sim import SimResult, Simulation, with_server_cap
from seamless.scheduler.timeline import Timeline
from seamless.types import TrainingSequence, Trajectory


@dataclass
class RecordedRun:
    """A real run, as the simulator needs it."""

    cluster: dict
    """The recipe's cluster section (model_dump), so the same pool and policy are simulated."""
    timeline: dict
    """TagScheduler.timeline.to_dict() after close()."""
    batch_episodes: int
    completion_lengths: list[int]
    """Tokens of every LLM call's completion."""
    prompt_tokens: float
    """Mean prompt length of an episode's first call."""
    turns: int = 1
    tool_latency_s: float = 0.0
    step_tokens: list[int] | None = None
    """Generated tokens each step trained on (for the real tokens/s)."""
    step_context_tokens: list[int] | None = None
    """Prompt + completion tokens each step trained on (for the trainer's speed)."""
    episode_overhead_s: float = 0.0
    """Mean seconds an episode spent outside its LLM calls (session, scoring, finishing: the
    harness), during which it holds no server."""
    agent_concurrency: int | None = None
    """Most episodes the agent runner ran at once (rollout.agent_concurrency)."""
    server_max_sequences: int | None = None
    """Most sequences each server decoded at once (rollout.max_num_seqs; None: the engine's default)."""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RecordedRun:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class RunRecorder:
    """What a real run's steps tell the simulator, gathered as the main loop trains them."""

    completion_lengths: list[int] = field(default_factory=list)
    """Tokens of every trained LLM call's completion."""
    episodes: list[tuple[int, int | None, float | None]] = field(default_factory=list)
    """Per trained episode: its LLM calls, its first prompt's tokens, and its wall time outside
    the calls (the harness's share; None when not timed, e.g. replayed after a resume)."""
    steps: list[tuple[int, int]] = field(default_factory=list)
    """Per step: generated tokens trained on, and prompt + completion tokens trained on."""
    episode_wall_s: dict[str, float] = field(default_factory=dict)
    """Wall time of every finished episode, by session id, until a step trains it."""

    def step(self, trajectories: list[Trajectory], sequences: list[TrainingSequence]) -> int:
        """Record one trained step; returns the generated tokens it trained on."""
        for trajectory in trajectories:
            turns = trajectory.turns
            self.completion_lengths += [len(turn.completion_token_ids) for turn in turns]
            wall = self.episode_wall_s.pop(trajectory.session_id, None)
            overhead = None
            if wall is not None and turns:
                overhead = max(0.0, wall - sum(max(0.0, t.ended_at - t.started_at) for t in turns))
            self.episodes.append((len(turns), len(turns[0].prompt_token_ids) if turns else None, overhead))
        self.steps.append((sum(s.num_generated for s in sequences), sum(len(s.token_ids) for s in sequences)))
        return self.steps[-1][0]

    def recorded_run(self, cluster: ClusterConfig, timeline: Timeline, batch_episodes: int,
                     agent_concurrency: int | None, server_max_sequences: int | None = None) -> RecordedRun:
        prompts = [p for _, p, _ in self.episodes if p is not None]
        overheads = [o for _, _, o in self.episodes if o is not None]
        return RecordedRun(cluster=cluster.model_dump(mode="json"), timeline=timeline.to_dict(),
                           batch_episodes=batch_episodes, completion_lengths=self.completion_lengths or [1],
                           prompt_tokens=sum(prompts) / max(1, len(prompts)),
                           turns=max(1, round(sum(n for n, _, _ in self.episodes) / max(1, len(self.episodes)))),
                           step_tokens=[g for g, _ in self.steps], step_context_tokens=[c for _, c in self.steps],
                           episode_overhead_s=sum(overheads) / max(1, len(overheads)),
                           agent_concurrency=agent_concurrency, server_max_sequences=server_max_sequences)


@dataclass(frozen=True)
class Comparison:
    real_bubble_ratio: float
    sim_bubble_ratio: float
    real_tokens_per_s: float
    sim_tokens_per_s: float

    def relative_errors(self) -> tuple[float, float]:
        rel = lambda sim, real: abs(sim - real) / max(abs(real), 1e-9)  # noqa: E731
        return rel(self.sim_bubble_ratio, self.real_bubble_ratio), rel(self.sim_tokens_per_s, self.real_tokens_per_s)

    def within(self, tolerance: float = 0.2) -> bool:
        return all(err <= tolerance for err in self.relative_errors())


def _window(timeline: Timeline, first: int) -> tuple[float, float]:
    """From the end of step `first` (0: the start) to the end of the last step."""
    ends = [p.end for p in timeline.phases if p.name == "sync"]
    start = ends[first - 1] if first and len(ends) >= first else timeline.t0
    return start, ends[-1] if ends else timeline.end


def real_tokens_per_s(run: RecordedRun, first: int) -> float:
    """Trained (generated) tokens per second of the recorded run over its steps after the first
    `first` (the simulator's warm-up window)."""
    start, end = _window(Timeline.from_dict(run.timeline), first)
    return sum((run.step_tokens or [])[first:]) / max(end - start, 1e-9)


def _busy_rollout(timeline: Timeline, start: float, end: float) -> float:
    return sum(max(0.0, min(s.end, end) - max(s.start, start)) for s in timeline.segments
               if s.busy and s.role is Role.ROLLOUT)


def _mean_span(timeline: Timeline, phase: str, skip: int = 0) -> float:
    """Mean length of a phase, leaving out its first `skip` occurrences (warm-up steps)."""
    spans = [p.end - p.start for p in timeline.phases if p.name == phase]
    spans = spans[skip:] or spans
    return statistics.fmean(spans) if spans else 0.0


def _sync_pause(timeline: Timeline) -> float:
    """Mean idle seconds, per sync phase, of the servers that stayed in rollout through it (the
    ones that received weights over the network); 0 when every server had switched (colocated)."""
    pauses = []
    for span in (p for p in timeline.phases if p.name == "sync"):
        inside: dict[int, list] = {}
        for seg in timeline.segments:
            if seg.end > span.start and seg.start < span.end:
                inside.setdefault(seg.resource, []).append(seg)
        for segs in inside.values():
            if all(seg.role is Role.ROLLOUT for seg in segs):
                pauses.append(sum(min(seg.end, span.end) - max(seg.start, span.start)
                                  for seg in segs if not seg.busy))
    return statistics.fmean(pauses) if pauses else 0.0


def _switch_s(timeline: Timeline, skip: int, shares: dict[str, float]) -> float | None:
    """Seconds of one role switch; None when no resource switched roles in the run (a
    disaggregated one), which then tells nothing of the cost. The simulator charges switch_s when
    resources leave rollout and again when they rejoin it (its sync phase lasts that long when no
    server loads weights over the network); the real rejoin is part of the sync span, so with no
    network targets the two spans are averaged. Each span is scaled to a whole compute unit
    (`shares`)."""
    if not any(seg.role is Role.SWITCHING for seg in timeline.segments):
        return None
    leave = _mean_span(timeline, "switch", skip) * shares["switch"]
    if _sync_pause(timeline) > 0 or leave == 0:
        return leave
    return (leave + _mean_span(timeline, "sync", skip) * shares["sync"]) / 2


def _phase_share(timeline: Timeline, phase: str, units: float | None, skip: int, server_workers: float = 1.0) -> float:
    """With `units` compute units shared by the pool (SimConfig.compute_units): the share of a
    unit each busy worker had during `phase`, time-averaged over its spans (busy resources, a
    decoding server counting as `server_workers`; resources switching; and in a sync the rollout
    servers idle while they load weights); 1.0 without units."""
    if units is None:
        return 1.0
    worked = total = 0.0
    for span in [p for p in timeline.phases if p.name == phase][skip:]:
        cuts = sorted({span.start, span.end} | {t for seg in timeline.segments for t in (seg.start, seg.end)
                                                 if span.start < t < span.end})
        for a, b in zip(cuts, cuts[1:]):
            mid = (a + b) / 2
            live = [seg for seg in timeline.segments if seg.start <= mid < seg.end]
            decoding = sum(1 for seg in live if seg.busy and seg.role is Role.ROLLOUT)
            others = sum(1 for seg in live if (seg.busy and seg.role is not Role.ROLLOUT) or seg.role is Role.SWITCHING
                         or (phase == "sync" and seg.role is Role.ROLLOUT and not seg.busy))
            busy = others + decoding * server_workers
            worked += (b - a) * min(1.0, units / max(busy, 1))
            total += b - a
    return worked / total if total else 1.0


def _calibrate_decode(run: RecordedRun, workload: SimConfig) -> SimConfig:
    """Decode speed such that the simulated run keeps rollout servers busy as many resource-seconds
    per trained token as the real one did, over the steps after the warm-up (the first steps of a
    real run pay one-time costs, e.g. vLLM's first batches); bisection on a log scale, the sim is
    monotone in it."""
    first = workload.warmup_steps
    timeline = Timeline.from_dict(run.timeline)
    start, end = _window(timeline, first)
    tokens = sum((run.step_tokens or [])[first:]) or sum(run.completion_lengths)
    target = _busy_rollout(timeline, start, end) / max(tokens, 1)
    lo, hi = 1.0, 1e7
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        sim = simulate_recorded(run, workload.model_copy(update={"decode_tokens_per_s": mid}))
        s_start, s_end = _window(sim.timeline, first)
        per_token = _busy_rollout(sim.timeline, s_start, s_end) / max(sim.tokens_per_s * (s_end - s_start), 1e-9)
        lo, hi = (lo, mid) if per_token < target else (mid, hi)
    return workload.model_copy(update={"decode_tokens_per_s": math.sqrt(lo * hi)})


def fit_workload(run: RecordedRun, base: SimConfig | None = None) -> SimConfig:
    """Workload parameters read off the recorded run; the rest stay as in `base`.

    Lengths give the lognormal; switch and sync spans give switch_s (kept from `base` when the run
    never switched roles) and weight_sync_s; train spans and tokens per step give the trainer's
    speed; rollout busy resource-seconds and generated tokens calibrate the decode speed
    (half_load_concurrency and server_workers stay as in `base`: a timeline does not record how
    many requests a server ran at once, nor its processes).
    """
    base = base or SimConfig()
    timeline = Timeline.from_dict(run.timeline)
    cluster = ClusterConfig.model_validate(run.cluster)
    pool = ResourcePool.from_cluster(cluster)
    logs = [math.log(max(1, n)) for n in run.completion_lengths]
    steps = len([p for p in timeline.phases if p.name == "train"]) or 1
    warmup = min(base.warmup_steps, steps - 1)
    # on shared cores, spans seen while other workers ran are scaled to a whole unit of compute
    shares = {name: _phase_share(timeline, name, base.compute_units, warmup, base.server_workers)
              for name in ("switch", "train", "sync")}
    train_s = _mean_span(timeline, "train", warmup) * shares["train"]
    context = statistics.fmean(run.step_context_tokens) if run.step_context_tokens else 0.0
    switch_s = _switch_s(timeline, warmup, shares)  # None: no switch seen; keep the recipe's (not free)
    fitted = {
        "response_median_tokens": math.exp(statistics.fmean(logs)),
        "response_sigma": min(3.0, statistics.pstdev(logs)),
        "max_response_tokens": max(run.completion_lengths),
        "prompt_tokens": max(1, round(run.prompt_tokens)),
        "turns": run.turns, "tool_latency_s": run.tool_latency_s,
        "switch_s": base.switch_s if switch_s is None else switch_s,
        "weight_sync_s": _sync_pause(timeline) * shares["sync"],
        "train_step_overhead_s": 0.0 if context else train_s,
        "steps": steps, "warmup_steps": warmup,
    }
    if context:
        fitted["train_tokens_per_s"] = context / max(train_s, 1e-9) / len(pool.trainers)
    return _calibrate_decode(run, base.model_copy(update=fitted))


def simulate_recorded(run: RecordedRun, workload: SimConfig) -> SimResult:
    """The recorded run's pool, policy, batch size and servers' cap, on the fitted workload."""
    workload = with_server_cap(workload, run.server_max_sequences)
    cluster = ClusterConfig.model_validate(run.cluster)
    pool = ResourcePool.from_cluster(cluster)
    policy = make_policy(cluster.policy, pool, cluster.staleness)
    return Simulation(policy, workload, batch_episodes=run.batch_episodes,
                      episode_overhead_s=run.episode_overhead_s, agent_concurrency=run.agent_concurrency).run()


def compare(run: RecordedRun, base: SimConfig | None = None) -> Comparison:
    """Fit, simulate, and set the simulated numbers beside the measured ones (same warm-up window)."""
    return compare_fitted(run, fit_workload(run, base))


def compare_fitted(run: RecordedRun, workload: SimConfig) -> Comparison:
    """`compare` on a workload already fitted to `run` (the fit is the costly part)."""
    sim = simulate_recorded(run, workload)
    timeline = Timeline.from_dict(run.timeline)
    first = workload.warmup_steps
    start, end = _window(timeline, first)
    return Comparison(real_bubble_ratio=timeline.bubble_ratio(start, end), sim_bubble_ratio=sim.bubble_ratio,
                      real_tokens_per_s=real_tokens_per_s(run, first), sim_tokens_per_s=sim.tokens_per_s)
