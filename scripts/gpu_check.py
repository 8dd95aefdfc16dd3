"""The GPU check: what seamless does on one CUDA GPU, as JSON (a check, not a test; CI has no GPU).

    source scripts/env.sh && .venv/bin/python scripts/gpu_check.py --out gpu_check.json

Builds a Qwen2-shaped 0.5B model locally (hidden 896, 24 layers, 14 heads, 2 KV heads, vocab
151,936, tied embeddings; random weights, no hub) and runs, each section on its own:

- `matmul`: bf16 8192^3 matmul TFLOP/s (the ceiling MFU is read against);
- `train_step`: seamless's trainer rank (DeepSpeed ZeRO-2, bf16, in this process, no Ray) against
  plain PyTorch (fp32 weights, bf16 autocast, fused AdamW) on the same micro-batches with the same
  loss: tokens/s, MFU, peak memory;
- `logprobs`: the trainer's logprobs against a plain transformers forward of the same weights;
- `offload`: the rank's `offload_states` / `reload_states` in the role switch's order: seconds, GiB freed;
- `ipc`: a CUDA IPC hand-off of 1 GiB of bf16 weights to a second process: GB/s;
- `rank_ipc`: the trainer rank's own weights, bucket by bucket, in the payload it sends vLLM
  (trainer/weight_push.py), rebuilt and copied by a second process: GB/s, and equal to the rank's;
- `colocated`: where vLLM is installed, a server sharing the rank's GPU (sleep mode, IPC backend):
  the role switch timed both ways with the GPU memory each move frees, the weights sent by CUDA IPC
  from the rank (GB/s), and vLLM's logprobs after it against the rank's weights and the old ones;
- `vllm`: where vLLM is installed, a server on the model: generation tokens/s, a weight update
  from /dev/shm (seconds) and the server's logprobs after it against transformers'.

Every section that cannot run says why (`"skipped": reason`): a bare GPU machine may have torch and
transformers but no vLLM, Ray or DeepSpeed. The JSON is rewritten after each section, so a run cut
short keeps what it measured. Without a GPU every section but `environment` skips, saying why;
`--device cpu --layers 2 --hidden 64 --vocab 1024 --seq-len 64` runs the trainer-side sections on
a CPU in seconds (tests/scripts/test_gpu_check.py), so the script cannot rot where no GPU is at
hand. Exit status: 0 when no section failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30


class Skip(Exception):
    """A section that cannot run here; the message says why."""


@dataclass
class Check:
    args: argparse.Namespace
    device: str
    work: Path
    results: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    worker: Any = None  # the seamless trainer rank, once built
    batch: list[Any] = field(default_factory=list)  # micro-batches every section trains on

    def need_cuda(self) -> None:
        if self.device != "cuda":
            raise Skip("needs a CUDA device; torch sees none here")

    def need(self, *modules: str) -> None:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise Skip(f"{', '.join(missing)} not installed here")


# --- sections ----------------------------------------------------------------------------------


def environment(c: Check) -> dict[str, Any]:
    import torch
    import transformers

    out: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "device": c.device, "cuda_available": torch.cuda.is_available()}
    for name in ("deepspeed", "vllm", "ray", "pydantic"):
        out[name] = _version(name)
    if c.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GiB, 1), cuda=torch.version.cuda)
    return out


def build_model(c: Check) -> dict[str, Any]:
    """A Qwen2-shaped model with random weights, saved as bf16 safetensors with a local tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from seamless.models.tiny import build_tokenizer

    if c.device == "none":
        raise Skip("no CUDA device is visible; `--device cpu` with a small shape (e.g. --layers 2 --hidden 64 "
                   "--vocab 1024 --seq-len 64) runs the trainer-side sections on the CPU")
    a = c.args
    config = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=max(1, a.hidden // 64),
                         num_key_value_heads=2 if a.hidden >= 128 else 1, max_position_embeddings=4096,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=0,
                         torch_dtype="bfloat16")
    started = time.perf_counter()
    with torch.device(c.device):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    c.model_dir = c.work / "model"
    model.save_pretrained(c.model_dir, safe_serialization=True)
    build_tokenizer(256 + 64, seed=0).save_pretrained(c.model_dir)  # smaller than the vocab, as Qwen's is
    params = sum(p.numel() for p in model.parameters())
    del model
    _empty_cache(c)
    return {"parameters": params, "tied": True, "seconds": round(time.perf_counter() - started, 1)}


