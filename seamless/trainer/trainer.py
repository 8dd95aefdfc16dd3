"""The driver-side trainer: what the main loop calls. It owns one Ray actor per rank.

    trainer = Trainer.from_recipe(recipe, model_dir, num_ranks=2)
    metrics = trainer.train_step(sequences, serving_version=7)  # list[TrainingSequence] -> StepMetrics
    for bucket in trainer.export_weights(): ...    # named full tensors for the rollout servers
    trainer.save_checkpoint(run_dir / "checkpoints", extra_state={"data_position": 123})
    trainer.shutdown()

A step: filter (staleness, dynamic sampling) -> one no-grad pass on the ranks for the logprobs
the batch is trained from (and reference logprobs, critic values) -> advantages on the driver
-> for each epoch, for each mini-batch: every rank runs its micro-batches and one optimizer step.
When the step has one mini-batch and needs no reference or critic, the no-grad pass is skipped:
the first update's own logprobs are the old ones (`old_logprobs_from_the_update`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seamless.algorithms import (
    Algorithm,
    LogprobMismatch,
    dynamic_sampling_keep,
    group_ids_to_index,
    logprob_mismatch,
    make_algorithm,
    overlong_penalty,
    staleness_keep,
    truncated_is_weights,
)
from seamless.config import AlgorithmConfig, Recipe, TrainerConfig
from seamless.cluster.devices import DeviceSlot
from seamless.errors import SeamlessError
from seamless.rollout.transport import PushPlan
from seamless.trainer.batch import (
    MicroBatch,
    TrainBatch,
    deal_to_ranks,
    pack_by_tokens,
    scatter_rows,
    slice_micro_batch,
    with_denominators,
)
from seamless.trainer.engines import deepspeed_config, zero_stage
from seamless.trainer.metrics import SftMetrics, StepMetrics, add_share
from seamless.trainer.worker import PolicyUpdate, TrainWorker, WorkerSpec
from seamless.types import TrainingSequence

_STATE_FILE = "trainer_state.json"
# variables each rank's process needs before torch/deepspeed import (DESIGN section 4)
_RANK_ENV = ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")


@dataclass(frozen=True)
class _Filtered:
    sequences: list[TrainingSequence]
    dropped_stale: int
    dropped_uniform: int


class Trainer:
    """A DeepSpeed policy (plus reference and critic when the algorithm needs them) on N ranks."""

    def __init__(self, model_dir: str | Path, algorithm: AlgorithmConfig, config: TrainerConfig, num_ranks: int,
                 dtype: str = "float32", seed: int = 0, slots: Sequence[DeviceSlot] | None = None,
                 gpus_per_rank: float = 1.0, cpu_threads: int | None = None):
        """`slots`: the device of each rank (rank i on slots[i], sharing it with a vLLM server where
        the slot is shared). Without slots each rank asks Ray for `gpus_per_rank` GPUs anywhere."""
        import ray

        from transformers import AutoConfig

        self.model_dir = Path(model_dir).resolve()
        self.config, self.num_ranks, self.seed = config, num_ranks, seed
        self.algorithm = make_algorithm(algorithm)  # what it needs (reference, critic), how it makes advantages
        self.pad_id = AutoConfig.from_pretrained(self.model_dir).pad_token_id or 0
        ds_config = deepspeed_config(config.deepspeed, num_ranks, config.grad_clip, dtype)
        self.zero_stage = zero_stage(ds_config)
        spec = WorkerSpec(model_dir=str(self.model_dir), ds_config=ds_config, dtype=dtype, lr=config.lr,
                          critic_lr=self.algorithm.critic_lr or 0.0, weight_decay=config.weight_decay,
                          need_reference=self.algorithm.needs_reference, need_critic=self.algorithm.needs_critic,
                          algorithm=algorithm, seed=seed, gpu_memory_share=config.gpu_memory_share,
                          cpu_threads=cpu_threads or config.cpu_threads)
        self.step = 0  # RL steps done
        self.optimizer_steps = 0  # drives the LR schedule
        self.sft_steps = 0
        self._nccl_endpoint: tuple[str, int] | None = None  # rank 0's end of the weight broadcast, kept
        self._weight_bytes: int | None = None
        if slots is not None and len(slots) != num_ranks:
            raise ValueError(f"{num_ranks} ranks but {len(slots)} device slots")
        self._workers = spawn_ranks(spec, num_ranks, slots, gpus_per_rank)
        try:
            # torch's store and gloo have no key: ranks that share a node talk over loopback, and
            # only ranks spread over nodes need their node addresses (cluster/README.md)
            nodes = ray.get([w.node_address.remote() for w in self._workers])
            hosts = ["127.0.0.1"] * len(nodes) if len(set(nodes)) == 1 else nodes
            addr, port = ray.get(self._workers[0].endpoint.remote(hosts[0]))
            ray.get([w.setup.remote(addr, port, host) for w, host in zip(self._workers, hosts)])
        except BaseException:
            # ranks that failed to set up still hold their (logical) GPUs: end them, or every later
            # trainer in this Ray cluster waits for devices that never come free
            for worker in self._workers:
                ray.kill(worker, no_restart=True)
            raise

    @classmethod
    def from_recipe(cls, recipe: Recipe, model_dir: str | Path, num_ranks: int, **kwargs: Any) -> Trainer:
        kwargs.setdefault("cpu_threads", rank_cpu_threads(recipe, num_ranks))
        return cls(model_dir, recipe.algorithm, recipe.trainer, num_ranks, dtype=recipe.model.dtype,
                   seed=recipe.run.seed, **kwargs)

    # --- the step ----------------------------------------------------------------------------

    def train_step(self, sequences: list[TrainingSequence], serving_version: int = 0) -> StepMetrics | None:
        """One RL step on finished sequences. None when filters left nothing to train on.

        `serving_version`: the weights rollout serves now (the weight publisher's version), from
        which `algorithm.max_staleness` counts; the trainer keeps no version of its own."""
        start = time.perf_counter()
        kept = self._filter(sequences, serving_version)
        if not kept.sequences:
            return None
        algo = self.algorithm.config
        batch = TrainBatch.from_sequences(kept.sequences, self.pad_id)
        rewards = batch.rewards.clone()
        if algo.overlong_max_tokens is not None:
            generated = batch.loss_mask.sum(-1).long()
            rewards += overlong_penalty(generated, algo.overlong_max_tokens, algo.overlong_buffer_tokens,
                                        algo.overlong_penalty)
        groups = group_ids_to_index([s.group_id for s in kept.sequences])
        mask = batch.loss_mask
        one_pass = old_logprobs_from_the_update(self.config, self.algorithm, batch.size)
        if one_pass:
            # the objective of the first update takes the old logprobs (and with them the IS weights
            # and the mismatch) from its own pass, and _optimize hands them to the later updates;
            # advantages need no logprobs without the reference
            passes: dict[str, torch.Tensor] = {}
            old, is_weights = None, None
        else:
            passes = self._forward(batch, want_reference=self.algorithm.needs_reference,
                                   want_values=self.algorithm.needs_critic)
            old = passes["logprobs"]
            is_weights = self._is_weights(batch, old)
        adv = self.algorithm.advantages(rewards, groups, mask, old, passes.get("ref_logprobs"), passes.get("values"))
        per_token = {"old_logprobs": old, "ref_logprobs": passes.get("ref_logprobs"), "advantages": adv.advantages,
                     "is_weights": is_weights, "old_values": passes.get("values"), "returns": adv.returns,
                     "rollout_logprobs": batch.rollout_logprobs if one_pass else None}
        sums, epoch_losses, first_loss, lr = self._optimize(batch, per_token)
        self.step += 1
        elapsed = time.perf_counter() - start
        n_tok, n_trained = int(batch.attention_mask.sum()), int(mask.sum())
        if one_pass:  # only the first update, which measured the old logprobs, returns these sums
            mismatch = LogprobMismatch.from_sums(sums)
            is_weight_mean = sums["is_weight_sum"] / max(n_trained, 1) if algo.tis_cap is not None else 1.0
        else:
            mismatch = logprob_mismatch(old, batch.rollout_logprobs, mask)
            is_weight_mean = float((is_weights * mask).sum() / max(n_trained, 1)) if is_weights is not None else 1.0
        n_updates = max(sums.pop("_updates"), 1)
        mean = lambda key: sums.get(key, 0.0) / n_updates  # noqa: E731
        return StepMetrics(
            step=self.step, num_sequences=batch.size,
            num_dropped_stale=kept.dropped_stale, num_dropped_uniform=kept.dropped_uniform,
            num_tokens=n_tok, num_trained_tokens=n_trained, loss=first_loss, policy_loss=mean("policy_loss"),
            kl_loss=mean("kl_loss"), entropy=mean("entropy"), clip_frac=mean("clip_frac"),
            dual_clip_frac=mean("dual_clip_frac"), approx_kl=mean("approx_kl"), grad_norm=mean("grad_norm"), lr=lr,
            reward_mean=float(rewards.mean()), advantage_mean=float((adv.advantages * mask).sum() / max(n_trained, 1)),
            mismatch_mean_abs=mismatch.mean_abs_diff, mismatch_max_abs=mismatch.max_abs_diff,
            mismatch_kl=mismatch.kl_k3,
            is_weight_mean=is_weight_mean,
            kl_penalty=float(adv.kl_penalty.sum() / max(n_trained, 1)) if adv.kl_penalty is not None else 0.0,
            value_loss=mean("value_loss"), value_clip_frac=mean("value_clip_frac"),
            critic_grad_norm=mean("critic_grad_norm"), epoch_losses=epoch_losses, step_time_s=elapsed,
            tokens_per_s=n_tok * (self.config.ppo_epochs + (0 if one_pass else 1)) / elapsed)

    def _filter(self, sequences: list[TrainingSequence], serving_version: int) -> _Filtered:
        """Drop sequences too stale to correct, then groups dynamic sampling rejects."""
        algo = self.algorithm.config
        versions = torch.tensor([s.oldest_version for s in sequences], dtype=torch.long)
        fresh = staleness_keep(versions, serving_version, algo.max_staleness) if sequences else torch.ones(0, dtype=torch.bool)
        kept = [s for s, ok in zip(sequences, fresh.tolist()) if ok]
        dropped_stale = len(sequences) - len(kept)
        if algo.dynamic_sampling and kept:
            rewards = torch.tensor([s.reward for s in kept], dtype=torch.float64)
            ok = dynamic_sampling_keep(rewards, group_ids_to_index([s.group_id for s in kept]))
            after = [s for s, k in zip(kept, ok.tolist()) if k]
            return _Filtered(after, dropped_stale, len(kept) - len(after))
        return _Filtered(kept, dropped_stale, 0)

    def _optimize(self, batch: TrainBatch, per_token: dict[str, torch.Tensor | None]) -> tuple[dict[str, float], list[float], float, float]:
        """ppo_epochs passes, each split into mini-batches with one optimizer step each.

        Without old logprobs in `per_token` (`old_logprobs_from_the_update`: one mini-batch) the
        first update measures them in its own pass; when more updates follow, the ranks return them
        and the later updates take them, with the IS weights, as from the no-grad pass."""
        import ray

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)  # same order after a resume
        n_mini = min(self.config.mini_batches, batch.size)
        sums: dict[str, float] = {"_updates": 0}
        epoch_losses: list[float] = []
        first_loss, lr = math.nan, self._lr()
        for epoch in range(self.config.ppo_epochs):
            order = torch.randperm(batch.size, generator=gen).tolist() if n_mini > 1 else list(range(batch.size))
            epoch_loss = 0.0
            for chunk in range(n_mini):
                rows = order[chunk::n_mini]
                lr = self._lr()
                rank_mbs = self._micro_batches(batch, rows, per_token)
                keep_old = per_token["old_logprobs"] is None and epoch + 1 < self.config.ppo_epochs
                policy = [w.train_policy.remote(mbs, lr, keep_old) for w, mbs in zip(self._workers, rank_mbs)]
                critic = []
                if self.algorithm.needs_critic:
                    critic_lr = self._lr(self.algorithm.critic_lr)
                    critic = [w.train_critic.remote(mbs, critic_lr) for w, mbs in zip(self._workers, rank_mbs)]
                results = ray.get(policy + critic)
                updates: list[PolicyUpdate] = results[:len(policy)]
                if keep_old:  # every row, on the micro-batches `_forward` would run: scatter as it does
                    assert n_mini == 1 and not self.algorithm.needs_critic
                    B, T = batch.token_ids.shape
                    old = scatter_rows(B, T, [mb for rank in rank_mbs for mb in rank],
                                       [t for update in updates for t in update.old_logprobs or ()])
                    per_token = {**per_token, "old_logprobs": old, "is_weights": self._is_weights(batch, old),
                                 "rollout_logprobs": None}
                merged = _merge_rank_metrics([u.metrics for u in updates] + results[len(policy):], self.num_ranks)
                if math.isnan(first_loss):
                    first_loss = merged["loss"]
                epoch_loss += merged["policy_loss"] / n_mini
                for key, value in merged.items():
                    add_share(sums, key, value)
                sums["_updates"] += 1
                self.optimizer_steps += 1
            epoch_losses.append(epoch_loss)
        return sums, epoch_losses, first_loss, lr

    def _is_weights(self, batch: TrainBatch, old: torch.Tensor) -> torch.Tensor | None:
        """Truncated IS weights of the old logprobs (B, T) against the rollout's; None without tis_cap."""
        cap = self.algorithm.config.tis_cap
        return truncated_is_weights(old, batch.rollout_logprobs, batch.loss_mask, cap) if cap is not None else None

    def _lr(self, peak: float | None = None) -> float:
        """Linear warm-up over trainer.warmup_steps optimizer steps, then constant."""
        peak = self.config.lr if peak is None else peak
        warmup = self.config.warmup_steps
        return peak * min(1.0, (self.optimizer_steps + 1) / warmup) if warmup else peak

    def _micro_batches(self, batch: TrainBatch, rows: list[int],
                       per_token: dict[str, torch.Tensor | None]) -> list[list[MicroBatch]]:
        lengths = [int(batch.lengths[i]) for i in rows]
        groups = pack_by_tokens(lengths, self.config.micro_batch_tokens)
        ranks = deal_to_ranks(groups, lengths, self.num_ranks)
        mbs = [[slice_micro_batch(batch, [rows[i] for i in g], self.pad_id, **per_token) for g in rank]
               for rank in ranks]
        return with_denominators(mbs, batch.loss_mask, rows)

    def _forward(self, batch: TrainBatch, want_reference: bool, want_values: bool) -> dict[str, torch.Tensor]:
        """No-grad pass over the whole batch on all ranks; results as (B, T) tensors."""
        import ray

        rank_mbs = self._micro_batches(batch, list(range(batch.size)), {})
        results = ray.get([w.forward.remote(mbs, want_reference, want_values)
                           for w, mbs in zip(self._workers, rank_mbs)])
        flat_mbs = [mb for rank in rank_mbs for mb in rank]
        flat_out = [r for rank in results for r in rank]
        B, T = batch.token_ids.shape
        return {key: scatter_rows(B, T, flat_mbs, [r[key] for r in flat_out]) for key in flat_out[0]}

    def compute_logprobs(self, sequences: list[TrainingSequence]) -> list[list[float]]:
        """Logprob of every token under the current weights (position 0 is 0.0), one list per sequence."""
        batch = TrainBatch.from_sequences(sequences, self.pad_id)
        logprobs = self._forward(batch, want_reference=False, want_values=False)["logprobs"]
        return [logprobs[i, : int(batch.lengths[i])].tolist() for i in range(batch.size)]

    def sft_step(self, sequences: list[TrainingSequence], lr: float | None = None) -> SftMetrics:
        """One supervised step: token-mean NLL of the loss-masked tokens. LR defaults to sft_warmup.lr."""
        import ray

        start = time.perf_counter()
        batch = TrainBatch.from_sequences(sequences, self.pad_id)
        rank_mbs = self._micro_batches(batch, list(range(batch.size)), {})
        lr = self.config.sft_warmup.lr if lr is None else lr
        merged = _merge_rank_metrics(ray.get([w.train_sft.remote(mbs, lr) for w, mbs in zip(self._workers, rank_mbs)]),
                                     self.num_ranks)
        self.sft_steps += 1
        n_tok = int(batch.attention_mask.sum())
        return SftMetrics(step=self.sft_steps, loss=merged["sft_loss"], grad_norm=merged["grad_norm"], num_tokens=n_tok,
                          tokens_per_s=n_tok / (time.perf_counter() - start))

    # --- checkpoints and export --------------------------------------------------------------

    # --- the GPU role switch (rollout/switch.py drives it) ----------------------------------------

    def offload_states(self, kinds: Sequence[str]) -> int:
        """Every rank that shares its GPU with a vLLM server moves these states to host memory;
        bytes freed on the devices (0 on CPU, or without a shared GPU)."""
        import ray

        return sum(ray.get([w.offload_states.remote(list(kinds)) for w in self._workers]))

    def reload_states(self) -> None:
        """The offloaded states back on the GPUs, before a step."""
        import ray

        ray.get([w.reload_states.remote() for w in self._workers])

    # --- weights sent from the ranks' GPUs (rollout/transport.py RankTransport drives it) ----------

    def push_weights(self, plan: PushPlan) -> int:
        """Every rank sends the policy as the plan says: CUDA IPC from rank i to `plan.ipc[i]`, an
        NCCL broadcast from rank 0 to `plan.nccl`; bytes sent."""
        import ray

        from seamless.trainer.weight_push import NcclPeers

        nccl = None
        if plan.nccl:
            if self._nccl_endpoint is None:  # one address for the run: the group is kept across steps
                self._nccl_endpoint = ray.get(self._workers[0].endpoint.remote())
            nccl = NcclPeers(tuple(plan.nccl), *self._nccl_endpoint)
        bucket_bytes = self.config.export_bucket_mb << 20
        return sum(ray.get([w.push_weights.remote(plan.ipc.get(rank), bool(plan.ipc), nccl, bucket_bytes)
                            for rank, w in enumerate(self._workers)]))

    def weights_id(self) -> tuple[int, int]:
        """Changes whenever the weights do: every optimizer step (RL or supervised) moves it."""
        return self.optimizer_steps, self.sft_steps

    def weight_bytes(self) -> int:
        import ray

        if self._weight_bytes is None:
            self._weight_bytes = ray.get(self._workers[0].weight_bytes.remote())
        return self._weight_bytes

    def save_checkpoint(self, root: str | Path, extra_state: dict[str, Any] | None = None) -> Path:
        """Save to root/step_NNNNNNNN (every rank's shard, optimizer, RNG); keep the newest K.

        `extra_state` (e.g. the data position) must be JSON; `load_checkpoint` returns it.
        The folder must be on storage every rank can write (one machine, or a shared file system).
        """
        import ray

        folder = Path(root).resolve() / f"step_{self.step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "optimizer_steps": self.optimizer_steps,
                 "sft_steps": self.sft_steps, "extra_state": extra_state or {}}
        ray.get([w.save.remote(str(folder), {"seamless": state}) for w in self._workers])
        # written last: a folder without it is an interrupted save and is never loaded
        (folder / _STATE_FILE).write_text(json.dumps(state, indent=1))
        complete = sorted(p for p in folder.parent.glob("step_*") if (p / _STATE_FILE).exists())
        for old in complete[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Resume from a step folder, or from the newest complete one under a root. Returns extra_state."""
        import ray

        folder = latest_checkpoint(path)
        ray.get([w.load.remote(str(folder)) for w in self._workers])
        state = json.loads((folder / _STATE_FILE).read_text())
        self.step = state["step"]
        self.optimizer_steps, self.sft_steps = state["optimizer_steps"], state["sft_steps"]
        return state["extra_state"]

    def export_weights(self, bucket_bytes: int | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Full (gathered) policy weights as buckets of (HF name, CPU tensor), about bucket_bytes each."""
        import ray

        bucket_bytes = bucket_bytes or self.config.export_bucket_mb << 20
        plan = ray.get(self._workers[0].bucket_plan.remote(bucket_bytes))
        # under ZeRO-3 the gather is collective; otherwise rank 0 holds full weights
        workers = self._workers if self.zero_stage == 3 else self._workers[:1]
        for names in plan:
            yield ray.get([w.gather.remote(names) for w in workers])[0]

    def export_hf(self, out_dir: str | Path) -> Path:
        """A Hugging Face folder (config, tokenizer, model.safetensors) that transformers and vLLM load."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {name: t.contiguous() for bucket in self.export_weights() for name, t in bucket}
        for src in self.model_dir.iterdir():  # config, generation config, tokenizer files
            if src.is_file() and not src.name.endswith((".safetensors", ".bin")) and src.name != "model.safetensors.index.json":
                shutil.copy2(src, out / src.name)
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out

    def describe(self) -> list[dict[str, Any]]:
        """Per rank: ZeRO stage, whether the policy was built as shards, the device it computes on."""
        import ray

        return ray.get([w.describe.remote() for w in self._workers])

    def memory_stats(self) -> list[dict[str, float]]:
        """Per rank: peak accelerator memory and RSS, in GiB."""
        import ray

        return ray.get([w.memory_stats.remote() for w in self._workers])

    # --- lifecycle ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Leave the process group on every rank, then end the actors."""
        import ray

        if not self._workers:
            return
        try:
            ray.get([w.shutdown.remote() for w in self._workers], timeout=120)
        finally:
            self.kill()

    def kill(self) -> None:
        """End the actors at once (what a crash looks like); prefer shutdown()."""
        import ray

        for w in self._workers:
            ray.kill(w)
        self._workers = []

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def old_logprobs_from_the_update(config: TrainerConfig, algorithm: Algorithm, batch_size: int) -> bool:
    """Whether a step takes the logprobs its batch is trained from ("old" logprobs) from its first
    gradient pass instead of a no-grad pass before it (one forward pass over the batch saved; TRL
    skips it for one update).

    Exact with one mini-batch, for any number of epochs: each epoch is one optimizer update over
    every row, in order, on the micro-batches the no-grad pass would run (`_micro_batches` of the
    same rows), and the first update's pass runs the step's starting weights, the ones the no-grad
    pass would run (gradients accumulate over the micro-batches; the optimizer steps once, after
    the last). So the first update's logprobs, detached, are the old logprobs: its ratio is 1 and
    its gradient the same, and the later updates get them from it (`_optimize`) as they would from
    the no-grad pass. (The no-grad pass runs in eval mode, the update in train mode: the same
    logprobs for models without dropout, as Llama and Qwen2 are configured.) With more
    mini-batches, the rows of the second are first forwarded after an update has moved the
    weights. The no-grad pass also gives the reference's logprobs and the critic's values, so it
    stays when the algorithm needs either."""
    return (min(config.mini_batches, batch_size) == 1
            and not algorithm.needs_reference and not algorithm.needs_critic)


def rank_cpu_threads(recipe: Recipe, num_ranks: int) -> int | None:
    """Torch threads per rank on CPU: trainer.cpu_threads, else under colocated (every server is
    paused while the ranks train) the cluster's CPUs shared among the ranks, else None (OMP_NUM_THREADS).
    Plain PyTorch on the tiny recipe's batch: 228 ms a step at 1 thread, 163 ms at 2."""
    if recipe.trainer.cpu_threads is not None:
        return recipe.trainer.cpu_threads
    if recipe.cluster.policy != "colocated":
        return None
    return max(1, (recipe.cluster.num_cpus or os.cpu_count() or 1) // max(num_ranks, 1))


def spawn_ranks(spec: WorkerSpec, num_ranks: int, slots: Sequence[DeviceSlot] | None = None,
                gpus_per_rank: float = 1.0) -> list[Any]:
    """One Ray actor per rank, each on its device slot (or anywhere with `gpus_per_rank` GPUs)."""
    import ray

    env = {k: os.environ[k] for k in _RANK_ENV if k in os.environ}
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    # ranks must import the same seamless as the driver (a checkout may shadow an installed copy)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    workers = []
    for rank in range(num_ranks):
        # num_cpus=0: a rank is bound by its GPU, and on a 2-CPU cluster each rank asking for a
        # CPU would leave nothing for the rest
        placement = slots[rank].actor_options() if slots is not None else {"num_cpus": 0, "num_gpus": gpus_per_rank}
        shared = slots is not None and slots[rank].shared
        actor = ray.remote(TrainWorker).options(runtime_env={"env_vars": env}, **placement)
        workers.append(actor.remote(rank, num_ranks, spec, shared))
    return workers


def latest_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a complete step folder, else its newest complete step_* child."""
    path = Path(path)
    if (path / _STATE_FILE).exists():
        return path
    complete = sorted(p for p in path.glob("step_*") if (p / _STATE_FILE).exists())
    if not complete:
        raise SeamlessError(f"no complete checkpoint under {path}; pass a folder written by save_checkpoint "
                            f"(it holds {_STATE_FILE})")
    return complete[-1]


def _merge_rank_metrics(results: list[dict[str, float]], num_ranks: int) -> dict[str, float]:
    """Add up per-rank shares (maxima by max); grad norms are already global, so take them once."""
    merged: dict[str, float] = {}
    for result in results:
        for key, value in result.items():
            if key.endswith("grad_norm"):
                merged[key] = value
            else:
                add_share(merged, key, value)
    return merged
