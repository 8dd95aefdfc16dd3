"""Several Ray nodes on one machine (seamless.cluster.local_nodes): each node on its own loopback
address stands for a machine of a real cluster. Placement follows the labels and custom resources
of cluster.resources across nodes, and a rollout server on another node binds that node's address,
requires its key, and is registered with the proxy under the URL Ray reports for that node. Ray's own
sockets beyond loopback answer nothing without the cluster's token."""

from __future__ import annotations

import httpx
import openai
import psutil
import pytest
import ray

from seamless.cluster.local_nodes import LocalNodes
from seamless.config import ClusterConfig, ProxyConfig, RolloutConfig
from seamless.errors import ConfigError
from seamless.proxy.server import ProxyProcess
from seamless.rollout import ProxyAdmin, VLLMFleet
from seamless.scheduler.placement import RayPlacement
from seamless.scheduler.resources import ResourcePool
from seamless.services.network import SERVER_KEY_ENV
from seamless.cluster.exposure import answers_without_a_key, listening_beyond_loopback

pytestmark = pytest.mark.slow

GPU_LABEL = "seamless.io/gpu"
KEY = "several-nodes-test-key-0123"


@ray.remote(num_cpus=0)
def _where() -> str:
    return ray.util.get_node_ip_address()


@pytest.fixture(scope="module")
def nodes():
    """Head 127.0.0.1 (no GPU), a trainer node 127.0.0.2 (one H100) and a rollout node 127.0.0.3
    (two L4, also offered as the custom resource gpu-L4)."""
    from seamless.cluster.ray_cluster import start_ray, stop_ray

    had_local_ray = ray.is_initialized()  # the session's one-node Ray (ray_cluster fixture)
    stop_ray()
    cluster = LocalNodes(head_cpus=1)
    try:
        trainer_node = cluster.add(gpus=1, labels={GPU_LABEL: "H100"})
        rollout_node = cluster.add(gpus=2, labels={GPU_LABEL: "L4"}, resources={"gpu-L4": 2})
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, trainer_node, rollout_node
    finally:
        cluster.shutdown()
        if had_local_ray:
            start_ray(num_gpus=4, num_cpus=2)


def _pool(*groups: dict) -> ResourcePool:
    return ResourcePool.from_cluster(ClusterConfig(address="auto", policy="disaggregated", resources=list(groups)))


def test_placement_by_tag_follows_labels_and_resources_across_nodes(nodes):
    _, trainer_node, rollout_node = nodes
    pool = _pool({"count": 1, "tags": ["train"], "node_labels": {GPU_LABEL: "H100"}},
                 {"count": 1, "tags": ["rollout"], "node_labels": {GPU_LABEL: "L4"}},
                 {"count": 1, "tags": ["rollout"], "ray_resources": {"gpu-L4": 1}})
    placement = RayPlacement("by-tag", timeout_s=20)
    try:
        devices = placement.reserve(pool)
        assert [devices.node_of(r) for r in range(3)] == [trainer_node.node_id] + [rollout_node.node_id] * 2
        # what runs in a slot runs on that node, and sees that node's address
        where = [ray.get(_where.options(**devices.slot(r).actor_options()).remote()) for r in range(3)]
        assert where == ["127.0.0.2", "127.0.0.3", "127.0.0.3"]
    finally:
        placement.close()


def test_placement_that_no_node_offers_fails_naming_the_keys(nodes):
    too_many = _pool({"count": 3, "tags": ["rollout"], "ray_resources": {"gpu-L4": 1}})
    with pytest.raises(ConfigError, match="ray_resources"):
        RayPlacement("short").reserve(too_many)
    no_such_kind = _pool({"count": 1, "tags": ["rollout"], "node_labels": {GPU_LABEL: "A100"}})
    placement = RayPlacement("no-kind", timeout_s=1)
    with pytest.raises(ConfigError, match=f"{GPU_LABEL}=A100"):
        placement.reserve(no_such_kind)
    placement.close()


