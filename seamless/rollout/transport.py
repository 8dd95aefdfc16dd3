"""How new weights reach the servers: safetensors files reloaded from disk, or an NCCL broadcast.

Both split an update the same way: `stage` (before the pause, rollout keeps running) and `load`
(while paused, every server at once). The weight publisher times the two separately.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx

from seamless.rollout.server_http import post_each
from seamless.services.network import server_headers
from seamless.rollout.weights import WeightSource, safetensors_files, write_buckets



class WeightTransport(Protocol):
    name: str

    def stage(self, source: WeightSource, version: int) -> int:
        """Make `version` ready to load; returns its size in bytes."""

    def load(self, urls: Sequence[str], version: int) -> None:
        """Load the staged `version` into these (paused) servers."""

    def server_args(self) -> list[str]:
        """Extra vLLM arguments a server needs for this transport."""


class DiskTransport:
    """Safetensors in a folder (the run folder, or /dev/shm), reloaded with /collective_rpc.

    A folder source (e.g. Trainer.export_hf output) is reloaded where it is: no copy. Anything
    else is written once per version; older versions this transport wrote are deleted.
    """

    name = "disk"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._staged: dict[int, Path] = {}
        self._owned: set[Path] = set()

    def stage(self, source: WeightSource, version: int) -> int:
        if isinstance(source, (str, Path)):
            folder = Path(source).resolve()
            size = sum(f.stat().st_size for f in safetensors_files(folder))
        else:
            folder = self.root / f"v{version}"
            shutil.rmtree(folder, ignore_errors=True)
            size = write_buckets(source, folder)
            self._owned.add(folder)
        self._forget_older_than(version)
        self._staged[version] = folder
        return size

    def folder(self, version: int) -> Path:
        if version not in self._staged:
            raise KeyError(f"weights version {version} was never staged; publish weights through "
                           "the fleet's publisher (fleet.publish) first")
        return self._staged[version]

    def load(self, urls: Sequence[str], version: int) -> None:
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(self.folder(version))}}
        post_each(urls, "/collective_rpc", json=body)

    def server_args(self) -> list[str]:
        return []

    def _forget_older_than(self, version: int) -> None:
        # keep the version servers run now (restarts reload it) until the new one is staged
        for old in [v for v in self._staged if v < version]:
            for folder in (self._staged.pop(old),):
                if folder in self._owned:
                    self._owned.discard(folder)
                    shutil.rmtree(folder, ignore_errors=True)


class NcclTransport:
    """NCCL broadcast through vLLM's native weight-transfer routes (GPUs only).

    This process is the sender (NCCL rank 0); each server's workers join at its rank offset.
    Run it where the full weights are on a GPU: the trainer's rank 0, or a driver holding a GPU.
    Written against vllm.distributed.weight_transfer (0.32); tested only where a GPU is lent.
    """

    name = "nccl"

    def __init__(self, master_address: str = "127.0.0.1", master_port: int | None = None,
                 packed: bool = True, timeout_s: float = 600.0):
        from seamless.services.process import free_port

        self.master_address = master_address
        self.master_port = master_port or free_port()
        self.packed = packed
        self.timeout_s = timeout_s
        self._params: list[tuple[str, Any]] = []
        self._engine: Any = None
        self._urls: tuple[str, ...] = ()

    def server_args(self) -> list[str]:
        return ["--weight-transfer-config", '{"backend": "nccl"}']

    def stage(self, source: WeightSource, version: int) -> int:
        import torch

        from seamless.rollout.weights import buckets

        # (name, tensor on this process's GPU): what the broadcast sends, in a fixed order
        self._params = [(name, t.detach().to("cuda", non_blocking=True).contiguous())
                        for bucket in buckets(source) for name, t in bucket]
        torch.cuda.synchronize()
        return sum(t.numel() * t.element_size() for _, t in self._params)

    def load(self, urls: Sequence[str], version: int) -> None:
        if tuple(urls) != self._urls:
            self._connect(urls)
        self._engine.send_weights()

    def _connect(self, urls: Sequence[str]) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import (NCCLTrainerInitInfo,
                                                                  NCCLTrainerWeightTransferEngine)

        if self._engine is not None:
            self._engine.shutdown()
            post_each(self._urls, "/shutdown_weight_transfer_engine")
        sizes = [r.json()["world_size"] for r in
                 (httpx.get(f"{u}/get_world_size", params={"include_dp": "false"}, timeout=30, headers=server_headers())
                  for u in urls)]
        client = _FanoutClient(list(urls), sizes, self.timeout_s)
        info = NCCLTrainerInitInfo(master_address=self.master_address, master_port=self.master_port,
                                   world_size=1 + sum(sizes), packed=self.packed, rank=0)
        self._engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=client, source=_Params(self))
        self._urls = tuple(urls)


class _Params:
    """vLLM's WeightSource over the staged (name, GPU tensor) list."""

    def __init__(self, transport: NcclTransport):
        self._transport = transport

    def metadata(self) -> list[Any]:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self._transport._params]

    def __iter__(self):
        return iter(self._transport._params)

    def held_names(self) -> None:
        return None


class _FanoutClient:
    """vLLM's VLLMWeightSyncClient over several servers: each gets its own NCCL rank offset."""

    def __init__(self, urls: list[str], world_sizes: list[int], timeout_s: float):
        self.urls, self.world_sizes, self.timeout_s = urls, world_sizes, timeout_s

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        offsets = [1 + sum(self.world_sizes[:i]) for i in range(len(self.urls))]

        def one(i: int) -> None:  # each blocks in the NCCL rendezvous: all at once
            post_each([self.urls[i]], "/init_weight_transfer_engine",
                      json={"init_info": {**init_info, "rank_offset": offsets[i]}}, timeout_s=self.timeout_s)

        with ThreadPoolExecutor(len(self.urls)) as pool:
            list(pool.map(one, range(len(self.urls))))

    def start_weight_update(self) -> None:
        post_each(self.urls, "/start_weight_update", timeout_s=self.timeout_s)

    def update_weights(self, update_info: Any) -> None:
        post_each(self.urls, "/update_weights", json={"update_info": update_info}, timeout_s=self.timeout_s)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        post_each(self.urls, "/finish_weight_update", json={"weight_version": weight_version},
                  timeout_s=self.timeout_s)
