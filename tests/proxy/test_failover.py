import os
import signal

import openai
import pytest

from seamless.config import ProxyConfig
from seamless.proxy.server import ProxyProcess
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_killing_one_of_two_upstreams_mid_run_moves_its_sessions_to_the_other(
        tmp_path, redis_server, vllm_server, tiny_model_dir):
    second = VLLMServer(tiny_model_dir, tmp_path / "vllm-b", VLLMServerOptions(served_model_name="tiny"))
    second.start()
    try:
        with ProxyProcess(redis_server.url, tmp_path / "proxy", upstreams=[vllm_server.url, second.url],
                          prefix="failover", config=ProxyConfig(health_interval_s=0.5)) as proxy:
            admin = Admin(proxy)
            sessions = [admin.session() for _ in range(6)]
            clients = [openai.OpenAI(base_url=s["base_url"], api_key=s["api_key"], max_retries=0) for s in sessions]
            for client in clients:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            used = {admin.trajectory(s["session_id"])["turns"][0]["upstream"] for s in sessions}
            assert used == {vllm_server.url, second.url}  # new sessions spread over both servers

            os.killpg(second.pid, signal.SIGKILL)  # the server dies, no goodbye
            for client in clients:
                for _ in range(2):
                    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "again"}],
                                                           max_tokens=2)
                    assert reply.choices[0].finish_reason in ("length", "stop")
            for session in sessions:
                turns = admin.trajectory(session["session_id"])["turns"]
                assert len(turns) == 3
                assert all(t["upstream"] == vllm_server.url for t in turns[1:])
            upstreams = {u["url"]: u for u in admin.get("/admin/upstreams").json()["upstreams"]}
            assert upstreams[second.url]["healthy"] is False
            assert upstreams[vllm_server.url]["healthy"] is True
    finally:
        second.stop()
