"""The fleet against real vLLM servers (Ray actors on logical GPUs), a real proxy and Redis."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file

from seamless.config import RolloutConfig, TinyModelConfig
from seamless.models.tiny import build_tiny_model
from seamless.rollout import ProxyAdmin, VLLMFleet
from seamless.rollout.server_metrics import read_metrics
from seamless.rollout.transport import post_each
from seamless.scheduler.placement import RayPlacement
from seamless.scheduler.resources import Resource, ResourcePool, Role
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPT = [40, 57, 33, 81, 64, 92, 45, 70]  # token ids; the tiny vocabulary has all of them


@pytest.fixture(scope="module")
def fleet_proxy(redis_server, tmp_path_factory):
    from seamless.config import ProxyConfig
    from seamless.proxy.server import ProxyProcess

    with ProxyProcess(redis_server.url, tmp_path_factory.mktemp("fleet-proxy"), prefix="fleet",
                      config=ProxyConfig(health_interval_s=0.5)) as process:
        yield process


@pytest.fixture(scope="module")
def fleet(ray_cluster, fleet_proxy, tiny_model_dir, tmp_path_factory):
    config = RolloutConfig(restart_backoff_s=0.2, health_interval_s=0.5)
    fleet = VLLMFleet(tiny_model_dir, tmp_path_factory.mktemp("fleet-run"),
                      ProxyAdmin(fleet_proxy.url, fleet_proxy.admin_key), config)
    placement = RayPlacement("fleet-test")
    pool = ResourcePool(tuple(Resource(i, frozenset({"rollout"})) for i in range(2)))
    placement.reserve(pool)
    leases = [placement.acquire(resource, Role.ROLLOUT) for resource in pool]
    try:
        fleet.add_servers(leases)
        yield fleet
    finally:
        fleet.shutdown()
        placement.close()


@pytest.fixture(scope="module")
def new_weights(tiny_model_dir, tmp_path_factory):
    """The same architecture with other weights (seed 1), as a state dict and as a folder."""
    folder = build_tiny_model(tmp_path_factory.mktemp("seed1") / "model", TinyModelConfig(seed=1))
    return folder, load_file(str(folder / "model.safetensors"))


def _greedy(url: str, model: str, n: int = 12, salt: str = "") -> list[int]:
    return _generate(url, model, n, salt)[0]


def _generate(url: str, model: str, n: int = 12, salt: str = "") -> tuple[list[int], list[float]]:
    """Greedy token ids and their logprobs; `salt` as the proxy would add it (prefix_cache=salt),
    since a request straight to a server would otherwise reuse KV computed under older weights."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0.0, "return_token_ids": True,
            "ignore_eos": True, "logprobs": 0, **({"cache_salt": salt} if salt else {})}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["token_ids"], choice["logprobs"]["token_logprobs"]


def _hf_greedy(model_dir, n: int = 12) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(PROMPT):].tolist()


def _hf_logprobs(model_dir, completion: list[int]) -> list[float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + completion])).logits[0, len(PROMPT) - 1:-1]  # (T, V)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def test_an_update_moves_both_servers_to_the_new_weights_and_stamps_traces(fleet, fleet_proxy, new_weights,
                                                                             tiny_model_dir):
    folder, state = new_weights
    urls = list(fleet.servers().values())
    assert len(urls) == 2
    name = fleet.options.served_model_name
    before = [_generate(url, name) for url in urls]
    assert before[0][0] == before[1][0] == _hf_greedy(tiny_model_dir)

    metrics = fleet.publish(state)  # a state dict: written to disk, then reloaded
    after = [_generate(url, name, salt=f"w{fleet.version}") for url in urls]
    assert after[0] == after[1]  # both servers moved, to the same weights
    assert after[0][1][0] != pytest.approx(before[0][1][0], abs=1e-3)  # the weights really changed
    assert after[0][0] == _hf_greedy(folder)  # the servers now generate what transformers does
    # and with its logprobs: a stale tied lm_head (seen with vLLM 0.32 reloads) keeps the argmax
    # but flattens the distribution, which only logprobs show
    assert after[0][1] == pytest.approx(_hf_logprobs(folder, after[0][0]), abs=1e-4)

    assert metrics.servers == 2 and metrics.bytes > 0 and metrics.transfer_s > 0
    assert metrics.paused_s < 10

    admin = Admin(fleet_proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0)
    client.completions.create(model="m", prompt=PROMPT, max_tokens=4, temperature=0.0)
    (turn,) = admin.trajectory(session["session_id"])["turns"]
    assert turn["weight_versions"] == [fleet.version] * 4
    assert turn["request"].get("cache_salt") is None  # the salt is the proxy's, not the agent's
    for url in urls:
        assert httpx.get(f"{url}/weight_info", timeout=10).json()["weight_version"] == str(fleet.version)
    stats = fleet.stats()
    assert {s.url for s in stats} == set(urls) and all(s.waiting == 0 for s in stats)



