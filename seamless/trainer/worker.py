"""One trainer rank: a process (a Ray actor) holding the DeepSpeed engines of its shard.

The driver (`seamless.trainer.trainer.Trainer`) calls every rank with its own list of
micro-batches; all ranks call the same methods in the same order, since ZeRO's collectives need
every rank. Tensors cross the actor boundary on the CPU.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seamless.config import AlgorithmConfig
from seamless.trainer.batch import MicroBatch
from seamless.trainer.engines import Engines, build_engines
from seamless.trainer.metrics import add_share
from seamless.trainer.objective import critic_objective, policy_objective, sft_objective, token_values
from seamless.algorithms import logprobs_from_logits

LossFn = Callable[[torch.Tensor, MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rank needs to build its engines."""

    model_dir: str
    ds_config: dict[str, Any]
    dtype: str
    lr: float
    critic_lr: float
    weight_decay: float
    need_reference: bool
    need_critic: bool
    algorithm: AlgorithmConfig
    seed: int
    gpu_memory_share: float = 0.4
    """On a GPU shared with a vLLM server: the most of it this rank may hold after building its engines."""
    cpu_threads: int | None = None
    """Torch threads of the rank when it computes on the CPU; None keeps OMP_NUM_THREADS."""


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """What one rank's optimizer update of the policy gives back."""

    metrics: dict[str, float]
    """This rank's metric shares (summed over the ranks by the driver)."""
    old_logprobs: list[torch.Tensor] | None = None
    """Only when asked for (`keep_old_logprobs`): the logprobs the update measured as its old ones, one
    CPU tensor (b, t) per micro-batch, for the later updates of the step."""