def matmul(c: Check) -> dict[str, Any]:
    c.need_cuda()
    import torch

    n = 8192
    x, y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize()
    started, reps = time.perf_counter(), 20
    for _ in range(reps):
        x @ y
    torch.cuda.synchronize()
    tflops = 2 * n**3 * reps / (time.perf_counter() - started) / 1e12
    c.results["_peak_tflops"] = tflops
    return {"bf16_tflops": round(tflops, 1)}


def train_step(c: Check) -> dict[str, Any]:
    """seamless's rank and plain PyTorch, each a few optimizer steps on the same micro-batches."""
    if c.model_dir is None:
        raise Skip("no model (build_model did not run)")
    c.need("deepspeed", "pydantic")
    c.worker, c.batch = _seamless_rank(c), _micro_batches(c)
    tokens = sum(int(mb.attention_mask.sum()) for mb in c.batch)
    params = c.results["build_model"]["parameters"]
    out: dict[str, Any] = {"tokens_per_step": tokens, "micro_batches": len(c.batch)}
    for name, step in (("seamless", lambda: c.worker.train_policy(c.batch, 1e-6)), ("plain_torch", _plain_step(c))):
        _reset_peak(c)
        step()  # warm-up: allocations, kernels picked
        times = []
        for _ in range(c.args.steps):
            started = time.perf_counter()
            step()
            _sync(c)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        row = {"step_s": round(median, 4), "tokens_per_s": round(tokens / median), "peak_memory_gib": _peak_gib(c)}
        if "_peak_tflops" in c.results:  # 6 N FLOPs a trained token (forward + backward), attention left out
            row["mfu_vs_matmul"] = round(6 * params * tokens / median / 1e12 / c.results["_peak_tflops"], 3)
        out[name] = row
    out["seamless_vs_plain"] = round(out["seamless"]["tokens_per_s"] / out["plain_torch"]["tokens_per_s"], 3)
    return out


def logprobs(c: Check) -> dict[str, Any]:
    """The trainer rank's logprobs (bf16 engine) against transformers' on the same weights."""
    if c.worker is None:
        raise Skip("no trainer rank (train_step did not run)")
    import torch
    from transformers import AutoModelForCausalLM

    from seamless.algorithms import logprobs_from_logits

    mb = c.batch[0]
    ours = c.worker.forward([mb], want_reference=False, want_values=False)[0]["logprobs"]
    state = {n: p.detach().to("cpu", copy=True) for n, p in c.worker.engines.policy.module.named_parameters()}
    out: dict[str, Any] = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(c.model_dir, dtype=dtype).to(c.device).eval()
        model.load_state_dict({n: t.to(dtype) for n, t in state.items()}, strict=False)  # the trained weights
        with torch.no_grad():
            logits = model(input_ids=mb.token_ids.to(c.device), attention_mask=mb.attention_mask.to(c.device)).logits
            theirs = logprobs_from_logits(logits, mb.token_ids.to(c.device)).cpu()
        mask = mb.loss_mask.bool()
        diff = (ours - theirs)[mask].abs()
        out[f"vs_hf_{str(dtype).removeprefix('torch.')}"] = {"max_abs": round(float(diff.max()), 5),
                                                             "mean_abs": round(float(diff.mean()), 6)}
        del model
        _empty_cache(c)
    return out