def test_rays_sockets_beyond_loopback_answer_nothing_without_the_token(nodes):
    _, _, rollout_node = nodes
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(rollout_node.node_id, soft=False)
    worker = _Resident.options(scheduling_strategy=strategy).remote()  # a worker process on that node
    try:
        assert ray.get(worker.where.remote()) == "127.0.0.3"
        exposed = listening_beyond_loopback(host_for_any="127.0.0.3")
        names = " | ".join(name for _, name in exposed)
        assert "raylet" in names and "_Resident" in names, exposed
        assert {target: answers_without_a_key(target) for target, _ in exposed} == {t: None for t, _ in exposed}
    finally:
        ray.kill(worker)


@ray.remote(num_cpus=0)
class _Resident:
    def where(self) -> str:
        return ray.util.get_node_ip_address()


@pytest.mark.vllm
def test_server_on_another_node_binds_and_registers_that_nodes_address(nodes, redis_server, tiny_model_dir,
                                                                       tmp_path, monkeypatch):
    """Also: the server and a proxy bound beyond loopback answer nothing without their keys."""
    monkeypatch.setenv(SERVER_KEY_ENV, KEY)  # what a run with cluster.bind: node sets (or generates)
    pool = _pool({"count": 1, "tags": ["rollout"], "node_labels": {GPU_LABEL: "L4"}})
    placement = RayPlacement("server-on-node", timeout_s=20)
    config = ProxyConfig(host="127.0.0.2", health_interval_s=0.5)  # 127.0.0.2 stands for a node address
    with ProxyProcess(redis_server.url, tmp_path / "proxy", prefix="nodes", config=config) as proxy:
        fleet = VLLMFleet(tiny_model_dir, tmp_path / "run", ProxyAdmin(proxy.url, proxy.admin_key),
                          RolloutConfig(), devices=placement.reserve(pool), bind="node")
        try:
            url = fleet.add_server(None, resource_id=0)
            assert url.startswith("http://127.0.0.3:"), url
            _answers_nothing_without_the_key(url, proxy.url)
            admin = {"Authorization": f"Bearer {proxy.admin_key}"}
            registered = httpx.get(f"{proxy.url}/admin/upstreams", headers=admin, timeout=30).json()
            assert url in str(registered) and KEY not in str(registered)
            session = httpx.post(f"{proxy.url}/sessions", json={}, headers=admin, timeout=30).json()
            client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
            reply = client.chat.completions.create(model=fleet.options.served_model_name, max_tokens=4,
                                                   messages=[{"role": "user", "content": "1+1="}])
            assert reply.choices[0].message.content is not None  # the proxy sent the servers' key
            # keys travel in environments: other users of a machine can read every command line
            assert KEY not in " ".join(psutil.Process(fleet._servers[0].pid).cmdline())
            assert proxy.admin_key not in " ".join(psutil.Process(proxy.pid).cmdline())
        finally:
            fleet.shutdown()
            placement.close()


def _answers_nothing_without_the_key(server: str, proxy: str) -> None:
    routes = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/pause"),
              ("POST", "/resume"), ("POST", "/collective_rpc"), ("GET", "/is_paused"),
              ("POST", "/reset_prefix_cache"), ("POST", "/inference/v1/generate"), ("POST", "/tokenize"),
              ("POST", "/v1/chat/completions")]
    for method, path in routes:
        bare = httpx.request(method, server + path, timeout=30)
        wrong = httpx.request(method, server + path, timeout=30, headers={"Authorization": "Bearer no"})
        assert (bare.status_code, wrong.status_code) == (401, 401), (path, bare.text)
    keyed = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(server + "/is_paused", headers=keyed, timeout=30).status_code == 200
    for method, path in [("GET", "/admin/upstreams"), ("POST", "/sessions"), ("GET", "/metrics"),
                         ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/admin/pause")]:
        assert httpx.request(method, proxy + path, timeout=30).status_code == 401, path
    assert set(httpx.get(proxy + "/health", timeout=30).json()) == {"status"}  # the status, nothing more
