"""Session-wide services for the tests: one tiny model, one private Redis, one vLLM server.

They are real (a redis-server process, a vLLM server on the tiny model), started once per test
session and stopped at its end. Only tests marked `gpu` are skipped, and only where no CUDA
device exists.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# keep every cache and temp file of the libraries under test inside the session's folder
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# a test run stopped with SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the session's
# fixtures stop the Redis, vLLM and proxy processes they started instead of leaving them running
signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from seamless.services.vllm_server import cuda_available

    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the whole test session (services' logs, data, caches)."""
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def tiny_model_dir(session_dir: Path) -> Path:
    """The tiny model every test shares (default size, seed 0)."""
    from seamless.models.tiny import build_tiny_model

    return build_tiny_model(session_dir / "tiny-model")


@pytest.fixture(scope="session")
def redis_server(session_dir: Path):
    """A private redis-server for the session; tests namespace their keys."""
    from seamless.services.redis_server import RedisServer

    with RedisServer(session_dir / "redis") as server:
        yield server


@pytest.fixture
def redis_client(redis_server):
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        yield client


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, session_dir: Path):
    """One real vLLM server on the tiny model, shared by every test that needs generation."""
    from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

    options = VLLMServerOptions(served_model_name="tiny", max_model_len=1024)
    with VLLMServer(tiny_model_dir, session_dir / "vllm", options) as server:
        yield server


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with 2 CPUs and 4 logical GPUs, bound to 127.0.0.1, for the whole session."""
    from seamless.cluster.ray_cluster import start_ray, stop_ray

    start_ray(num_gpus=4, num_cpus=2)
    yield
    stop_ray()


@pytest.fixture(scope="session")
def proxy(redis_server, vllm_server, session_dir: Path):
    """The trajectory manager as its own process, in front of the session's vLLM server."""
    from seamless.config import ProxyConfig
    from seamless.proxy.server import ProxyProcess

    with ProxyProcess(redis_server.url, session_dir / "proxy", upstreams=[vllm_server.url],
                      prefix="test", config=ProxyConfig(health_interval_s=0.5)) as process:
        yield process


@pytest.fixture(scope="session")
def tool_vllm_server(tiny_model_dir: Path, session_dir: Path):
    """A vLLM server with vLLM's hermes tool-call parser (tool_choice auto/required/named), as agent
    frameworks need it; a second server, so the plain one keeps testing the no-parser path."""
    from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

    options = VLLMServerOptions(served_model_name="tiny", max_model_len=1024,
                                extra_args=["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    with VLLMServer(tiny_model_dir, session_dir / "vllm-tools", options) as server:
        yield server


@pytest.fixture(scope="session")
def tool_proxy(redis_server, tool_vllm_server, session_dir: Path):
    """The trajectory manager in front of the tool-parsing server."""
    from seamless.proxy.server import ProxyProcess

    with ProxyProcess(redis_server.url, session_dir / "tool-proxy", upstreams=[tool_vllm_server.url],
                      prefix="tools", extra_args=["--health-interval", "0.5"]) as process:
        yield process