def offload(c: Check) -> dict[str, Any]:
    """What a [train, rollout] GPU frees when its rank steps aside for vLLM, and what coming back
    costs, through the rank's own `offload_states` / `reload_states` in the role switch's order
    (rollout/switch.py): optimizer and gradients first, then the parameters (after the weights
    reached vLLM), all back before the next step. On CPU (`--device cpu`) the same DeepSpeed calls
    run, host memory to host memory (nothing freed), and the rank must still train after them."""
    if c.worker is None:
        raise Skip("no trainer rank (train_step did not run)")
    import torch

    c.worker.shares_device = True  # a vLLM server beside it: the rank offloads only then
    _sync(c)
    allocated = (lambda: torch.cuda.memory_allocated()) if c.device == "cuda" else (lambda: 0)  # noqa: E731
    before = allocated()
    started = time.perf_counter()
    optimizer_freed = c.worker.offload_states(["optimizer", "grads"])
    optimizer_s = time.perf_counter() - started
    started = time.perf_counter()
    params_freed = c.worker.offload_states(["params"])
    params_s = time.perf_counter() - started
    after = allocated()
    started = time.perf_counter()
    c.worker.reload_states()
    reload_s = time.perf_counter() - started
    loss_after = c.worker.train_policy(c.batch, 1e-6).metrics["loss"]  # still trains after the round trip
    return {"offload_optimizer_s": round(optimizer_s, 3), "offload_params_s": round(params_s, 3),
            "reload_s": round(reload_s, 3), "allocated_before_gib": round(before / GiB, 2),
            "allocated_offloaded_gib": round(after / GiB, 2),
            "freed_optimizer_gib": round(optimizer_freed / GiB, 2), "freed_params_gib": round(params_freed / GiB, 2),
            "loss_after_reload": loss_after}


def ipc(c: Check) -> dict[str, Any]:
    """1 GiB of bf16 handed to a second process by CUDA IPC handle, copied there into its own buffer."""
    c.need_cuda()
    import torch
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    handles, answers = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_ipc_receiver, args=(handles, answers), daemon=True)
    child.start()
    tensor = torch.randn(GiB // 2, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    rounds = []
    for _ in range(3):
        handles.put(tensor)  # pickled as a CUDA IPC handle; the memory is never copied to the host
        rounds.append(answers.get(timeout=120))
    handles.put(None)
    child.join(timeout=60)
    best = min(rounds, key=lambda r: r["seconds"])
    return {"bytes": GiB, "open_s": round(best["open_s"], 4), "copy_s": round(best["seconds"], 4),
            "gb_per_s": round(GiB / best["seconds"] / 1e9, 1), "checksum_ok": all(r["ok"] for r in rounds)}


def vllm(c: Check) -> dict[str, Any]:
    """A vLLM server on the model: generation speed, a weight update, logprobs after it."""
    c.need_cuda()
    c.need("vllm")
    import httpx
    import torch

    from seamless.rollout.transport import DiskTransport, post_each
    from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

    options = VLLMServerOptions(dtype="bfloat16", max_model_len=2048, gpu_memory_utilization=0.3,
                                served_model_name="check", enable_sleep_mode=True)
    out: dict[str, Any] = {}
    with VLLMServer(c.model_dir, c.work / "vllm", options) as server:
        body = {"model": "check", "prompt": [5, 6, 7, 8], "max_tokens": 256, "temperature": 1.0, "ignore_eos": True}
        started = time.perf_counter()
        post_each([server.url] * 64, "/v1/completions", json=body)
        out["generation_tokens_per_s"] = round(64 * 256 / (time.perf_counter() - started))
        # new weights (perturbed, so old and new logprobs differ by far more than the sync error)
        from safetensors.torch import load_file

        state = {k: (v.float() + 0.02 * torch.randn_like(v.float())).to(torch.bfloat16)
                 for k, v in load_file(str(c.model_dir / "model.safetensors")).items()}
        transport = DiskTransport(Path("/dev/shm") / f"seamless-gpu-check-{os.getpid()}")
        started = time.perf_counter()
        transport.stage([list(state.items())], 1)
        stage_s = time.perf_counter() - started
        post_each([server.url], "/pause", params={"mode": "keep"})
        started = time.perf_counter()
        transport.load([server.url], 1)
        post_each([server.url], "/collective_rpc", json={"method": "refresh_tied_lm_head"})
        load_s = time.perf_counter() - started
        post_each([server.url], "/reset_prefix_cache")
        post_each([server.url], "/resume")
        probe = {"model": "check", "prompt": list(range(10, 42)), "max_tokens": 16, "temperature": 0.0,
                 "logprobs": 0, "return_token_ids": True, "ignore_eos": True}
        choice = httpx.post(f"{server.url}/v1/completions", json=probe, timeout=120).json()["choices"][0]
        served = torch.tensor(choice["logprobs"]["token_logprobs"])
        new, old = (_hf_logprobs(c, state, probe["prompt"], choice["token_ids"]),
                    _hf_logprobs(c, None, probe["prompt"], choice["token_ids"]))
        out.update(sync_stage_s=round(stage_s, 3), sync_load_s=round(load_s, 3),
                   logprob_vs_new_max_abs=round(float((served - new).abs().max()), 4),
                   logprob_old_vs_new_max_abs=round(float((old - new).abs().max()), 4))
        for path, params in (("/sleep", {"level": 1}), ("/wake_up", {})):
            started = time.perf_counter()
            post_each([server.url], path, params=params)
            out[f"{path.strip('/')}_s"] = round(time.perf_counter() - started, 3)
    return out


def rank_ipc(c: Check) -> dict[str, Any]:
    """The rank's weights in the IPC payload it sends vLLM, rebuilt by a second process (vLLM's
    engine does the same), copied there and checked against the rank's."""
    c.need_cuda()
    if c.worker is None:
        raise Skip("no trainer rank (train_step did not run)")
    import torch
    import torch.multiprocessing as mp

    from seamless.trainer.weight_push import gathered_buckets, ipc_update_info

    ctx = mp.get_context("spawn")
    payloads, answers = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_rank_ipc_receiver, args=(payloads, answers), daemon=True)
    child.start()
    module = c.worker.engines.policy.module
    buckets = c.worker.bucket_plan(512 << 20)
    sent = mismatched = 0
    started = time.perf_counter()
    for named in gathered_buckets(module, False, buckets):
        payloads.put(ipc_update_info(named))
        answer = answers.get(timeout=300)  # the handles stay valid until the receiver has copied
        ours = [float(t.float().sum()) for _, t in named]
        mismatched += sum(a != b for a, b in zip(ours, answer["sums"]))
        sent += sum(t.numel() * t.element_size() for _, t in named)
    seconds = time.perf_counter() - started
    payloads.put(None)
    child.join(timeout=60)
    torch.cuda.ipc_collect()
    return {"bytes": sent, "buckets": len(buckets), "seconds": round(seconds, 3),
            "gb_per_s": round(sent / seconds / 1e9, 2), "tensors_differing": mismatched}


