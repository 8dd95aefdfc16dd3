"""Nothing listens beyond loopback without a key. Each service here binds 127.0.0.2, which stands
for a node's address (a non-loopback bind in the code's eyes would be the same code path; all
traffic stays on this machine): without its key it refuses to start, and once started it refuses
every request that lacks the key."""

from __future__ import annotations

import pytest
import redis

from seamless.errors import ServiceError
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


def test_services_beyond_loopback_refuse_to_start_without_a_key(tmp_path):
    # 10.255.255.1 is never bound: the refusal comes before anything listens
    with pytest.raises(ServiceError, match="without a key"):
        RedisServer(tmp_path / "redis", host="10.255.255.1").start()
    with pytest.raises(ServiceError, match=SERVER_KEY_ENV):
        VLLMServer(tmp_path, tmp_path / "vllm", VLLMServerOptions(host="10.255.255.1"), port=1).start()


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


# vLLM and the proxy on a node address, keyed: tests/test_several_nodes.py (one server, on a second Ray node)


def test_a_recipe_whose_store_reaches_another_host_without_a_password_fails_at_check():
    from seamless.config import load_recipe
    from seamless.errors import ConfigError
    from seamless.run.parts import check_recipe

    with pytest.raises(ConfigError, match=r"store.url redis://10.0.0.5:6379/0: .*password"):
        check_recipe(load_recipe(None, ["store.url=redis://10.0.0.5:6379/0"]), files=False)
    check_recipe(load_recipe(None, ["store.url=redis://:pw@10.0.0.5:6379/0"]), files=False)


def test_a_run_bound_beyond_loopback_makes_its_servers_a_key_for_its_lifetime(monkeypatch):
    import os

    from seamless.run.parts import _server_key

    monkeypatch.delenv(SERVER_KEY_ENV, raising=False)
    with _server_key("127.0.0.1"):
        assert SERVER_KEY_ENV not in os.environ  # loopback: no key needed
    with _server_key("node"):
        made = os.environ[SERVER_KEY_ENV]
        assert len(made) >= 32
    assert SERVER_KEY_ENV not in os.environ
    monkeypatch.setenv(SERVER_KEY_ENV, "given")
    with _server_key("node"):
        assert os.environ[SERVER_KEY_ENV] == "given"  # the user's key wins
    assert os.environ[SERVER_KEY_ENV] == "given"
