"""What `seamless run` does until the training loop lands: bring up the services, send one chat
completion through them, record it in Redis, and shut everything down.

It exercises the same pieces the main loop will use: run folder, model folder, private Redis,
vLLM server, token-exact recording (`return_token_ids` + logprobs).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import httpx
import redis

from seamless.config import Recipe
from seamless.errors import ConfigError, ServiceError
from seamless.services.redis_server import RedisServer
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions


def resolve_model_dir(recipe: Recipe, run_dir: Path) -> Path:
    """The recipe's model folder, or the tiny model built into `run_dir/model` (reused if present)."""
    if recipe.model.path:
        path = Path(recipe.model.path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path {path} has no config.json; point it at a Hugging Face "
                              "model folder, or unset it to build the tiny model")
        return path
    from seamless.models.tiny import build_tiny_model

    path = run_dir / "model"
    if not (path / "config.json").is_file():
        print(f"building the tiny model into {path}")
        build_tiny_model(path, recipe.model.tiny)
    return path


def run_smoke(recipe: Recipe, run_dir: Path) -> int:
    print(f"seamless run: run folder {run_dir}")
    print("seamless run: the RL training loop is not part of this version yet; this run starts the "
          "services, sends one chat completion through them and records it in Redis.")
    model_dir = resolve_model_dir(recipe, run_dir)
    with contextlib.ExitStack() as stack:
        store_url = recipe.store.url
        if store_url is None:
            store_url = stack.enter_context(RedisServer(run_dir / "redis")).url
            print(f"started private Redis at {store_url}")
        if recipe.rollout.server_urls:
            server_url, model_name = recipe.rollout.server_urls[0], None
        else:
            t0 = time.monotonic()
            options = VLLMServerOptions(max_model_len=recipe.model.max_model_len,
                                        dtype=recipe.model.dtype, served_model_name="policy",
                                        kv_cache_memory_bytes=recipe.rollout.kv_cache_memory_bytes,
                                        gpu_memory_utilization=recipe.rollout.gpu_memory_utilization,
                                        extra_args=recipe.rollout.extra_server_args)
            server = stack.enter_context(VLLMServer(model_dir, run_dir / "vllm-0", options))
            server_url, model_name = server.url, server.model_name
            print(f"started vLLM at {server_url} in {time.monotonic() - t0:.1f} s (log: {server.log_path})")
        record = _one_completion(server_url, model_name, recipe)
        with redis.Redis.from_url(store_url) as client:
            key = f"{recipe.store.key_prefix or recipe.run.name}:smoke:turn"
            client.set(key, json.dumps(record))
            stored = json.loads(client.get(key))
        print(f"recorded one turn in Redis under {key!r}: {len(stored['prompt_token_ids'])} prompt "
              f"tokens, {len(stored['completion_token_ids'])} completion tokens")
        print(f"completion text: {stored['text']!r}")
    print("services stopped.")
    return 0


def _one_completion(server_url: str, model_name: str | None, recipe: Recipe) -> dict:
    if model_name is None:
        models = httpx.get(f"{server_url}/v1/models", timeout=30).json()
        model_name = models["data"][0]["id"]
    body = {"model": model_name, "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "max_tokens": recipe.rollout.max_tokens, "temperature": 0.0, "logprobs": True,
            "return_token_ids": True}
    response = httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=120)
    if response.status_code != 200:
        raise ServiceError(f"vLLM at {server_url} answered {response.status_code}: {response.text[:500]}")
    data = response.json()
    choice = data["choices"][0]
    return {"prompt_token_ids": data["prompt_token_ids"], "completion_token_ids": choice["token_ids"],
            "logprobs": [entry["logprob"] for entry in choice["logprobs"]["content"]],
            "text": choice["message"]["content"], "finish_reason": choice["finish_reason"]}
