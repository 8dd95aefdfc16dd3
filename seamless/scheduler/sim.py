"""Discrete-event simulator of the scheduling policies at cluster sizes this machine cannot run.

It drives the same `Policy` and `PipelineState` as the real scheduler (policy.py); only the world
around them is modeled here:
- a rollout server is a processor-sharing queue: with c running sequences each advances at
  decode_tokens_per_s / (c + half_load_concurrency) tokens/s, so a GPU left with a few long-tail
  sequences runs fast per sequence but far below its peak throughput;
- completion lengths are lognormal and cut at max_response_tokens; episodes have `turns` LLM calls
  with lognormal tool latencies between them (a sequence at a tool holds no GPU);
- prefill is charged as decode-token equivalents, again when a sequence moves to another server;
- a step takes train_step_overhead_s + tokens / (train_tokens_per_s * trainer GPUs);
- a role switch costs switch_s; servers without a trainer rank beside them pause weight_sync_s;
- with compute_units set (a CPU test bed: logical GPUs on shared cores), every busy worker (a
  server decoding, a trainer rank, a server loading weights or switching) runs at
  min(1, compute_units / busy workers) of its speed (training and decoding follow the share as
  it changes; a switch or weight load takes the share as it is when it starts); a decoding server
  counts as server_workers of them (vLLM's API server process works beside its engine);
- a server runs at most max_concurrency sequences at once (a recipe's rollout.max_num_seqs caps
  it: with_server_cap);
- optionally an episode spends `episode_overhead_s` outside any LLM call (half before its first
  call, half after its last: the harness creating the session, scoring, finishing), holding no GPU,
  and at most `agent_concurrency` episodes run at once (the agent runner's limit; others wait).
Left out on purpose: prefix-cache hit rates, network topology, stragglers among trainer ranks.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from seamless.config import ClusterConfig, SimConfig
from seamless.scheduler.policy import PipelineState, Policy, StepPlan
from seamless.scheduler.resources import Role
from seamless.scheduler.timeline import Timeline


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one simulated run reports (over the steps after the warm-up)."""

    policy: str
    gpus: int
    staleness_bound: int
    tokens_per_s: float
    """Generated tokens consumed by training steps per second of wall time."""
    bubble_ratio: float
    bubble_by_phase: dict[str, float]
    staleness_mean: float
    staleness_max: int
    step_time_s: float
    steps: int
    generated_tokens: int = field(repr=False, compare=False)
    """Every completion token generated in the run (trained or not yet)."""
    timeline: Timeline = field(repr=False, compare=False)

    def to_json(self) -> dict:
        return {"policy": self.policy, "gpus": self.gpus, "staleness_bound": self.staleness_bound,
                "tokens_per_s": round(self.tokens_per_s, 3), "bubble_ratio": round(self.bubble_ratio, 6),
                "bubble_by_phase": {k: round(v, 6) for k, v in self.bubble_by_phase.items()},
                "staleness_mean": round(self.staleness_mean, 4), "staleness_max": self.staleness_max,
                "step_time_s": round(self.step_time_s, 3), "steps": self.steps}


@dataclass(slots=True)
class _Episode:
    id: int
    lengths: list[int]
    """Completion tokens of each turn."""
    tools: list[float]
    """Tool latency after each turn but the last."""
    start_step: int
    turn: int = 0
    context: int = 0
    """Tokens of the conversation so far (prompt, completions, tool outputs)."""
    generated: int = 0
    server: int = -1
    work: float = 0.0
    """Work units (decode-token equivalents) of the current turn, prefill included."""


class _Server:
    """A rollout server as a processor-sharing queue; `progress` is the tokens every running
    sequence has advanced since the server started (all advance at the same rate)."""

    __slots__ = ("rid", "finish", "heap", "progress", "t_last", "paused", "serving", "gen")

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.finish: dict[int, float] = {}  # episode id -> progress at which its turn ends
        self.heap: list[tuple[float, int]] = []
        self.progress = 0.0
        self.t_last = 0.0
        self.paused = False
        self.serving = False
        self.gen = 0

    def advance(self, now: float, rate: float) -> None:
        if not self.paused and self.finish:
            self.progress += (now - self.t_last) * rate
        self.t_last = now


