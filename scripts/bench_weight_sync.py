"""Weight-sync time against model size, beside the raw bound measured in the same run.

For each model size: one vLLM server (a Ray actor) behind a proxy, then `fleet.publish`
from an in-memory state dict (written as safetensors, reloaded by the server). The raw bound
is copying the same bytes to the same place (write) plus reading them back (what a reload
must at least do). Disk path on CPU; prints a table.

    python scripts/bench_weight_sync.py [--sizes 128x2,256x4,512x8] [--dir run|shm] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file


def raw_bound(folder: Path) -> tuple[float, float]:
    """Seconds to copy the staged files beside themselves, and to read them back."""
    files = sorted(folder.glob("*.safetensors"))
    started = time.perf_counter()
    # into the page cache, like safetensors' own write (neither fsyncs)
    copies = [shutil.copyfile(f, f.with_suffix(".copy")) for f in files]
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    for copy in copies:
        Path(copy).read_bytes()
    read_s = time.perf_counter() - started
    for copy in copies:
        Path(copy).unlink()
    return write_s, read_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x2,256x4,512x6", help="hidden x layers, comma-separated")
    parser.add_argument("--dir", choices=["run", "shm"], default="run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from seamless.config import RolloutConfig, TinyModelConfig
    from seamless.models.tiny import build_tiny_model
    from seamless.proxy.server import ProxyProcess
    from seamless.cluster.ray_cluster import start_ray, stop_ray
    from seamless.rollout import ProxyAdmin, VLLMFleet
    from seamless.services.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-wsync-"))
    start_ray(num_gpus=1, num_cpus=1)
    rows = []
    try:
        with RedisServer(work / "redis") as redis, ProxyProcess(redis.url, work / "proxy", prefix="bench") as proxy:
            for size in args.sizes.split(","):
                hidden, layers = map(int, size.split("x"))
                spec = dict(hidden_size=hidden, num_layers=layers, intermediate_size=hidden * 2)
                base = build_tiny_model(work / f"m{size}", TinyModelConfig(**spec))
                other = load_file(str(build_tiny_model(work / f"m{size}-b", TinyModelConfig(seed=1, **spec))
                                      / "model.safetensors"))
                config = RolloutConfig(weight_dir=args.dir)
                fleet = VLLMFleet(base, work / f"run{size}", ProxyAdmin(proxy.url, proxy.admin_key), config)
                fleet.add_server(None, resource_id=0)
                try:
                    for _ in range(args.repeats):
                        m = fleet.publish(other)
                        write_s, read_s = raw_bound(fleet.transport.folder(m.version))
                        rows.append((size, m, write_s, read_s))
                finally:
                    fleet.shutdown()
    finally:
        stop_ray()
        shutil.rmtree(work, ignore_errors=True)
    _print(rows)


def _print(rows) -> None:
    head = (f"{'model':>8} {'MB':>7} {'stage s':>8} {'pause s':>8} {'load s':>8} {'resume s':>8} "
            f"{'paused s':>8} {'MB/s':>7} | {'raw write s':>11} {'raw read s':>10} {'raw MB/s':>8}")
    print(head)
    print("-" * len(head))
    for size, m, write_s, read_s in rows:
        mb = m.bytes / 1e6
        raw = mb / (write_s + read_s) if write_s + read_s > 0 else 0.0
        print(f"{size:>8} {mb:7.2f} {m.stage_s:8.4f} {m.pause_s:8.4f} {m.transfer_s:8.4f} {m.resume_s:8.4f} "
              f"{m.paused_s:8.4f} {m.bytes_per_s / 1e6:7.1f} | {write_s:11.4f} {read_s:10.4f} {raw:8.1f}")


if __name__ == "__main__":
    main()
