"""Fault tests get their own Redis (it is stopped, killed and restarted) and their own proxy on
it, in front of the session's vLLM server."""

from __future__ import annotations

import pytest

from seamless.proxy.server import ProxyProcess
from seamless.services.redis_server import RedisServer


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def stall_proxy(own_redis, vllm_server, tmp_path):
    """A proxy whose records give up after 2 s, on the test's own Redis."""
    with ProxyProcess(own_redis.url, tmp_path / "proxy", upstreams=[vllm_server.url], prefix="stall",
                      extra_args=["--health-interval", "0.5", "--store-timeout", "2"]) as proxy:
        yield proxy