def colocated(c: Check) -> dict[str, Any]:
    """A vLLM server on the rank's GPU: the role switch both ways (rollout/switch.py's order), the
    weights sent from the rank by CUDA IPC, and what the server computes with them."""
    c.need_cuda()
    c.need("vllm")
    if c.worker is None:
        raise Skip("no trainer rank (train_step did not run)")
    import httpx
    import torch

    from seamless.rollout.transport import post_each
    from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

    free = lambda: torch.cuda.mem_get_info()[0]  # noqa: E731 - the device's, whoever frees it
    out: dict[str, Any] = {}

    def move(name: str, fn: Callable[[], Any]) -> None:
        before, started = free(), time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out[name] = {"s": round(time.perf_counter() - started, 3), "freed_gib": round((free() - before) / GiB, 2)}

    c.worker.shares_device = True
    with torch.no_grad():  # new weights, far from the ones vLLM starts with
        for p in c.worker.engines.policy.module.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = {n: p.detach().to("cpu", copy=True) for n, p in c.worker.engines.policy.module.named_parameters()}
    options = VLLMServerOptions(dtype="bfloat16", max_model_len=2048, gpu_memory_utilization=0.3,
                                served_model_name="check", enable_sleep_mode=True, weight_transfer="ipc")
    with VLLMServer(c.model_dir, c.work / "vllm-colocated", options) as server:
        url = [server.url]
        # rollout -> train
        move("vllm_sleep_level2", lambda: post_each(url, "/sleep", params={"level": 2}))
        move("trainer_reload", c.worker.reload_states)
        # train -> rollout
        move("trainer_offload_optimizer", lambda: c.worker.offload_states(["optimizer", "grads"]))
        move("vllm_wake_weights", lambda: post_each(url, "/wake_up", params={"tags": "weights"}))
        started = time.perf_counter()
        sent = c.worker.push_weights(server.url, True, None, 512 << 20)
        push_s = time.perf_counter() - started
        out["ipc_push"] = {"bytes": sent, "s": round(push_s, 3), "gb_per_s": round(sent / push_s / 1e9, 2)}
        move("trainer_offload_params", lambda: c.worker.offload_states(["params"]))
        move("vllm_wake_kv_cache", lambda: post_each(url, "/wake_up", params={"tags": "kv_cache"}))
        post_each(url, "/reset_prefix_cache")
        probe = {"model": "check", "prompt": list(range(10, 42)), "max_tokens": 16, "temperature": 0.0,
                 "logprobs": 0, "return_token_ids": True, "ignore_eos": True}
        choice = httpx.post(f"{server.url}/v1/completions", json=probe, timeout=120).json()["choices"][0]
        served = torch.tensor(choice["logprobs"]["token_logprobs"])
        move("trainer_reload_after", c.worker.reload_states)
    new = _hf_logprobs(c, state, probe["prompt"], choice["token_ids"])
    old = _hf_logprobs(c, None, probe["prompt"], choice["token_ids"])
    out.update(logprob_vs_rank_max_abs=round(float((served - new).abs().max()), 4),
               logprob_old_vs_rank_max_abs=round(float((old - new).abs().max()), 4))
    return out


