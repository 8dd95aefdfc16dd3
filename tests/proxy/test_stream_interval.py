"""proxy.stream_interval: vLLM streams the proxy N tokens a chunk, and the proxy records the same
turn, token for token, as with one token a chunk."""

import httpx
import pytest

from seamless.config import ProxyConfig
from seamless.proxy.recording import upstream_body
from seamless.proxy.server import ProxyProcess
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm]

MAX_TOKENS = 24


def test_upstream_body_asks_for_the_interval_and_keeps_a_coarser_one_the_agent_gave():
    body = {"messages": [], "max_tokens": 3}
    assert "stream_interval" not in upstream_body("chat", body, "m")
    assert upstream_body("chat", body, "m", stream_interval=8)["stream_interval"] == 8
    assert upstream_body("chat", {**body, "stream_interval": 32}, "m", stream_interval=8)["stream_interval"] == 32


@pytest.fixture(scope="module")
def coarse_proxy(redis_server, vllm_server, tmp_path_factory):
    with ProxyProcess(redis_server.url, tmp_path_factory.mktemp("coarse-proxy"), upstreams=[vllm_server.url],
                      prefix="coarse", config=ProxyConfig(stream_interval=8, health_interval_s=0.5)) as process:
        yield process


def _greedy_call(proxy, stream: bool) -> tuple[dict, int]:
    """One greedy chat call through `proxy`; its recorded turn and the chunks the agent got."""
    admin = Admin(proxy)
    session = admin.session()
    body = {"model": "m", "messages": [{"role": "user", "content": "count with me: 1 2 3"}],
            "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": stream}
    headers = {"Authorization": f"Bearer {session['api_key']}"}
    with httpx.stream("POST", session["base_url"] + "/chat/completions", json=body, headers=headers,
                      timeout=120) as response:
        assert response.status_code == 200
        chunks = sum(line.startswith("data: {") for line in response.iter_lines())
    [turn] = admin.trajectory(session["session_id"])["turns"]
    return turn, chunks


@pytest.mark.parametrize("stream", [False, True])
def test_a_coarse_stream_records_the_same_turn(proxy, coarse_proxy, stream):
    fine, fine_chunks = _greedy_call(proxy, stream)
    coarse, coarse_chunks = _greedy_call(coarse_proxy, stream)
    generated = len(fine["completion_token_ids"])
    assert generated > 8, "the test needs an answer longer than one interval"
    assert coarse["completion_token_ids"] == fine["completion_token_ids"]
    assert coarse["logprobs"] == pytest.approx(fine["logprobs"], abs=1e-4)
    assert coarse["weight_versions"] == fine["weight_versions"] and len(coarse["weight_versions"]) == generated
    if stream:  # the agent's stream is as coarse as the proxy's: the first token, then 8 at a time
        assert coarse_chunks < fine_chunks