class TrainWorker:
    """Body of a rank's Ray actor."""

    def __init__(self, rank: int, world_size: int, spec: WorkerSpec, shares_device: bool = False):
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.shares_device = shares_device
        """A vLLM server lives on this rank's GPU too (a [train, rollout] resource)."""
        self.engines: Engines | None = None
        self._pusher: Any = None  # weight_push.RankPusher, made on the first push

    def device_report(self) -> dict[str, Any]:
        """The devices this rank's process sees and the one it uses (tests, `seamless doctor`)."""
        from seamless.cluster.devices import device_report

        return {**device_report(), "rank": self.rank}

    def node_address(self) -> str:
        """The address Ray reports for this rank's node."""
        import ray

        return ray.util.get_node_ip_address()

    def endpoint(self, host: str) -> tuple[str, int]:
        """A free port on `host` (this rank's node address or loopback), for rank 0 to host the
        process group."""
        from seamless.services.process import free_port

        return host, free_port(host)

    def setup(self, master_addr: str, master_port: int, node_addr: str) -> None:
        """Join the process group (gloo on CPU, NCCL on GPUs) over `node_addr` (this rank's node
        address, or loopback when every rank is on one node) and build the engines."""
        import deepspeed

        from seamless.cluster.devices import assigned_device

        # the GPU Ray assigned (its index among the visible ones; 0 when Ray narrowed visibility to
        # it): DeepSpeed takes the device from LOCAL_RANK
        device = assigned_device() or 0
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(device), LOCAL_WORLD_SIZE="1")
        if torch.cuda.is_available():
            torch.cuda.set_device(device)
        torch.manual_seed(self.spec.seed + self.rank)
        random.seed(self.spec.seed + self.rank)
        if self.spec.cpu_threads and not torch.cuda.is_available():
            torch.set_num_threads(self.spec.cpu_threads)
        from seamless.trainer.process_group import join_process_group

        # the rendezvous listens on master_addr only (torch's own listens on `::`)
        self._store_socket = join_process_group(master_addr, master_port, self.rank, self.world_size, node_addr)
        deepspeed.init_distributed(dist_backend=None, auto_mpi_discovery=False)  # wraps the group formed above
        s = self.spec
        self.engines = build_engines(s.model_dir, s.ds_config, s.dtype, s.lr, s.critic_lr, s.weight_decay,
                                     s.need_reference, s.need_critic)
        if self.shares_device and torch.cuda.is_available():
            self._check_memory_share()

    def _check_memory_share(self) -> None:
        """Fail now, with the keys to change, rather than when vLLM refuses to start beside us."""
        from seamless.errors import ConfigError

        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        held = torch.cuda.memory_reserved()
        if held > self.spec.gpu_memory_share * total:
            raise ConfigError(
                f"trainer rank {self.rank} holds {held / 2**30:.1f} GiB ({held / total:.0%} of its GPU) after "
                f"building its engines, above trainer.gpu_memory_share ({self.spec.gpu_memory_share}); the vLLM "
                "server sharing the GPU would not fit. Raise trainer.gpu_memory_share and lower "
                "rollout.gpu_memory_utilization, or use ZeRO-3 / optimizer offload in trainer.deepspeed")

    def offload_states(self, kinds: list[str]) -> int:
        """Move these states of the trained engines (`optimizer`, `grads`, `params`) to host memory,
        giving the GPU to the vLLM server beside this rank; returns the bytes freed on the device
        (0 on CPU, where DeepSpeed moves host memory to host memory). Only a rank that shares its
        device moves anything. Needs ZeRO stage 1 or more (DeepSpeed offloads its optimizer's state)."""
        if not self.shares_device:
            return 0
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as State

        states = {"optimizer": [State.optim_states, State.hp_params],
                  "grads": [State.lp_grads, State.contiguous_grad_buffer], "params": [State.lp_params]}
        on_gpu = torch.cuda.is_available()
        before = torch.cuda.memory_allocated() if on_gpu else 0
        for engine in self._trained():
            # pinned host buffers make the way back fast; there is nothing to pin on a CPU machine
            engine.offload_states(include=[s for kind in kinds for s in states[kind]], pin_memory=on_gpu)
        if not on_gpu:
            return 0
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return before - torch.cuda.memory_allocated()

    def reload_states(self) -> None:
        """Everything `offload_states` moved back on the device, before the rank computes again."""
        if not self.shares_device:
            return
        for engine in self._trained():
            engine.reload_states()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _trained(self) -> list[Any]:
        """The engines with an optimizer (the frozen reference has none to move)."""
        return [e for e in (self._e.policy, self._e.critic) if e is not None]

    @property
    def _e(self) -> Engines:
        assert self.engines is not None, "setup() has not run"
        return self.engines

    def _logits(self, model: Any, mb: MicroBatch) -> torch.Tensor:
        device = self._e.policy.device
        return model(input_ids=mb.token_ids.to(device), attention_mask=mb.attention_mask.to(device)).logits

    @torch.no_grad()
    def forward(self, micro_batches: list[MicroBatch], want_reference: bool, want_values: bool) -> list[dict[str, torch.Tensor]]:
        """Logprobs (b, t) under the current policy, and reference logprobs / critic values if asked."""
        e = self._e
        out = []
        for engine in (e.policy, e.critic, e.reference):
            if engine is not None and hasattr(engine, "eval"):
                engine.eval()
        for mb in micro_batches:
            result = {"logprobs": logprobs_from_logits(self._logits(e.policy, mb), mb.token_ids.to(e.policy.device)).cpu()}
            if want_reference:
                result["ref_logprobs"] = logprobs_from_logits(self._logits(e.reference, mb),
                                                              mb.token_ids.to(e.policy.device)).cpu()
            if want_values:
                result["values"] = token_values(self._logits(e.critic, mb)).cpu()
            out.append(result)
        return out

    def _accumulate(self, engine: Any, micro_batches: list[MicroBatch], loss_fn: LossFn, lr: float) -> dict[str, float]:
        """Forward/backward every micro-batch, then one optimizer step at the boundary."""
        engine.train()
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        device = engine.device
        for i, mb in enumerate(micro_batches):
            engine.set_gradient_accumulation_boundary(i == len(micro_batches) - 1)
            mb = _to_device(mb, device)
            loss, metrics = loss_fn(self._logits(engine, mb), mb)
            # DeepSpeed averages gradients over ranks; the loss is already a share of the global
            # mean, so undo the average and skip its accumulation scaling
            engine.backward(loss * self.world_size, scale_wrt_gas=False)
            for key, value in metrics.items():
                add_share(sums, key, float(value))
        # ZeRO optimizers record the pre-clip norm; at stage 0 the engine does not, so measure it
        # here, where the gradients are already averaged over ranks and not yet stepped
        own_norm = _grad_norm(engine.module) if self._e.stage == 0 else None
        engine.step()
        norm = own_norm if own_norm is not None else engine.get_global_grad_norm()
        sums["grad_norm"] = float(norm) if norm is not None else float("nan")
        return sums

    def train_policy(self, micro_batches: list[MicroBatch], lr: float, keep_old_logprobs: bool = False) -> PolicyUpdate:
        """One optimizer update of the policy. `keep_old_logprobs`, for micro-batches without old
        logprobs (the first of several updates, Trainer.old_logprobs_from_the_update): also return
        the logprobs they measured as their old ones."""
        algo = self.spec.algorithm
        kept: list[torch.Tensor] | None = [] if keep_old_logprobs else None
        metrics = self._accumulate(self._e.policy, micro_batches, lambda lg, mb: policy_objective(lg, mb, algo, kept),
                                   lr)
        if kept is None:
            return PolicyUpdate(metrics)
        assert len(kept) == len(micro_batches), "old logprobs asked of micro-batches that came with them"
        return PolicyUpdate(metrics, [t.cpu() for t in kept])

    def train_critic(self, micro_batches: list[MicroBatch], lr: float) -> dict[str, float]:
        algo = self.spec.algorithm
        metrics = self._accumulate(self._e.critic, micro_batches, lambda lg, mb: critic_objective(lg, mb, algo), lr)
        metrics["critic_grad_norm"] = metrics.pop("grad_norm")
        return metrics

    def train_sft(self, micro_batches: list[MicroBatch], lr: float) -> dict[str, float]:
        return self._accumulate(self._e.policy, micro_batches, sft_objective, lr)

    # --- checkpoints -------------------------------------------------------------------------

    def save(self, folder: str, client_state: dict[str, Any]) -> None:
        """Every rank writes its shard (model, optimizer) and its RNG state."""
        e = self._e
        e.policy.save_checkpoint(folder, tag="policy", client_state=client_state)
        if e.critic is not None:
            e.critic.save_checkpoint(folder, tag="critic")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        torch.save(rng, Path(folder) / f"rng_rank{self.rank}.pt")

    def load(self, folder: str) -> dict[str, Any]:
        e = self._e
        _, client_state = e.policy.load_checkpoint(folder, tag="policy", load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if e.critic is not None:
            e.critic.load_checkpoint(folder, tag="critic", load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
        rng_path = Path(folder) / f"rng_rank{self.rank}.pt"
        if rng_path.exists():
            rng = torch.load(rng_path, weights_only=False)
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
        return client_state or {}

    # --- weight export -----------------------------------------------------------------------

    def bucket_plan(self, bucket_bytes: int) -> list[list[str]]:
        """Parameter names grouped into buckets of about bucket_bytes (full, unpartitioned sizes)."""
        buckets: list[list[str]] = [[]]
        size = 0
        for name, p in self._e.policy.module.named_parameters():
            numel = getattr(p, "ds_numel", p.numel())  # ZeRO-3 keeps the full size in ds_numel
            nbytes = numel * p.element_size()
            if buckets[-1] and size + nbytes > bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(name)
            size += nbytes
        return buckets

    @torch.no_grad()
    def gather(self, names: list[str]) -> list[tuple[str, torch.Tensor]] | None:
        """Full tensors of the named parameters on rank 0 (None elsewhere).

        Under ZeRO-3 every rank must call this with the same names (the gather is collective).
        """
        import deepspeed

        params = dict(self._e.policy.module.named_parameters())
        chosen = [params[n] for n in names]
        context = (deepspeed.zero.GatheredParameters(chosen, modifier_rank=None) if self._e.stage == 3
                   else nullcontext())
        with context:
            if self.rank != 0:
                return None
            return [(n, p.detach().to("cpu", copy=True)) for n, p in zip(names, chosen)]

    def push_weights(self, ipc_url: str | None, ipc_anywhere: bool, nccl: Any, bucket_bytes: int) -> int:
        """Send the policy's weights from this rank's GPU (trainer/weight_push.py): by CUDA IPC to
        `ipc_url`, the server on this GPU, and (rank 0) by NCCL to `nccl`'s servers; bytes sent.
        Every rank is called at once (ZeRO-3 gathers are collective)."""
        from seamless.trainer.weight_push import RankPusher

        if self._pusher is None:
            self._pusher = RankPusher(self.rank)
        return self._pusher.push(self._e.policy.module, self._e.stage == 3, self.bucket_plan(bucket_bytes),
                                 ipc_url, ipc_anywhere, nccl)

    def weight_bytes(self) -> int:
        """The full (unpartitioned) size of the policy's weights."""
        return sum(int(getattr(p, "ds_numel", p.numel())) * p.element_size()
                   for p in self._e.policy.module.parameters())

    def describe(self) -> dict[str, Any]:
        """How this rank was built: ZeRO stage, whether the policy was created as shards, its device."""
        import deepspeed

        e = self._e
        return {"rank": self.rank, "zero_stage": e.stage, "partitioned_at_load": e.partitioned_at_load,
                "device": str(e.policy.device), "accelerator": deepspeed.get_accelerator().device_name()}

    def memory_stats(self) -> dict[str, float]:
        """Peak accelerator memory of this rank and peak RSS of its process, in GiB (GPU: 0 on CPU)."""
        import resource

        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        return {"peak_gpu_gib": peak, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def shutdown(self) -> None:
        """Leave the process group; without this about 1 in 13 gloo runs aborted at exit."""
        import torch.distributed as dist

        if self._pusher is not None:
            self._pusher.shutdown()

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def _to_device(mb: MicroBatch, device: torch.device) -> MicroBatch:
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "index" else v)
             for k, v in mb.__dict__.items()}
    return MicroBatch(**moved)