SECTIONS: list[tuple[str, Callable[[Check], dict[str, Any]]]] = [
    ("environment", environment), ("build_model", build_model), ("matmul", matmul), ("train_step", train_step),
    ("logprobs", logprobs), ("offload", offload), ("ipc", ipc), ("rank_ipc", rank_ipc), ("vllm", vllm),
    ("colocated", colocated)]


# --- helpers -----------------------------------------------------------------------------------


def _seamless_rank(c: Check) -> Any:
    """seamless's TrainWorker in this process: world size 1, ZeRO-2, bf16 on GPUs (fp32 on CPU)."""
    from seamless.config import GrpoConfig
    from seamless.services.process import free_port
    from seamless.trainer.engines import deepspeed_config
    from seamless.trainer.worker import TrainWorker, WorkerSpec

    dtype = "bfloat16" if c.device == "cuda" else "float32"
    ds = deepspeed_config({"zero_optimization": {"stage": 2}}, world_size=1, grad_clip=1.0, dtype=dtype)
    spec = WorkerSpec(model_dir=str(c.model_dir), ds_config=ds, dtype=dtype, lr=1e-6, critic_lr=1e-6,
                      weight_decay=0.0, need_reference=False, need_critic=False,
                      algorithm=GrpoConfig(max_staleness=10**6), seed=0)
    worker = TrainWorker(0, 1, spec)
    worker.setup("127.0.0.1", free_port(), "127.0.0.1")  # one rank: the process group on loopback
    return worker


def _micro_batches(c: Check) -> list[Any]:
    """The step's micro-batches, packed and stamped as seamless's trainer does it."""
    import torch

    from seamless.trainer.batch import TrainBatch, pack_by_tokens, slice_micro_batch, with_denominators
    from bench_trainer import synthetic_sequences

    a = c.args
    prompt = a.seq_len // 4
    sequences = synthetic_sequences(a.sequences, prompt, a.seq_len - prompt, vocab=a.vocab)
    batch = TrainBatch.from_sequences(sequences, pad_id=0)
    rows = list(range(batch.size))
    groups = pack_by_tokens([int(n) for n in batch.lengths], a.micro_batch * a.seq_len)
    gen = torch.Generator().manual_seed(0)
    per_token = {"old_logprobs": batch.rollout_logprobs, "advantages": torch.randn(batch.token_ids.shape, generator=gen),
                 "is_weights": None, "ref_logprobs": None}
    mbs = [slice_micro_batch(batch, g, 0, **per_token) for g in groups]
    return with_denominators([mbs], batch.loss_mask, rows)[0]


