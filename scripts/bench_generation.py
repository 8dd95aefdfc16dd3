"""Decoding on the tiny model: the vLLM server seamless rolls out with, beside transformers `generate`
(TRL's generator in scripts/bench_e2e.py), on the same weights and batch (a benchmark, not a test).

    source scripts/env.sh && flock /tmp/seamless-heavy.lock .venv/bin/python scripts/bench_generation.py [--tokens 150] [--batches 1 8 64]

It answers "what bounds seamless's rollout on a CPU": for every batch size, both sides sample
exactly `--tokens` new tokens per sequence (min = max tokens) from one short prompt, and the table
gives the wall time of the whole batch and the milliseconds of one decode step (wall time / tokens).
A decode step that costs the same at batch 1 as at batch 64 is the engine's own per-step work, not
the model's arithmetic.

- vLLM: one server started as a run starts its servers (`seamless.rollout.fleet.server_options`
  of the long-answer recipe: same dtype, context, KV cache; one engine process on OMP_NUM_THREADS),
  sent what the proxy sends for a merged GRPO group: chat requests of n = min(batch, 8) choices,
  streamed every `proxy.stream_interval` tokens of the recipe (16 for the long recipe, 1 for the
  policies recipes), with the sampled tokens' logprobs and token ids.
- transformers: `generate` in this process with sampling (T=1), `--hf-threads` torch threads (TRL's
  side of bench_e2e runs with the machine's 2).
- `--server-args "FLAGS"` adds a second vLLM server with those flags beside the first (e.g.
  "--no-enforce-eager" to let vLLM compile the model), to try a flag against the default.
The sides alternate, repeat by repeat, so a noisy machine slows them alike; medians are printed.

It also counts the CPU seconds each process of a vLLM server (the API server, its engine core)
spends while the server decodes: a server keeps that many cores busy, which is what
`cluster.sim.server_workers` tells the simulator of a CPU test bed (total CPU over the busiest
process's: the engine sets the pace, the API server's work comes on top).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seamless.config import load_recipe  # noqa: E402
from seamless.models.tiny import build_tiny_model  # noqa: E402
from seamless.rollout.fleet import server_options  # noqa: E402
from seamless.services.vllm_server import VLLMServer  # noqa: E402

PROMPT = "List the numbers from 3 to 50."
GROUP = 8
"""Choices per request: a GRPO group of the tiny recipes, merged by the proxy into one request."""


def vllm_body(n: int, tokens: int, stream_interval: int) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "n": n,
            "max_tokens": tokens, "min_tokens": tokens, "temperature": 1.0, "logprobs": True,
            "return_token_ids": True, "stream": True, "stream_options": {"include_usage": True},
            "stream_interval": stream_interval}


async def vllm_batch(client, url: str, batch: int, tokens: int, stream_interval: int) -> float:
    """Seconds to sample `tokens` tokens for each of `batch` sequences on the server."""
    async def one(n: int) -> int:
        body = vllm_body(n, tokens, stream_interval)
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
            if r.status_code != 200:
                raise SystemExit(f"vLLM answered {r.status_code}: {(await r.aread())[:300]!r}")
            return sum([len(chunk) async for chunk in r.aiter_raw()])

    sizes = [GROUP] * (batch // GROUP) + ([batch % GROUP] if batch % GROUP else [])
    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in sizes))
    return time.perf_counter() - started


def hf_batch(model, prompt_ids, batch: int, tokens: int) -> float:
    import torch

    ids = prompt_ids.repeat(batch, 1)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
                             max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
    elapsed = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == tokens, out.shape
    return elapsed


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of the least-squares line through (x, y) points."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a Hugging Face folder (default: build the tiny model)")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "grpo_tiny_long_cpu.yaml"),
                        help="recipe whose vLLM server options are used")
    parser.add_argument("--tokens", type=int, default=150, help="new tokens per sequence (the long recipe: 134-175)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hf-threads", type=int, default=2)
    parser.add_argument("--server-args", default="", help="vLLM flags of a second server to compare")
    args = parser.parse_args()
    if args.tokens < 1 or args.repeats < 1 or min(args.batches) < 1:
        parser.error("--tokens, --repeats and every --batches value must be at least 1")
    if len(set(args.batches)) != len(args.batches):
        parser.error("--batches: give each batch size once")

    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    model_dir = args.model or build_tiny_model(work / "tiny")
    recipe = load_recipe(args.recipe, [])
    torch.set_num_threads(args.hf_threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           tokenize=False)
    prompt_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids

    options = server_options(recipe.model, recipe.rollout)
    options.served_model_name = "tiny"
    sides = {"vLLM": options}
    if args.server_args:
        sides[f"vLLM {args.server_args}"] = dataclasses.replace(
            options, extra_args=[*options.extra_args, *shlex.split(args.server_args)])
    print(f"model {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
          f"{args.tokens} new tokens a sequence, streamed every {recipe.proxy.stream_interval}, {args.repeats} repeats "
          "after one warm-up round a batch size")
    seconds: dict[tuple[str, int], list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}  # side -> process name -> CPU seconds while decoding
    pids: dict[str, int] = {}

    async def timed_batch(client, side: str, url: str, batch: int) -> float:
        before = _cpu_by_process(pids[side])
        took = await vllm_batch(client, url, batch, args.tokens, recipe.proxy.stream_interval)
        spent = cpu.setdefault(side, {})
        for name, used in _cpu_by_process(pids[side]).items():
            spent[name] = spent.get(name, 0.0) + used - before.get(name, 0.0)
        return took

    async def measure(urls: dict[str, str]) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=256)) as client:
            for batch in args.batches:
                for url in urls.values():
                    await vllm_batch(client, url, batch, args.tokens, recipe.proxy.stream_interval)
                hf_batch(model, prompt_ids, batch, args.tokens)
                for _ in range(args.repeats):
                    for side, url in urls.items():
                        seconds.setdefault((side, batch), []).append(await timed_batch(client, side, url, batch))
                    seconds.setdefault(("generate", batch), []).append(hf_batch(model, prompt_ids, batch, args.tokens))

    with contextlib.ExitStack() as stack:
        servers = {side: stack.enter_context(VLLMServer(model_dir, work / f"vllm{i}", opts))
                   for i, (side, opts) in enumerate(sides.items())}
        pids.update({side: server.pid for side, server in servers.items()})
        asyncio.run(measure({side: server.url for side, server in servers.items()}))

    print("\nseconds for the batch (milliseconds a decode step), medians; the last column: each vLLM over generate")
    for batch in args.batches:
        hf = statistics.median(seconds[("generate", batch)])
        cells = [f"generate {hf:.3f} ({1e3 * hf / args.tokens:.2f})"]
        for side in sides:
            v = statistics.median(seconds[(side, batch)])
            cells.append(f"{side} {v:.3f} ({1e3 * v / args.tokens:.2f}) {v / hf:.2f}x")
        print(f"batch {batch:>3}: " + " | ".join(cells))
    if len(args.batches) >= 2:
        print("a decode step as fixed + per-sequence work (least squares over the batches; the simulator's "
              "cluster.sim.half_load_concurrency is fixed / per-sequence: half the peak throughput at that many)")
        for side in ["generate", *sides]:
            fixed, per_seq = _line([(b, 1e3 * statistics.median(seconds[(side, b)]) / args.tokens) for b in args.batches])
            half = f"{fixed / per_seq:.0f} sequences" if per_seq > 0 else "n/a"
            print(f"  {side}: {fixed:.2f} ms + {per_seq:.3f} ms a sequence; half load at {half}")
    print("CPU seconds of each server process while it decoded (all batches), and the busy workers a "
          "decoding server counts as (cluster.sim.server_workers: total over the busiest process)")
    for side, used in cpu.items():
        decoding = sum(sum(seconds[(side, b)]) for b in args.batches)
        parts = ", ".join(f"{name} {s:.1f} s ({s / decoding:.0%} of a core)" for name, s in sorted(used.items()))
        print(f"  {side}: {parts}; {sum(used.values()) / max(max(used.values()), 1e-9):.2f} workers")
    return 0


def _cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of a process and its descendants, by process name."""
    import psutil

    out: dict[str, float] = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            name = process.name()
            out[name] = out.get(name, 0.0) + times.user + times.system
    return out


if __name__ == "__main__":
    sys.exit(main())
