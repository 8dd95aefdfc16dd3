"""A trainer rank sends its policy's weights to vLLM servers itself (GPUs only).

Two ways, chosen per server by the rollout side (rollout/transport.py, `PushPlan`):

- **CUDA IPC** to the server on this rank's own GPU (a [train, rollout] resource): the rank hands
  over handles to its parameters' device memory, bucket by bucket, and vLLM copies from them into
  its own weights. Nothing crosses the host, and under ZeRO-0/1/2 the rank copies nothing either
  (its bf16 parameters are full on every rank; the handles point into them).
- **NCCL broadcast** from rank 0 to the servers on GPUs of their own ([rollout] resources), through
  vLLM's NCCL weight-transfer engine, packed in buckets. The group is formed once and kept across
  steps; it is formed again only when the set of servers changes (one restarted).

Both drive vLLM 0.32's weight-transfer routes (`/init_weight_transfer_engine`,
`/start_weight_update`, `/update_weights`, `/finish_weight_update`) on servers started with
`--weight-transfer-config {"backend": "ipc" | "nccl"}`. The sender is never the driver: a driver
holds no GPU memory of the weights, and a driver on a GPU that a vLLM worker also holds could not
join NCCL there.

Under ZeRO-3 every rank must run `push` with the same plan at once: each bucket's parameters are
gathered collectively, then the rank with a server beside it hands them over.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from seamless.rollout.server_http import post_each
from seamless.services.http import control_client

Named = list[tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class NcclPeers:
    """The servers rank 0 broadcasts to, and where its end of the NCCL group listens."""

    urls: tuple[str, ...]
    master_address: str
    master_port: int


class RankPusher:
    """Lives in one trainer rank for the run: the servers it has set up, and its NCCL group."""

    def __init__(self, rank: int, timeout_s: float = 600.0):
        self.rank = rank
        self.timeout_s = timeout_s
        self._ipc_ready: set[str] = set()
        self._nccl: Any = None  # vLLM's NCCLTrainerWeightTransferEngine (rank 0) or a plain source (others)
        self._nccl_urls: tuple[str, ...] = ()

    def push(self, module: torch.nn.Module, stage3: bool, buckets: Sequence[Sequence[str]],
             ipc_url: str | None, ipc_anywhere: bool, nccl: NcclPeers | None) -> int:
        """Send every parameter: by IPC to `ipc_url` (the server on this GPU), then by NCCL to the
        `nccl` peers (rank 0 sends); bytes sent. Under ZeRO-3 a rank with nothing to send still
        takes part in the gathers of the ranks that do (`ipc_anywhere`: some rank sends by IPC)."""
        sent = 0
        if ipc_url is not None or (stage3 and ipc_anywhere):
            sent += self._push_ipc(module, stage3, buckets, ipc_url)
        if nccl is not None and nccl.urls:
            sent += self._push_nccl(module, stage3, nccl)
        return sent

    # --- CUDA IPC ------------------------------------------------------------------------------

    def _push_ipc(self, module: torch.nn.Module, stage3: bool, buckets: Sequence[Sequence[str]],
                  url: str | None) -> int:
        """One `/update_weights` per bucket, each carrying IPC handles to the bucket's tensors; vLLM
        has copied them into its weights when the call returns, so the handles may go then."""
        if url is not None and url not in self._ipc_ready:
            # unpacked: every handle points into the parameters themselves, no staging buffer
            post_each([url], "/init_weight_transfer_engine", json={"init_info": {"packed": False}},
                      timeout_s=self.timeout_s)
            self._ipc_ready.add(url)
        if url is not None:
            post_each([url], "/start_weight_update", timeout_s=self.timeout_s)
        sent = 0
        for named in gathered_buckets(module, stage3, buckets):
            if url is None:
                continue  # a rank without a server beside it only joins ZeRO-3's gathers
            post_each([url], "/update_weights", json={"update_info": ipc_update_info(named)},
                      timeout_s=self.timeout_s)
            sent += sum(t.numel() * t.element_size() for _, t in named)
        if url is not None:
            post_each([url], "/finish_weight_update", json={"weight_version": None}, timeout_s=self.timeout_s)
            torch.cuda.ipc_collect()  # vLLM has closed its handles: let the allocator reuse the memory
        return sent

    # --- NCCL ----------------------------------------------------------------------------------

    def _push_nccl(self, module: torch.nn.Module, stage3: bool, peers: NcclPeers) -> int:
        if self.rank != 0:
            if stage3:  # the sender's gathers are collective: walk them in the same order
                for _ in gathered_params(module, stage3):
                    pass
            return 0
        if self._nccl is None or self._nccl_urls != peers.urls:
            self._connect(module, stage3, peers)
        self._nccl.send_weights()
        return sum(_full_numel(p) * p.element_size() for p in module.parameters())

    def _connect(self, module: torch.nn.Module, stage3: bool, peers: NcclPeers) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import (NCCLTrainerInitInfo,
                                                                  NCCLTrainerWeightTransferEngine)

        if self._nccl is not None:  # a server left or joined: the old group is unusable
            self._nccl.shutdown()
            post_each(list(self._nccl_urls), "/shutdown_weight_transfer_engine", timeout_s=self.timeout_s)
        sizes = [server_world_size(url) for url in peers.urls]
        client = FanoutClient(list(peers.urls), sizes, self.timeout_s)
        info = NCCLTrainerInitInfo(master_address=peers.master_address, master_port=peers.master_port,
                                   world_size=1 + sum(sizes), packed=True, rank=0)
        self._nccl = NCCLTrainerWeightTransferEngine.trainer_init(info, client=client,
                                                                  source=module_source(module, stage3))
        self._nccl_urls = peers.urls

    def shutdown(self) -> None:
        if self._nccl is not None:
            self._nccl.shutdown()
            self._nccl = None


def ipc_update_info(named: Named, handle: Callable[[torch.Tensor], tuple] | None = None) -> dict[str, Any]:
    """vLLM's IPC update payload for these (name, CUDA tensor) pairs, JSON-safe: the handles are
    pickled (the server must run with VLLM_ALLOW_INSECURE_SERIALIZATION=1, and bind loopback).
    `handle` makes a tensor's handle (default: torch's CUDA IPC reduction; tests pass their own)."""
    if handle is None:
        from torch.multiprocessing.reductions import reduce_tensor

        handle = lambda t: reduce_tensor(t)[1]  # noqa: E731
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid) if torch.cuda.is_available() else "cpu"
    # keyed by the GPU's UUID: the server finds its own device's handle whatever index it sees
    handles = [{uuid: handle(t.detach())} for _, t in named]
    return {"names": [name for name, _ in named],
            "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in named],
            "shapes": [list(t.shape) for _, t in named],
            "ipc_handles_pickled": base64.b64encode(pickle.dumps(handles)).decode("ascii")}


def rebuild_ipc(update_info: dict[str, Any], device_index: int) -> Named:
    """The receiving side of `ipc_update_info` (what vLLM's IPC engine does), for checks."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    handles = pickle.loads(base64.b64decode(update_info["ipc_handles_pickled"]))
    out = []
    for name, handle in zip(update_info["names"], handles):
        args = list(handle[uuid])
        args[6] = device_index  # the index this process sees the GPU at
        out.append((name, rebuild_cuda_tensor(*args)))
    return out


def gathered_buckets(module: torch.nn.Module, stage3: bool, buckets: Sequence[Sequence[str]]) -> Iterator[Named]:
    """Each bucket's (name, full tensor on the device); under ZeRO-3 gathered while the caller
    holds it (a collective: every rank walks the same buckets)."""
    params = dict(module.named_parameters())
    for names in buckets:
        chosen = [params[n] for n in names]
        with _gathered(chosen, stage3):
            yield [(n, p.data) for n, p in zip(names, chosen)]


def gathered_params(module: torch.nn.Module, stage3: bool) -> Iterator[tuple[str, torch.Tensor]]:
    for name, param in module.named_parameters():
        with _gathered([param], stage3):
            yield name, param.data


def module_source(module: torch.nn.Module, stage3: bool) -> Any:
    """vLLM's WeightSource over the policy: full shapes declared without gathering."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class PolicySource(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                    for name, p in module.named_parameters()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            return gathered_params(module, stage3)

    return PolicySource()


def server_world_size(url: str) -> int:
    from seamless.services.network import server_headers

    response = control_client().get(f"{url}/get_world_size", params={"include_dp": "false"}, timeout=30,
                                    headers=server_headers())
    response.raise_for_status()
    return int(response.json()["world_size"])


class FanoutClient:
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

    def shutdown_weight_transfer_engine(self) -> None:
        post_each(self.urls, "/shutdown_weight_transfer_engine", timeout_s=self.timeout_s)

    def start_weight_update(self) -> None:
        post_each(self.urls, "/start_weight_update", timeout_s=self.timeout_s)

    def update_weights(self, update_info: Any) -> None:
        post_each(self.urls, "/update_weights", json={"update_info": update_info}, timeout_s=self.timeout_s)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        post_each(self.urls, "/finish_weight_update", json={"weight_version": weight_version},
                  timeout_s=self.timeout_s)


@contextmanager
def _gathered(params: list[torch.nn.Parameter], stage3: bool) -> Iterator[None]:
    if not stage3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
        # a consumer may read the full tensor on a stream of its own (vLLM packs NCCL buckets on
        # side streams): finish every read before ZeRO-3 frees the gathered memory
        torch.cuda.synchronize()


def _full_numel(param: torch.nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", param.numel()))
