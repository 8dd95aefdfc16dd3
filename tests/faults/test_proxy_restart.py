"""The proxy killed (SIGKILL) and restarted on the same Redis: it carries on with the upstreams, the
pause gate and the weight version its predecessor left, instead of serving as version 0."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import openai
import pytest

from seamless.proxy.server import ProxyProcess
from tests.faults.helpers import health, wait_for
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _call(session: dict, result: dict) -> None:
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0, timeout=120)
    result["reply"] = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=2)


def test_a_restarted_proxy_keeps_version_pause_and_upstreams(own_redis, vllm_server, tmp_path):
    proxy = ProxyProcess(own_redis.url, tmp_path / "proxy", prefix="restart").start()
    try:
        admin = Admin(proxy)
        assert admin.post("/admin/upstreams", {"url": vllm_server.url}).status_code == 201
        assert admin.post("/admin/resume", {"weight_version": 5}).status_code == 200
        session = admin.session()
        _call(session, {})
        assert admin.post("/admin/pause", {"mode": "keep"}).status_code == 200  # a weight update begins

        os.kill(proxy.pid, signal.SIGKILL)  # ... and the proxy dies in it
        proxy.restart()
        body = health(proxy).json()
        assert body["paused"] is True and body["weight_version"] == 5 and body["upstreams"] == 1, body
        assert "carrying on from the previous proxy" in (tmp_path / "proxy" / "proxy.log").read_text()

        result: dict = {}
        caller = threading.Thread(target=_call, args=(session, result))
        caller.start()
        caller.join(1.0)
        assert caller.is_alive()  # held at the gate: no token of the old weights under a new number
        assert admin.post("/admin/resume", {"weight_version": 6}).status_code == 200
        caller.join(120)
        assert "reply" in result
        turns = admin.trajectory(session["session_id"])["turns"]
        assert [set(t["weight_versions"]) for t in turns] == [{5}, {6}]  # the session lived on too
    finally:
        proxy.stop()
        httpx.post(f"{vllm_server.url}/resume", timeout=30)  # the shared server never stays paused

    # a new run's proxy (`--fresh`, what ProxyProcess starts with) forgets the pool and the gate; the
    # version stays (a run publishes above it: no version names two sets of weights)
    with ProxyProcess(own_redis.url, tmp_path / "fresh", prefix="restart") as fresh:
        body = health(fresh).json()
        assert body["paused"] is False and body["weight_version"] == 6 and body["upstreams"] == 0, body


def test_calls_a_killed_proxy_recorded_but_never_delivered_are_voided_on_restart(own_redis, vllm_server, tmp_path):
    """A proxy killed between a call's record and the end of its answer: the restarted proxy voids
    that call (the agent never got it), and keeps the calls it did deliver. The kill inside that
    window is arranged by recording the call the way the proxy does, into the dead worker's hash."""
    import asyncio

    import redis

    from seamless.traces.keys import Keys
    from seamless.traces.store import TraceStore

    with ProxyProcess(own_redis.url, tmp_path / "proxy", upstreams=[vllm_server.url], prefix="doubt") as proxy:
        admin = Admin(proxy)
        session = admin.session()
        _call(session, {})  # delivered: leaves the worker's in-doubt hash
        keys = Keys("doubt").proxy
        with redis.Redis.from_url(own_redis.url) as client:
            [alive] = [k.decode() for k in client.scan_iter(match=keys.alive_prefix + "*")]  # the one worker
            in_doubt = keys.in_doubt(alive.removeprefix(keys.alive_prefix))
            wait_for(lambda: client.hlen(in_doubt) == 0, 10, "the delivered call left the in-doubt hash")
        [turn] = admin.trajectory(session["session_id"])["turns"]

        async def record_undelivered() -> None:
            store = TraceStore(own_redis.url, "doubt")
            from seamless.types import Turn
            recorded = Turn(session["session_id"], 1, turn["prompt_token_ids"], [5, 6], [-0.1, -0.2], [0, 0])
            await store.append_call(session["session_id"], "undelivered", [recorded], {"messages": []}, in_doubt)
            await store.close()

        asyncio.run(record_undelivered())
        assert len(admin.trajectory(session["session_id"])["turns"]) == 2  # in the trace, never sent
        os.kill(proxy.pid, signal.SIGKILL)
        proxy.restart()
        turns = admin.trajectory(session["session_id"])["turns"]
        assert [t["completion_token_ids"] for t in turns] == [turn["completion_token_ids"]]
        assert "voided 1 call(s)" in (tmp_path / "proxy" / "proxy.log").read_text()