@pytest.mark.parametrize("mode,prefix_cache,stream", [("keep", "reset", True), ("abort", "salt", True),
                                                       ("abort", "salt", False)])
def test_a_call_in_flight_across_an_update_completes_with_both_versions(fleet, fleet_proxy, new_weights,
                                                                        tiny_model_dir, mode, prefix_cache, stream):
    # the publisher applies updates: the pause mode and cache handling are its settings
    fleet.publisher.config = fleet.config.model_copy(update={"partial_rollout": mode, "prefix_cache": prefix_cache})
    admin = Admin(fleet_proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0)
    continued = admin.get("/admin/upstreams").json()["continuations"]
    started, result = threading.Event(), {}

    def agent() -> None:
        kwargs = dict(model="m", prompt="count", max_tokens=600, temperature=0.0, extra_body={"ignore_eos": True})
        if stream:
            for chunk in client.completions.create(stream=True, **kwargs):
                result.setdefault("finish", []).append(chunk.choices[0].finish_reason if chunk.choices else None)
                started.set()
        else:
            started.set()
            result["finish"] = [client.completions.create(**kwargs).choices[0].finish_reason]

    urls = list(fleet.servers().values())
    generated = lambda: sum(read_metrics(url).get("vllm:generation_tokens_total", 0.0) for url in urls)  # noqa: E731
    before = generated()
    thread = threading.Thread(target=agent)
    thread.start()
    assert started.wait(60)
    # arranged, not timed: once the servers count the call's first generated tokens, freeze it there, so however slowly the update
    # below starts, the call cannot finish before it: its first tokens are the old version's, the
    # rest come after the update resumes the servers
    deadline = time.monotonic() + 60
    while generated() == before and time.monotonic() < deadline:
        time.sleep(0.005)
    post_each(urls, "/pause", params={"mode": "keep"})
    old = fleet.version
    # alternate between the two weight sets; a folder source is reloaded in place (no copy)
    metrics = fleet.publish(new_weights[0] if old % 2 == 0 else tiny_model_dir)
    assert metrics.version == fleet.version == old + 1
    thread.join(120)
    assert [f for f in result["finish"] if f] == ["length"]  # one normal end, no "abort" shown
    (turn,) = admin.trajectory(session["session_id"])["turns"]
    versions = turn["weight_versions"]
    assert len(versions) == 600 and set(versions) == {old, old + 1} and versions == sorted(versions)
    assert metrics.inflight_at_pause == 1
    if mode == "abort":
        assert admin.get("/admin/upstreams").json()["continuations"] > continued


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return False


def test_a_killed_server_actor_is_restarted_and_the_proxy_routes_around_it(fleet, fleet_proxy):
    import ray

    admin = Admin(fleet_proxy)
    old_url, old_pid = fleet.servers()[0], fleet._servers[0].pid
    ray.kill(fleet.actor(0), no_restart=True)
    deadline = time.monotonic() + 30
    while _running(old_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(old_pid), "the server outlived its actor"

    # meanwhile every new session's calls are served by the other server
    for _ in range(4):
        session = admin.session()
        client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0)
        client.completions.create(model="m", prompt="hi", max_tokens=2)
        assert admin.trajectory(session["session_id"])["turns"][0]["upstream"] == fleet.servers()[1]

    fleet.start_supervisor()
    deadline = time.monotonic() + 120
    while not any(e.kind == "restarted" for e in fleet.events) and time.monotonic() < deadline:
        time.sleep(0.5)
    kinds = [e.kind for e in fleet.events if e.resource_id == 0]
    assert "died" in kinds and "restarted" in kinds, kinds
    urls = fleet.servers()
    assert len(urls) == 2 and urls[0] != old_url
    registered = {u["url"] for u in admin.get("/admin/upstreams").json()["upstreams"] if u["healthy"]}
    assert set(urls.values()) <= registered
    # the restarted server serves the fleet's current weights, like the other one
    name = fleet.options.served_model_name
    salt = f"w{fleet.version}-check"
    assert _greedy(urls[0], name, salt=salt) == _greedy(urls[1], name, salt=salt)
