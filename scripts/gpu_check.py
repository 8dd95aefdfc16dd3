"""bf16 ZeRO-2 training steps of the seamless trainer on a small Llama config, on one CUDA GPU.

    source scripts/env.sh && .venv/bin/python scripts/gpu_check.py [--layers 24] [--seq-len 2048]

Builds a randomly initialized Llama (default: the 0.5B shape of DESIGN.md section 4: hidden 896,
24 layers, vocab 151,936), runs GRPO steps through `seamless.trainer.Trainer` (a Ray actor with
DeepSpeed ZeRO-2, bf16, NCCL), and prints tokens/s and peak GPU memory. DESIGN.md's reference for
this shape: DeepSpeed ZeRO-2 bf16 trained 41.8k tokens/s on an H100 (sequence 2048, micro-batch 4).
Exits with status 2 and a message when no CUDA device exists.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_model(out: Path, layers: int, hidden: int, intermediate: int, vocab: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0,
                         torch_dtype="bfloat16")
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--sequences", type=int, default=16, help="sequences per step")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run this on a "
              "machine with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    os.environ["DS_ACCELERATOR"] = "cuda"
    from bench_trainer import synthetic_sequences

    from seamless.config import GrpoConfig, TrainerConfig
    from seamless.ray_cluster import start_ray, stop_ray
    from seamless.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="seamless-gpu-check-"))
    start = time.perf_counter()
    model_dir = build_model(work / "model", args.layers, args.hidden, args.intermediate, args.vocab)
    torch.cuda.empty_cache()
    print(f"{torch.cuda.get_device_name(0)}; model built in {time.perf_counter() - start:.1f} s", flush=True)
    prompt = args.seq_len // 4
    sequences = synthetic_sequences(args.sequences, prompt, args.seq_len - prompt, vocab=args.vocab)
    config = TrainerConfig(lr=1e-5, micro_batch_tokens=args.micro_batch * args.seq_len,
                           deepspeed={"zero_optimization": {"stage": 2}})
    algo = GrpoConfig(max_staleness=10**6)
    start_ray(num_gpus=1, num_cpus=4)
    try:
        with Trainer(model_dir, algo, config, num_ranks=1, dtype="bfloat16") as trainer:
            trainer.train_step(sequences)  # warm-up
            times, tokens = [], 0
            for _ in range(args.steps):
                t0 = time.perf_counter()
                metrics = trainer.train_step(sequences)
                times.append(time.perf_counter() - t0)
                tokens = metrics.num_tokens
                print(f"step {metrics.step}: {times[-1]:.2f} s, loss {metrics.loss:.4f}, "
                      f"grad norm {metrics.grad_norm:.3f}", flush=True)
            memory = trainer.memory_stats()[0]
    finally:
        stop_ray()
    step_s = statistics.median(times)
    print(f"ZeRO-2 bf16, {args.layers} layers x {args.hidden}, vocab {args.vocab}, {args.sequences} x "
          f"{args.seq_len} tokens per step, micro-batch {args.micro_batch}")
    print(f"trained tokens/s {tokens / step_s:,.0f} (gradient pass only: step time includes the logprob pass); "
          f"all tokens/s {2 * tokens / step_s:,.0f}; peak GPU memory {memory['peak_gpu_gib']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
