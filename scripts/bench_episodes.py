"""Whole episodes per second through the trajectory manager, beside the same LLM calls made directly.

An episode here is what a training run does for each: create a session, the agent's k LLM calls
(an `openai` client on the session's base URL, as the example agents use), the reward, finish, and
the trainer's read of it from the finished-episode stream (merged into sequences, acknowledged).
The upstream is a fast local fake in vLLM's shape (streamed chunks with token ids and logprobs, as
the proxy asks for; it also answers the proxy's derender call), so what is measured is seamless's
control plane, not generation. The baseline runs the same agent against the fake directly, at the
same concurrency, in the same run.

    .venv/bin/python scripts/bench_episodes.py [--concurrency 1 4 16 64 256] [--calls 1] [--episodes 256]

Prints, per concurrency: episodes/s through seamless and direct, and CPU milliseconds per episode
of the proxy, Redis and this process (runner, agents' clients, stream reader), and the control
plane's total: proxy + Redis + what this process spends beyond the direct run's clients. This
machine is noisy: compare within one run, and runs made side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_proxy import FAKE_UPSTREAM, start_fake_upstream  # noqa: E402

from seamless.agent.api import AgentContext, Sampling  # noqa: E402
from seamless.agent.runner import AgentRunner  # noqa: E402
from seamless.agent.tasks import Task  # noqa: E402
from seamless.proxy.server import ProxyProcess  # noqa: E402
from seamless.services.redis_server import RedisServer  # noqa: E402
from seamless.traces.episodes import EpisodeQueue  # noqa: E402

GROUP_SIZE = 8


async def agent(task: Task, ctx: AgentContext) -> str:
    """k chat calls on one client, each continuing the conversation (what a multi-turn agent sends)."""
    messages = [{"role": "user", "content": task.prompt}]
    async with ctx.openai_client() as client:
        # the runner imports this module anew (not as __main__): the count comes by environment
        for _ in range(int(os.environ.get("SEAMLESS_BENCH_CALLS", "1"))):
            reply = await client.chat.completions.create(model=ctx.model, messages=messages,
                                                         max_tokens=ctx.sampling.max_tokens)
            messages += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                         {"role": "user", "content": "go on"}]
    return reply.choices[0].message.content or ""


def _tasks(n: int) -> list[Task]:
    return [Task(task_id=f"t{i}", prompt=f"What is {i} + 1?", answer=str(i + 1)) for i in range(n)]


class CpuMeter:
    """CPU seconds used by some processes (and their children) since `start()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def _now(self) -> dict[str, float]:
        out = {"self": time.process_time()}
        for name, proc in self.procs.items():
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
            out[name] = total
        return out

    def start(self) -> None:
        self.began = self._now()

    def used(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self.began[name] for name in now}


async def _through_seamless(runner: AgentRunner, queue: EpisodeQueue, n: int) -> None:
    groups = await runner.run_groups(_tasks(n // GROUP_SIZE), GROUP_SIZE)
    assert all(e.error is None for g in groups for e in g), [e.error for g in groups for e in g if e.error][:3]
    taken: list = []
    while len(taken) < n:  # the trainer's side: read, merge, acknowledge
        batch = await asyncio.to_thread(queue.take, n - len(taken), 5000)
        assert batch, f"the stream delivered {len(taken)} of {n} episodes"
        for entry in batch:
            queue.trajectory(entry.session_id)
        taken += batch
    queue.ack(taken, retention_s=60)


async def _closing(runner: AgentRunner, work) -> None:
    try:
        await work
    finally:
        await runner.aclose()


async def _direct(upstream_url: str, concurrency: int, n: int) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(task: Task) -> None:
        async with slots:
            ctx = AgentContext(base_url=upstream_url + "/v1", api_key="none", session_id="direct",
                               group_id="direct", sampling=Sampling(max_tokens=8), model="fake")
            await agent(task, ctx)
    await asyncio.gather(*(one(t) for t in _tasks(n)))


def _measure(meter: CpuMeter, run) -> tuple[float, dict[str, float]]:
    meter.start()
    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started, meter.used()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--calls", type=int, default=1, help="LLM calls per episode")
    parser.add_argument("--episodes", type=int, default=256, help="episodes per concurrency (at least 2x it)")
    parser.add_argument("--no-derender", action="store_true",
                        help="the fake has no derender route (so the proxy makes one upstream call per LLM call)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the median is printed")
    args = parser.parse_args()
    os.environ["SEAMLESS_BENCH_CALLS"] = str(args.calls)

    work = Path(tempfile.mkdtemp(prefix="seamless-bench-episodes-"))
    started: list = []
    try:
        fake = FAKE_UPSTREAM
        if args.no_derender:  # a server without vLLM's derender route: the proxy answers from the stream
            fake = fake.replace('    if path.endswith("/models"):', '    if path.endswith("/derender"):\n'
                                '        payload, kind = b"", b"text/plain"\n'
                                '        await send({"type": "http.response.start", "status": 404, "headers": []})\n'
                                '        await send({"type": "http.response.body", "body": payload})\n'
                                '        return\n    if path.endswith("/models"):')
        upstream, upstream_url = start_fake_upstream(work, fake)
        started.append(upstream)
        redis_server = RedisServer(work / "redis", persist=False).start()
        started.append(redis_server)
        proxy = ProxyProcess(redis_server.url, work / "proxy", upstreams=[upstream_url], prefix="bench").start()
        started.append(proxy)
        queue = EpisodeQueue(redis_server.url, "bench")
        meter = CpuMeter({"proxy": proxy.pid, "redis": redis_server.pid, "upstream": upstream.pid})

        warm = AgentRunner(proxy.url, proxy.admin_key, "bench_episodes:agent", concurrency=8,
                           sampling=Sampling(max_tokens=8), model="fake")
        asyncio.run(_closing(warm, _through_seamless(warm, queue, 16)))  # imports, connections, caches
        asyncio.run(_direct(upstream_url, 8, 16))
        print(f"{args.calls} LLM call(s) an episode; medians of {args.repeats} runs; CPU in ms per episode")
        print(f"{'conc':>5} {'eps/s seamless':>15} {'eps/s direct':>13} {'ratio':>6} {'proxy':>7} {'redis':>6} "
              f"{'runner+agents':>14} {'direct agents':>14} {'control plane':>14}")
        for concurrency in args.concurrency:
            n = max(args.episodes, 2 * concurrency) // GROUP_SIZE * GROUP_SIZE
            runner = AgentRunner(proxy.url, proxy.admin_key, "bench_episodes:agent", concurrency=concurrency,
                                 sampling=Sampling(max_tokens=8), model="fake")
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(_measure(meter, lambda: _closing(runner, _through_seamless(runner, queue, n))))
                theirs.append(_measure(meter, lambda: _direct(upstream_url, concurrency, n)))
            _row(concurrency, n, ours, theirs)
        queue.close()
    finally:
        for service in reversed(started):
            service.stop()
    return 0


def _row(concurrency: int, n: int, ours: list, theirs: list) -> None:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    eps, direct_eps = med([n / s for s, _ in ours]), med([n / s for s, _ in theirs])
    ms = lambda runs, key: med([cpu[key] for _, cpu in runs]) * 1000 / n  # noqa: E731
    proxy, redis, runner, agents = ms(ours, "proxy"), ms(ours, "redis"), ms(ours, "self"), ms(theirs, "self")
    print(f"{concurrency:>5} {eps:>15.1f} {direct_eps:>13.1f} {eps / direct_eps:>6.2f} {proxy:>7.2f} {redis:>6.2f} "
          f"{runner:>14.2f} {agents:>14.2f} {proxy + redis + runner - agents:>14.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
