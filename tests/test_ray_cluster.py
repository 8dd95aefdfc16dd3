import os

import psutil
import pytest
import ray

from seamless.cluster.ray_cluster import check_token_auth
from seamless.errors import ConfigError


# an actor with num_gpus holds a whole CPU unless told otherwise; 2 CPUs would fit only 2 actors
@ray.remote(num_gpus=1, num_cpus=0)
class _GpuHolder:
    def visible_devices(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_logical_gpus_are_handed_out_one_per_actor(ray_cluster):
    holders = [_GpuHolder.remote() for _ in range(4)]
    devices = ray.get([h.visible_devices.remote() for h in holders])
    assert sorted(devices) == ["0", "1", "2", "3"]
    for holder in holders:
        ray.kill(holder)


def test_local_ray_listens_only_on_loopback(ray_cluster):
    listening = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ray" not in cmdline and not (process.info["name"] or "").startswith(("raylet", "gcs_server")):
            continue
        try:
            listening += [c.laddr.ip for c in process.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert listening, "found no Ray process listening at all"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening


def test_joining_a_cluster_beyond_loopback_needs_rays_token_auth():
    for local in ("127.0.0.1:6379", "127.0.0.3:6379", "[::1]:6379", "localhost:6379"):
        check_token_auth(local, token_mode=False)  # a cluster on this machine only
    check_token_auth("10.0.0.1:6379", token_mode=True)
    for remote in ("10.0.0.1:6379", "[fd00::1]:6379", "head.example.org:6379"):
        with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token"):
            check_token_auth(remote, token_mode=False)
