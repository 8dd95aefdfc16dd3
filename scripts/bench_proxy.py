"""Added latency and requests/s of the seamless proxy, beside direct calls and LiteLLM's proxy.

All are measured in one run against the same fast local upstream (an OpenAI-compatible
fake that answers instantly with 8 tokens, token ids and logprobs, streamed or not), so the
numbers differ only by what sits in between. The seamless proxy records every call in its
private Redis (recording on, as in training).

    .venv/bin/python scripts/bench_proxy.py [--requests 400] [--concurrency 32] [--seconds 10]
        [--workers 2] [--litellm .bench/litellm/bin/litellm]     # install: python -m venv .bench/litellm &&
                                                   #   .bench/litellm/bin/pip install 'litellm[proxy]'

Prints p50/p99 latency of sequential calls, the added latency over direct calls, and
requests/s at the given concurrency, for the proxy with one worker and with `--workers N`. This machine is noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seamless.config import ProxyConfig  # noqa: E402
from seamless.proxy.server import ProxyProcess  # noqa: E402
from seamless.services.process import ManagedProcess, free_port  # noqa: E402
from seamless.services.redis_server import RedisServer  # noqa: E402

FAKE_UPSTREAM = r'''
import json, sys, time
TOKENS = [11, 12, 13, 14, 15, 16, 17, 18]
PROMPT = list(range(1, 21))

def completion():
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
        "prompt_token_ids": PROMPT,
        "choices": [{"index": 0, "finish_reason": "length", "token_ids": TOKENS,
                     "message": {"role": "assistant", "content": "abcdefgh"},
                     "logprobs": {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
                                              for _ in TOKENS]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}).encode()

def chunks(n=1):
    """The stream of a call with n choices (a coalesced group's), choice by choice."""
    out = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake", "prompt_token_ids": PROMPT,
            "choices": [{"index": c, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        for c in range(n)]}]
    for c in range(n):
        for i, t in enumerate(TOKENS):
            out.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                        "choices": [{"index": c, "delta": {"content": "a"}, "token_ids": [t],
                                     "logprobs": {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]},
                                     "finish_reason": "length" if i == len(TOKENS) - 1 else None}]})
    out.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake", "choices": [],
                "usage": {"prompt_tokens": 20, "completion_tokens": 8 * n, "total_tokens": 20 + 8 * n}})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in out) + b"data: [DONE]\n\n"

COMPLETION, STREAMS = completion(), {1: chunks()}
MODELS = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path.endswith("/models"):
        payload, kind = MODELS, b"application/json"
    elif path == "/health":
        payload, kind = b"", b"text/plain"
    else:
        streaming = b'"stream": true' in body or b'"stream":true' in body
        n = json.loads(body).get("n") or 1 if b'"n"' in body else 1
        if streaming and n not in STREAMS:
            STREAMS[n] = chunks(n)
        payload, kind = (STREAMS[n], b"text/event-stream") if streaming else (COMPLETION, b"application/json")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                loop="uvloop", http="httptools")
'''

LITELLM_KEY = "sk-seamless-bench-only"  # LiteLLM refuses to start without a master key
BODY = {"model": "fake", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 8}


def start_fake_upstream(work: Path, source: str = FAKE_UPSTREAM) -> tuple[ManagedProcess, str]:
    """The fake vLLM (`source`) in its own process on a free loopback port; returns the process and
    its URL once it answers (the process is stopped if it never does)."""
    port = free_port()
    (work / "fake.py").write_text(source)
    upstream = ManagedProcess("fake upstream", [sys.executable, str(work / "fake.py"), str(port)], work / "fake.log")
    upstream.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", upstream)
    except Exception:
        upstream.stop()
        raise
    return upstream, url


def _wait_http(url: str, process: ManagedProcess, timeout_s: float = 120) -> None:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False
    process.wait_until(ready, timeout_s, poll_s=0.1)


def sequential_latencies(url: str, key: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as client:
        for _ in range(20):  # warm up connections and caches
            client.post(url, json=BODY, headers=headers).raise_for_status()
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            response = client.post(url, json=BODY, headers=headers)
            samples.append(time.perf_counter() - start)
            response.raise_for_status()
    return samples


async def _throughput(url: str, key: str, concurrency: int, seconds: float) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await client.post(url, json=BODY, headers=headers)).raise_for_status()
                done += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--litellm", help="path of LiteLLM's `litellm` CLI (a separate venv)")
    parser.add_argument("--workers", type=int, default=2,
                        help="also measure `seamless proxy --workers N` (0 or 1 to skip)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="seamless-bench-proxy-"))
    started: list = []
    try:
        upstream, upstream_url = start_fake_upstream(work)
        started.append(upstream)

        redis_server = RedisServer(work / "redis").start()
        started.append(redis_server)
        proxy = ProxyProcess(redis_server.url, work / "proxy", upstreams=[upstream_url], prefix="bench").start()
        started.append(proxy)
        session = httpx.post(f"{proxy.url}/sessions", headers={"Authorization": f"Bearer {proxy.admin_key}"},
                             json={}).json()

        targets = {"direct": (upstream_url + "/v1/chat/completions", "none"),
                   "seamless": (session["base_url"] + "/chat/completions", session["api_key"])}
        if args.workers > 1:
            multi = ProxyProcess(redis_server.url, work / "proxy-multi", upstreams=[upstream_url], prefix="bench-multi",
                                 config=ProxyConfig(workers=args.workers)).start()
            started.append(multi)
            multi_session = httpx.post(f"{multi.url}/sessions", json={},
                                       headers={"Authorization": f"Bearer {multi.admin_key}"}).json()
            targets[f"seamless x{args.workers}"] = (multi_session["base_url"] + "/chat/completions",
                                                    multi_session["api_key"])
        if args.litellm:
            litellm_port = free_port()
            (work / "litellm.yaml").write_text(json.dumps({"model_list": [{
                "model_name": "fake", "litellm_params": {"model": "openai/fake", "api_base": upstream_url + "/v1",
                                                         "api_key": "none"}}]}))
            litellm = ManagedProcess("litellm", [args.litellm, "--config", str(work / "litellm.yaml"),
                                                 "--host", "127.0.0.1", "--port", str(litellm_port),
                                                 "--num_workers", "1"], work / "litellm.log",
                                      env={**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY})
            litellm.start()
            started.append(litellm)
            _wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness", litellm, timeout_s=300)
            targets["litellm"] = (f"http://127.0.0.1:{litellm_port}/v1/chat/completions", LITELLM_KEY)

        rows = {}
        for name, (url, key) in targets.items():
            samples = sequential_latencies(url, key, args.requests)
            rps = asyncio.run(_throughput(url, key, args.concurrency, args.seconds))
            rows[name] = (_pct(samples, 0.5), _pct(samples, 0.99), rps)
        turns = int(httpx.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {proxy.admin_key}"}).text.split('kind="completion"} ')[1].split()[0]) // 8

        base50, base99, _ = rows["direct"]
        print(f"\n{'target':<12} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>8}")
        for name, (p50, p99, rps) in rows.items():
            print(f"{name:<12} {p50:8.2f} {p99:8.2f} {p50 - base50:10.2f} {p99 - base99:10.2f} {rps:8.0f}")
        if "litellm" in rows:
            print(f"\nseamless / litellm requests/s: {rows['seamless'][2] / rows['litellm'][2]:.2f}x")
        print(f"seamless recorded {turns} turns in Redis during the run")
    finally:
        for service in reversed(started):
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
