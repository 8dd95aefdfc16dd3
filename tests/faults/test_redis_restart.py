"""Redis killed (SIGKILL) and restarted on the same address under a running proxy: the proxy says
it is unhealthy while Redis is away, and afterwards every admin route works again and a rollout
server that came back meanwhile is re-admitted by the health checks."""

from __future__ import annotations

import os
import signal
import time

import openai
import pytest

from seamless.proxy.server import ProxyProcess
from seamless.services.redis_server import RedisServer
from tests.faults.helpers import TcpRelay, health, wait_for
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _call(session: dict) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0, timeout=60)
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_a_redis_restart_leaves_control_routes_health_checks_and_readmission_working(tmp_path, vllm_server):
    redis_server = RedisServer(tmp_path / "redis").start()  # the test's own: it gets killed
    relay = TcpRelay(vllm_server.url).start()  # the rollout server, behind a link this test cuts
    try:
        with ProxyProcess(redis_server.url, tmp_path / "proxy", upstreams=[relay.url], prefix="fault",
                          extra_args=["--health-interval", "0.2"]) as proxy:
            admin = Admin(proxy)
            before = admin.session()
            _call(before)

            os.kill(redis_server.pid, signal.SIGKILL)
            redis_server.stop()  # reaps it
            killed = time.monotonic()
            wait_for(lambda: health(proxy).status_code == 503, 10, "/health says unhealthy while Redis is away")
            assert health(proxy, admin=False).json() == {"status": "unhealthy"}  # no details without the key
            relay.stop()  # the rollout server goes away too, and comes back while Redis is still down
            wait_for(lambda: not admin.get("/admin/upstreams").json()["upstreams"][0]["healthy"], 10,
                     "the health checks notice the server is gone")
            relay.start()
            wait_for(lambda: admin.get("/admin/upstreams").json()["upstreams"][0]["healthy"], 10,
                     "the health checks re-admit the server that came back")

            redis_server.start()
            recovered = wait_for(lambda: health(proxy).status_code == 200, 30, "/health is ok after Redis is back")
            print(f"recovered {recovered:.2f} s after Redis restarted ({time.monotonic() - killed:.1f} s after the kill)")
            body = health(proxy).json()
            assert body["status"] == "ok" and body["control"] and body["store"], body

            started = time.monotonic()
            assert admin.post("/admin/pause", {"mode": "keep"}, timeout=10).status_code == 200
            assert admin.post("/admin/resume", {"weight_version": 3}, timeout=10).json()["weight_version"] == 3
            assert time.monotonic() - started < 5  # every worker acknowledged at once, no 15 s timeout
            added = admin.post("/admin/upstreams", {"url": vllm_server.url}, timeout=30)
            assert added.status_code == 201, added.text

            after = admin.session()
            _call(after)
            turns = admin.trajectory(after["session_id"])["turns"]
            assert len(turns) == 1 and set(turns[0]["weight_versions"]) == {3}
            # the session made before the kill is still there (Redis persisted it)
            assert len(admin.trajectory(before["session_id"])["turns"]) == 1
    finally:
        relay.close()
        redis_server.stop()


def test_agent_runs_ride_out_a_redis_restart(own_redis, vllm_server, tmp_path):
    import threading

    from seamless.agent.api import Sampling
    from seamless.agent.runner import AgentRunner
    from seamless.agent.tasks import Task

    with ProxyProcess(own_redis.url, tmp_path / "proxy", upstreams=[vllm_server.url], prefix="ride") as proxy:
        runner = AgentRunner(proxy.url, proxy.admin_key, "math", concurrency=2, timeout_s=60,
                             sampling=Sampling(temperature=1.0, max_tokens=4))
        os.kill(own_redis.pid, signal.SIGKILL)
        own_redis.stop()
        result: dict = {}
        thread = threading.Thread(target=lambda: result.setdefault(
            "groups", runner.run_groups_sync([Task("t", "What is 7 + 5?", "12", {})], group_size=2)))
        thread.start()
        # the runner's first admin call gets 503 (Redis is away) and waits, instead of ending the run
        wait_for(lambda: not thread.is_alive() or health(proxy).status_code == 503, 10, "the proxy is unhealthy")
        time.sleep(0.5)
        own_redis.start()
        thread.join(120)
        [group] = result["groups"]
        assert all(r.error is None and r.num_llm_calls == 1 and r.finished for r in group)
