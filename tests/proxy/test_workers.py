"""`seamless proxy --workers 2` against real vLLM: an admin call on one worker reaches both."""

import threading

import httpx
import openai
import pytest

from seamless.config import ProxyConfig
from seamless.proxy.server import ProxyProcess
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _health(proxy) -> dict:
    # a new connection per request, so requests land on either worker
    return httpx.get(f"{proxy.url}/health", timeout=30,
                     headers={"Connection": "close", "Authorization": f"Bearer {proxy.admin_key}"}).json()


def test_two_workers_share_sessions_the_pause_gate_and_the_weight_version(tmp_path, redis_server, vllm_server):
    with ProxyProcess(redis_server.url, tmp_path / "proxy", upstreams=[vllm_server.url], prefix="workers",
                      config=ProxyConfig(workers=2, health_interval_s=0.5)) as proxy:
        assert len({_health(proxy)["worker"] for _ in range(60)}) == 2
        admin = Admin(proxy)
        sessions = [admin.session() for _ in range(8)]
        assert admin.post("/admin/pause", {}).status_code == 200
        assert all(_health(proxy)["paused"] for _ in range(20))

        replies: dict[str, str] = {}

        def call(session: dict) -> None:
            with httpx.Client(headers={"Connection": "close"}) as http:
                client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0,
                                       http_client=http)
                reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=4)
                replies[session["session_id"]] = reply.choices[0].finish_reason

        threads = [threading.Thread(target=call, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        threads[-1].join(timeout=1.5)
        assert not replies, "a call got through the pause gate"

        response = admin.post("/admin/resume", {"weight_version": 7})
        assert response.status_code == 200, response.text
        # resume returns only after every worker applied the version
        assert {_health(proxy)["weight_version"] for _ in range(20)} == {7}
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(replies) == sorted(s["session_id"] for s in sessions)
        for session in sessions:
            (turn,) = admin.trajectory(session["session_id"])["turns"]
            assert set(turn["weight_versions"]) == {7}

        # an upstream removed through one worker is gone from both
        assert admin.delete("/admin/upstreams", {"url": vllm_server.url}).status_code == 200
        assert {_health(proxy)["upstreams"] for _ in range(20)} == {0}
