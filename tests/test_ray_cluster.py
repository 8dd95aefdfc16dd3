import os

import psutil
import ray


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