class Simulation:
    """One policy on one pool: run(steps) returns a SimResult."""

    def __init__(self, policy: Policy, workload: SimConfig, label: str | None = None,
                 batch_episodes: int | None = None, episode_overhead_s: float = 0.0,
                 agent_concurrency: int | None = None) -> None:
        self.policy = policy
        self._overhead = episode_overhead_s / 2  # before the first call, and again after the last
        self._agent_slots = agent_concurrency
        self._active = 0  # episodes holding an agent slot
        self._waiting: deque[_Episode] = deque()  # admitted, waiting for an agent slot
        self.w = workload
        self.label = label or policy.name
        self.rng = random.Random(workload.seed)
        n = len(policy.pool)
        self.state: PipelineState = policy.new_state(batch_episodes or workload.episodes_per_gpu * n)
        self.timeline = Timeline(n, self.state.roles)
        self.servers = [_Server(r.id) for r in policy.pool]
        self.now = 0.0
        self._events: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self._episodes: dict[int, _Episode] = {}
        self._ready: deque[_Episode] = deque()
        self._queue: deque[_Episode] = deque()  # waiting in the proxy for a free server slot
        self._load: list[tuple[int, int]] = []  # lazy min-heap of (running, rid) for routing
        self._plan: StepPlan | None = None
        self._batch: list[_Episode] = []
        self._step_done: list[float] = [0.0]
        self.step_tokens: list[int] = [0]
        self._staleness: list[list[int]] = [[]]
        self.completion_lengths: list[int] = []
        self.step_context_tokens: list[int] = [0]
        self._prefill_units = workload.decode_tokens_per_s / workload.prefill_tokens_per_s
        self._share = 1.0  # of a compute unit each busy worker gets (compute_units)
        self._training = 0  # trainer ranks computing now
        self._loading = 0  # servers switching roles or loading weights now
        self._train_left = 0.0  # seconds of the running step's training left, at a whole unit
        self._train_since = 0.0
        self._train_gen = 0  # the train_end event that still counts
        for rid, role in self.state.roles.items():
            if role is Role.ROLLOUT:
                self._serve(rid)

    # ---- the event loop ---------------------------------------------------------------------

    def run(self, steps: int | None = None) -> SimResult:
        steps = steps or self.w.steps
        self._admit()
        while len(self._step_done) <= steps:
            assert self._events, "simulation stalled: no event pending before the last step"
            t, _, kind, arg = heapq.heappop(self._events)
            self.now = t
            getattr(self, f"_on_{kind}")(arg)
        self.timeline.close(self.now)
        return self._result(steps)

    def _at(self, t: float, kind: str, arg: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, arg))

    def _rate(self, server: _Server) -> float:
        # a GPU kind of another speed (cluster.resources.N.speed) decodes and prefills that much faster
        speed = self.policy.pool[server.rid].speed * self._share
        return speed * self.w.decode_tokens_per_s / (len(server.finish) + self.w.half_load_concurrency)

    def _reshare(self) -> None:
        """With compute_units: the share of a unit each busy worker gets now; when it changed,
        every decoding server goes on at its new rate."""
        if self.w.compute_units is None:
            return
        decoding = sum(1 for s in self.servers if s.finish and not s.paused)
        busy = self._training + self._loading + decoding * self.w.server_workers
        share = min(1.0, self.w.compute_units / max(busy, 1))
        if share == self._share:
            return
        for server in self.servers:
            server.advance(self.now, self._rate(server))
        if self._training:
            self._train_left -= (self.now - self._train_since) * self._share
            self._train_since = self.now
        self._share = share
        for server in self.servers:
            if server.finish and not server.paused:
                self._schedule(server)
        if self._training:
            self._schedule_train()

    # ---- episodes ---------------------------------------------------------------------------

    def _admit(self) -> None:
        for _ in range(self.policy.admission(self.state)):
            self.state.on_started()
            ep = self._new_episode()
            ep.work = self._prefill(self.w.prompt_tokens) + ep.lengths[0]
            self._begin(ep)

    def _begin(self, ep: _Episode) -> None:
        if self._agent_slots is not None and self._active >= self._agent_slots:
            self._waiting.append(ep)
            return
        self._active += 1
        if self._overhead > 0:
            self._at(self.now + self._overhead, "arrive", ep.id)
        else:
            self._place(ep)

    def _on_arrive(self, eid: int) -> None:
        self._place(self._episodes[eid])

    def _new_episode(self) -> _Episode:
        w = self.w
        mu = math.log(w.response_median_tokens)
        lengths = [max(1, min(w.max_response_tokens, round(self.rng.lognormvariate(mu, w.response_sigma))))
                   for _ in range(w.turns)]
        tools = [self.rng.lognormvariate(math.log(w.tool_latency_s), w.tool_latency_sigma)
                 if w.tool_latency_s > 0 else 0.0 for _ in range(w.turns - 1)]
        ep = _Episode(self.state.started, lengths, tools, self.state.steps, context=w.prompt_tokens)
        self._episodes[ep.id] = ep
        return ep

    def _prefill(self, tokens: int) -> float:
        return tokens * self._prefill_units

    def _on_turn_done(self, server: _Server, ep: _Episode) -> None:
        length = ep.lengths[ep.turn]
        self.completion_lengths.append(length)
        ep.generated += length
        ep.context += length
        ep.turn += 1
        if ep.turn < len(ep.lengths):
            self._at(self.now + ep.tools[ep.turn - 1], "tool_done", ep.id)
            return
        if self._overhead > 0:
            self._at(self.now + self._overhead, "episode_done", ep.id)
            return
        self._finish(ep)

    def _on_episode_done(self, eid: int) -> None:
        self._finish(self._episodes[eid])

    def _finish(self, ep: _Episode) -> None:
        del self._episodes[ep.id]
        self._active -= 1
        if self._waiting:
            self._begin(self._waiting.popleft())
        self.state.on_finished()
        self._ready.append(ep)
        self._try_step()

    def _on_tool_done(self, eid: int) -> None:
        ep = self._episodes[eid]
        ep.context += self.w.tool_output_tokens
        ep.work = self._prefill(self.w.tool_output_tokens) + ep.lengths[ep.turn]
        self._place(ep, prefer=ep.server)

    # ---- servers ----------------------------------------------------------------------------

    def _place(self, ep: _Episode, prefer: int = -1) -> None:
        """Route a turn: back to its server if that one still serves and has room (its prefix is
        cached there), else to the least-loaded server, else wait in the proxy's queue."""
        if prefer >= 0 and self.servers[prefer].serving and len(self.servers[prefer].finish) < self.w.max_concurrency:
            self._run_on(self.servers[prefer], ep)
            return
        while self._load:
            running, rid = self._load[0]
            server = self.servers[rid]
            if not server.serving or running != len(server.finish):
                heapq.heappop(self._load)  # stale entry
                continue
            if running >= self.w.max_concurrency:
                break
            if prefer >= 0:  # a new server has no cache of this conversation: prefill it again
                ep.work += self._prefill(ep.context)
            self._run_on(server, ep)
            return
        self._queue.append(ep)

    def _run_on(self, server: _Server, ep: _Episode) -> None:
        server.advance(self.now, self._rate(server))
        end = server.progress + ep.work
        server.finish[ep.id] = end
        heapq.heappush(server.heap, (end, ep.id))
        ep.server = server.rid
        self._episodes[ep.id] = ep
        self._changed(server)

    def _changed(self, server: _Server) -> None:
        """After the set of running sequences changed: reschedule, re-rank, record busy/idle."""
        server.gen += 1  # its pending event, if any, is stale
        running = len(server.finish)
        if server.serving:
            heapq.heappush(self._load, (running, server.rid))
        self.timeline.set(self.now, server.rid, busy=running > 0 and not server.paused)
        if running and not server.paused:
            self._schedule(server)
        self._reshare()

    def _schedule(self, server: _Server) -> None:
        """The event of the server's next finishing sequence, at its current rate."""
        server.gen += 1
        while server.heap[0][1] not in server.finish or server.finish[server.heap[0][1]] != server.heap[0][0]:
            heapq.heappop(server.heap)  # lazily drop sequences that moved away
        eta = (server.heap[0][0] - server.progress) / self._rate(server)
        self._at(self.now + max(0.0, eta), "server", server.rid * (1 << 32) + server.gen)

    def _on_server(self, arg: int) -> None:
        rid, gen = divmod(arg, 1 << 32)
        server = self.servers[rid]
        if gen != server.gen:
            return
        server.advance(self.now, self._rate(server))
        done = []
        while server.heap and server.heap[0][0] <= server.progress + 1e-6:
            end, eid = heapq.heappop(server.heap)
            if server.finish.get(eid) == end:
                del server.finish[eid]
                done.append(self._episodes[eid])
        self._changed(server)
        self._drain_queue()
        for ep in done:
            self._on_turn_done(server, ep)
        self._admit()

    def _drain_queue(self) -> None:
        while self._queue and self._load:
            ep = self._queue.popleft()
            before = len(self._queue)
            self._place(ep)
            if len(self._queue) > before:  # no room anywhere: it went back to the end
                self._queue.rotate(1)
                break

    def _serve(self, rid: int) -> None:
        server = self.servers[rid]
        server.serving = True
        server.advance(self.now, self._rate(server))
        self.timeline.set(self.now, rid, role=Role.ROLLOUT)
        self._changed(server)
        self._drain_queue()

    def _unserve(self, rid: int) -> None:
        """The server stops; its running sequences continue elsewhere (partial rollout)."""
        server = self.servers[rid]
        server.advance(self.now, self._rate(server))
        server.serving = False
        moved = []
        for eid, end in server.finish.items():
            ep = self._episodes[eid]
            remaining = end - server.progress
            decoded = max(0.0, ep.work - remaining)  # prefill ran first, so this overcounts a little
            ep.work = remaining + self._prefill(ep.context + min(ep.lengths[ep.turn], int(decoded)))
            moved.append(ep)
        server.finish.clear()
        server.heap.clear()
        self._changed(server)
        self.timeline.set(self.now, rid, role=Role.SWITCHING)
        for ep in moved:
            self._place(ep)

    # ---- training steps ---------------------------------------------------------------------

    def _try_step(self) -> None:
        plan = self.policy.step_plan(self.state)
        if plan is None:
            return
        self.state.begin_step(plan)
        self._plan = plan
        self._batch = [self._ready.popleft() for _ in range(plan.episodes)]
        self._staleness.append([plan.step - 1 - ep.start_step for ep in self._batch])
        self.step_tokens.append(sum(ep.generated for ep in self._batch))
        self.step_context_tokens.append(sum(ep.context for ep in self._batch))
        self._loading += len(plan.leave_rollout)
        for rid in plan.leave_rollout:
            self._unserve(rid)
        switching = bool(plan.leave_rollout)
        self.timeline.begin_phase(self.now, "switch" if switching else "train", plan.step)
        self._at(self.now + (self.w.switch_s / self._share if switching else 0.0), "train_start")

    def _on_train_start(self, _: int) -> None:
        plan = self._plan
        assert plan is not None
        self.timeline.begin_phase(self.now, "train", plan.step)
        for rid in plan.train:
            self.timeline.set(self.now, rid, role=Role.TRAIN, busy=True)
        self._loading -= len(plan.leave_rollout)
        self._training = len(plan.train)
        tokens = sum(ep.context for ep in self._batch)
        # data-parallel ranks split the batch evenly and wait for the slowest (mixed GPU kinds)
        slowest = min(self.policy.pool[rid].speed for rid in plan.train)
        # seconds of training at a whole unit each; on shared cores it runs at the share of the moment
        self._train_left = self.w.train_step_overhead_s + tokens / (self.w.train_tokens_per_s * len(plan.train) * slowest)
        self._train_since = self.now
        self._reshare()
        self._schedule_train()

    def _schedule_train(self) -> None:
        self._train_gen += 1
        self._at(self.now + self._train_left / self._share, "train_end", self._train_gen)

    def _on_train_end(self, gen: int) -> None:
        if gen != self._train_gen:
            return  # rescheduled: the share changed while it trained
        plan = self._plan
        assert plan is not None
        self.timeline.begin_phase(self.now, "sync", plan.step)
        roles_after = self.policy.roles_after_step(self.state)
        for rid in plan.train:
            self.timeline.set(self.now, rid, busy=False)
        targets = self.state.sync_targets(roles_after)
        returning = [rid for rid, role in roles_after.items()
                     if role is Role.ROLLOUT and not self.servers[rid].serving]
        self._training = 0
        self._loading += len(targets) + len(returning)
        for rid in targets:
            self._pause(rid, True)  # reshares: the loads count from now
        self._reshare()
        sync_s, switch_s = self.w.weight_sync_s / self._share, self.w.switch_s / self._share
        for rid in targets:
            self._at(self.now + sync_s, "resume", rid)
        for rid in returning:
            self.timeline.set(self.now, rid, role=Role.SWITCHING)
            self._at(self.now + switch_s, "rejoin", rid)
        wait = max([sync_s] * bool(targets) + [switch_s] * bool(returning) + [0.0])
        self._roles_after = roles_after
        self._at(self.now + wait, "sync_done")

    def _pause(self, rid: int, paused: bool) -> None:
        server = self.servers[rid]
        server.advance(self.now, self._rate(server))
        server.paused = paused
        self._changed(server)

    def _on_resume(self, rid: int) -> None:
        self._loading -= 1
        self._pause(rid, False)

    def _on_rejoin(self, rid: int) -> None:
        self._loading -= 1
        self._serve(rid)

    def _on_sync_done(self, _: int) -> None:
        self.state.end_step(self._roles_after)
        self._plan = None
        self._step_done.append(self.now)
        self.timeline.begin_phase(self.now, "rollout", self.state.steps)
        self._admit()
        self._try_step()

    # ---- results ----------------------------------------------------------------------------

    def _result(self, steps: int) -> SimResult:
        first = self.w.warmup_steps
        start, end = self._step_done[first], self._step_done[steps]
        tokens = sum(self.step_tokens[first + 1: steps + 1])
        stale = [s for step in self._staleness[first + 1: steps + 1] for s in step]
        return SimResult(
            policy=self.label, gpus=len(self.policy.pool), staleness_bound=self.policy.staleness,
            tokens_per_s=tokens / (end - start), bubble_ratio=self.timeline.bubble_ratio(start, end),
            bubble_by_phase=self.timeline.bubble_by_phase(start, end),
            staleness_mean=sum(stale) / len(stale), staleness_max=max(stale),
            step_time_s=(end - start) / (steps - first), steps=steps,
            generated_tokens=sum(self.completion_lengths), timeline=self.timeline)


