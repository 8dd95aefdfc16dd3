"""What `seamless run` does until the training loop lands: bring up the services, send one chat
completion through the trajectory manager with the official `openai` client, read back the
recorded trajectory, and shut everything down.

It exercises the same pieces the main loop will use: run folder, model folder, private Redis,
vLLM server, token-exact recording (`return_token_ids` + logprobs).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

from seamless.config import Recipe
from seamless.errors import ConfigError
from seamless.proxy.server import ProxyProcess
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
          "services, sends one chat completion through the trajectory manager and reads back its trace.")
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
        proxy = stack.enter_context(ProxyProcess(store_url, run_dir / "proxy", upstreams=[server_url],
                                                 prefix=recipe.store.key_prefix or recipe.run.name,
                                                 admin_key=recipe.proxy.admin_key))
        print(f"started the trajectory manager at {proxy.url}")
        trajectory = _one_episode(proxy, recipe)
        turn = trajectory["turns"][0]
        print(f"recorded one turn in Redis: {len(turn['prompt_token_ids'])} prompt tokens, "
              f"{len(turn['completion_token_ids'])} completion tokens, weight version "
              f"{sorted(set(turn['weight_versions']))}, served by {turn['upstream']}")
        print(f"merged training sequence: {sum(trajectory['sequences'][0]['loss_mask'])} of "
              f"{len(trajectory['sequences'][0]['token_ids'])} tokens in the loss mask")
    print("services stopped.")
    return 0


def _one_episode(proxy: ProxyProcess, recipe: Recipe) -> dict:
    """What an agent does, with the official client: one chat completion in its own session."""
    import openai

    admin = {"Authorization": f"Bearer {proxy.admin_key}"}
    session = httpx.post(f"{proxy.url}/sessions", headers=admin, json={"task_id": "smoke"}, timeout=30).json()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    reply = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                           max_tokens=recipe.rollout.max_tokens, temperature=0.0)
    print(f"completion text: {reply.choices[0].message.content!r}")
    httpx.post(f"{proxy.url}/sessions/{session['session_id']}/reward", headers=admin, json={"reward": 0.0})
    httpx.post(f"{proxy.url}/sessions/{session['session_id']}/finish", headers=admin)
    return httpx.get(f"{proxy.url}/sessions/{session['session_id']}/trajectory", headers=admin, timeout=30).json()
