"""A rollout server that breaks off a call mid-generation: the call moves to another server, the
agent gets one whole answer, the trace holds it once, and the failover is counted."""

from __future__ import annotations

import httpx
import openai
import pytest

from seamless.proxy.server import ProxyProcess
from tests.faults.helpers import TcpRelay
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _failovers(proxy) -> int:
    text = httpx.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {proxy.admin_key}"}, timeout=10).text
    return int(float(next(l for l in text.splitlines() if l.startswith("seamless_proxy_failovers_total")).split()[-1]))


def test_a_call_cut_off_mid_generation_fails_over_and_is_counted(own_redis, vllm_server, tmp_path):
    # the same vLLM server twice: directly, and behind a link that cuts every answer after 8 KB
    relay = TcpRelay(vllm_server.url, cut_after_bytes=8192).start()
    try:
        with ProxyProcess(own_redis.url, tmp_path / "proxy", upstreams=[relay.url], prefix="midcall") as proxy:
            admin = Admin(proxy)
            session = admin.session()
            client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0, timeout=120)
            # the session's first call pins it to the relay; only then does the direct server join
            first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=2)
            assert first.choices[0].finish_reason in ("length", "stop")
            assert admin.post("/admin/upstreams", {"url": vllm_server.url}).status_code == 201
            before = _failovers(proxy)

            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go on"}],
                                                   max_tokens=200, extra_body={"ignore_eos": True}, logprobs=True)
            assert relay.cuts >= 1 and len(reply.choices[0].logprobs.content) == 200
            assert _failovers(proxy) == before + 1
            turns = admin.trajectory(session["session_id"])["turns"]
            assert len(turns) == 2 and turns[1]["upstream"] == vllm_server.url
            got = [entry.logprob for entry in reply.choices[0].logprobs.content]
            assert turns[1]["logprobs"] == pytest.approx(got, abs=1e-5)
    finally:
        relay.close()