def with_server_cap(workload: SimConfig, max_num_seqs: int | None) -> SimConfig:
    """`workload` with each server held to `max_num_seqs` sequences at once (a recipe's
    rollout.max_num_seqs), when that is below its max_concurrency."""
    if max_num_seqs is None or max_num_seqs >= workload.max_concurrency:
        return workload
    return workload.model_copy(update={"max_concurrency": max_num_seqs})


@dataclass(frozen=True, slots=True)
class SimCase:
    """One row of a comparison: a label, the policy it runs, and its staleness bound."""

    label: str
    policy: str
    staleness: int


def default_cases(async_staleness: int = 1) -> list[SimCase]:
    """The policies `seamless sim` compares; async variants use `async_staleness` (at least 1)."""
    k = max(1, async_staleness)
    return [SimCase("colocated", "colocated", 0), SimCase("disaggregated", "disaggregated", 0),
            SimCase("disaggregated-async", "disaggregated", k), SimCase("tagged", "tagged", k)]


def simulate(workload: SimConfig, gpus: int, case: SimCase) -> SimResult:
    """Simulate one policy on an N-GPU pool: colocated gets N [train, rollout] GPUs, the others
    round(N * train_share) [train, rollout] GPUs and the rest [rollout]."""
    from seamless.scheduler.policy import make_policy
    from seamless.scheduler.resources import ResourcePool

    pool = ResourcePool.split(gpus, workload.train_share, all_dual=case.policy == "colocated")
    return Simulation(make_policy(case.policy, pool, case.staleness), workload, case.label).run()


def simulate_pool(workload: SimConfig, cluster: ClusterConfig) -> SimResult:
    """Simulate a recipe's own pool: its cluster.resources (tags, GPU kinds and their speed) under
    its cluster.policy."""
    from seamless.scheduler.policy import make_policy
    from seamless.scheduler.resources import ResourcePool

    pool = ResourcePool.from_cluster(cluster)
    label = f"{cluster.policy} (recipe pool)"
    return Simulation(make_policy(cluster.policy, pool, cluster.staleness), workload, label).run()


def sweep(workload: SimConfig, sizes: list[int], cases: list[SimCase] | None = None) -> list[SimResult]:
    """Every case at every size, sizes outer."""
    cases = cases or default_cases()
    return [simulate(workload, n, case) for n in sizes for case in cases]