def _plain_step(c: Check) -> Callable[[], None]:
    """Plain PyTorch on the same micro-batches and loss: fp32 weights, bf16 autocast, fused AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    from seamless.trainer.objective import policy_objective
    from seamless.trainer.worker import _to_device

    algo = c.worker.spec.algorithm
    model = AutoModelForCausalLM.from_pretrained(c.model_dir, dtype=torch.float32).to(c.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=c.device == "cuda")
    autocast = torch.autocast(c.device, dtype=torch.bfloat16, enabled=c.device == "cuda")

    def step() -> None:
        for mb in c.batch:
            mb = _to_device(mb, torch.device(c.device))
            with autocast:
                logits = model(input_ids=mb.token_ids, attention_mask=mb.attention_mask).logits
            loss, _ = policy_objective(logits, mb, algo)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _hf_logprobs(c: Check, state: dict[str, Any] | None, prompt: list[int], completion: list[int]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(c.model_dir, dtype=torch.bfloat16).to(c.device).eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion], device=c.device)).logits[0, len(prompt) - 1:-1].float()
    picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion, device=c.device)[:, None])[:, 0]
    del model
    _empty_cache(c)
    return picked.cpu()


def _ipc_receiver(handles: Any, answers: Any) -> None:
    import torch

    torch.cuda.init()
    own = None
    while (tensor := handles.get()) is not None:  # unpickling opens the handle: the sender's memory
        started = time.perf_counter()
        if own is None:
            own = torch.empty_like(tensor)
        opened = time.perf_counter()
        own.copy_(tensor)
        torch.cuda.synchronize()
        done = time.perf_counter()
        answers.put({"open_s": opened - started, "seconds": done - started,
                     "ok": bool(torch.equal(own[:1024], tensor[:1024]))})
        del tensor


def _rank_ipc_receiver(payloads: Any, answers: Any) -> None:
    import torch

    from seamless.trainer.weight_push import rebuild_ipc

    torch.cuda.init()
    while (payload := payloads.get()) is not None:
        named = rebuild_ipc(payload, torch.cuda.current_device())  # opens the rank's memory
        copies = [t.clone() for _, t in named]  # what vLLM's load does: into memory of its own
        torch.cuda.synchronize()
        answers.put({"sums": [float(t.float().sum()) for t in copies]})
        del named, copies


def _version(name: str) -> str | None:
    import importlib.metadata

    for dist in (name, f"{name}-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _sync(c: Check) -> None:
    if c.device == "cuda":
        import torch

        torch.cuda.synchronize()


def _empty_cache(c: Check) -> None:
    if c.device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _reset_peak(c: Check) -> None:
    if c.device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_gib(c: Check) -> float | None:
    if c.device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / GiB, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="JSON file to write (rewritten after each section)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when torch sees a GPU; without one every section but environment skips")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--sequences", type=int, default=16, help="sequences per step")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per trainer")
    parser.add_argument("--only", nargs="*", help="run only these sections (environment and build_model always run)")
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "none")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device == "cuda" else "cpu")
    work = Path(tempfile.mkdtemp(prefix="seamless-gpu-check-"))
    check = Check(args=args, device=device, work=work)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    try:
        failed = _run_sections(check, report)
    finally:
        if check.worker is not None:
            check.worker.shutdown()  # leave the process group (an abort at exit otherwise)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(Path("/dev/shm") / f"seamless-gpu-check-{os.getpid()}", ignore_errors=True)
    return 1 if failed else 0


def _run_sections(check: Check, report: dict[str, Any]) -> bool:
    """Every section in order; True when one failed (not skipped)."""
    args, failed = check.args, False
    for name, section in SECTIONS:
        if args.only and name not in args.only and name not in ("environment", "build_model"):
            continue
        started = time.perf_counter()
        try:
            result = section(check)
        except Skip as skip:
            result = {"skipped": str(skip)}
        except Exception as exc:  # one broken section must not hide what the others measure
            failed = True
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        result["wall_s"] = round(time.perf_counter() - started, 2)
        check.results[name] = report["sections"][name] = result
        print(f"gpu_check: {name}: {json.dumps({k: v for k, v in result.items() if k != 'traceback'})}",
              file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return failed


if __name__ == "__main__":
    sys.exit(main())
