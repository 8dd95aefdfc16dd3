"""Nothing listens beyond loopback without a key. Each service here binds 127.0.0.2, which stands
for a node's address (a non-loopback bind in the code's eyes would be the same code path; all
traffic stays on this machine): without its key it refuses to start, and once started it refuses
every request that lacks the key."""

from __future__ import annotations

import httpx
import openai
import pytest
import redis

from seamless.config import ProxyConfig
from seamless.errors import ServiceError
from seamless.proxy.server import ProxyProcess
from seamless.services.network import SERVER_KEY_ENV, is_loopback, redacted, store_url_problem
from seamless.services.redis_server import RedisServer
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

NODE_ADDRESS = "127.0.0.2"
KEY = "test-server-key-0123456789"


def test_what_counts_as_beyond_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("127.0.0.2")  # stands for a node's address in tests of several nodes
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("head-node")
    assert store_url_problem("redis://10.0.0.5:6379/0") is not None
    assert store_url_problem("redis://:pw@10.0.0.5:6379/0") is None
    assert store_url_problem("redis://127.0.0.1:6379/0") is None
    assert redacted("redis://:secret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"


def test_services_beyond_loopback_refuse_to_start_without_a_key(tmp_path, tiny_model_dir):
    # 10.255.255.1 is never bound: the refusal comes before anything listens
    with pytest.raises(ServiceError, match="without a key"):
        RedisServer(tmp_path / "redis", host="10.255.255.1").start()
    with pytest.raises(ServiceError, match=SERVER_KEY_ENV):
        VLLMServer(tiny_model_dir, tmp_path / "vllm", VLLMServerOptions(host="10.255.255.1"), port=1).start()


def test_redis_on_a_node_address_needs_its_password(tmp_path):
    with RedisServer(tmp_path / "redis", persist=False, host=NODE_ADDRESS, password=KEY) as server:
        assert server.url.startswith(f"redis://:{KEY}@{NODE_ADDRESS}:")
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        with redis.Redis(host=NODE_ADDRESS, port=int(port)) as anonymous:
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
        with redis.Redis(host=NODE_ADDRESS, port=int(port), password="wrong") as wrong:
            with pytest.raises(redis.AuthenticationError):
                wrong.ping()
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        assert KEY not in " ".join(__import__("psutil").Process(server.pid).cmdline())


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, tmp_path_factory):
    options = VLLMServerOptions(served_model_name="tiny", host=NODE_ADDRESS, api_key=KEY)
    with VLLMServer(tiny_model_dir, tmp_path_factory.mktemp("keyed-vllm"), options) as server:
        yield server


@pytest.mark.vllm
def test_vllm_on_a_node_address_answers_no_route_without_its_key(keyed_server):
    assert keyed_server.url.startswith(f"http://{NODE_ADDRESS}:")
    routes = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/pause"),
              ("POST", "/resume"), ("POST", "/collective_rpc"), ("GET", "/is_paused"),
              ("POST", "/reset_prefix_cache"), ("POST", "/inference/v1/generate"), ("POST", "/tokenize")]
    for method, path in routes:
        bare = httpx.request(method, keyed_server.url + path, timeout=30)
        wrong = httpx.request(method, keyed_server.url + path, timeout=30, headers={"Authorization": "Bearer no"})
        assert (bare.status_code, wrong.status_code) == (401, 401), (path, bare.text)
    keyed = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(keyed_server.url + "/v1/models", headers=keyed, timeout=30).status_code == 200
    assert httpx.get(keyed_server.url + "/is_paused", headers=keyed, timeout=30).status_code == 200
    assert KEY not in " ".join(__import__("psutil").Process(keyed_server.pid).cmdline())


@pytest.mark.vllm
def test_proxy_on_a_node_address_needs_keys_and_sends_the_servers_key(keyed_server, redis_server, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)  # what a run sets for its servers; the proxy inherits it
    config = ProxyConfig(host=NODE_ADDRESS, health_interval_s=0.5)
    with ProxyProcess(redis_server.url, tmp_path / "proxy", upstreams=[keyed_server.url], prefix="bind",
                      config=config) as proxy:
        assert proxy.url.startswith(f"http://{NODE_ADDRESS}:")
        for method, path in [("GET", "/admin/upstreams"), ("POST", "/sessions"), ("GET", "/metrics"),
                             ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/admin/pause")]:
            assert httpx.request(method, proxy.url + path, timeout=30).status_code == 401, path
        assert set(httpx.get(proxy.url + "/health", timeout=30).json()) == {"status"}  # status only
        admin = {"Authorization": f"Bearer {proxy.admin_key}"}
        session = httpx.post(proxy.url + "/sessions", json={}, headers=admin, timeout=30).json()
        client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "1+1="}],
                                               max_tokens=4)
        assert reply.choices[0].message.content is not None  # reached the keyed server through the proxy
        upstreams = httpx.get(proxy.url + "/admin/upstreams", headers=admin, timeout=30).json()
        assert KEY not in str(upstreams)
