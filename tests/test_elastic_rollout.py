"""Elastic rollout on a Ray cluster of several nodes on this machine (seamless.cluster.local_nodes):
one `seamless run` (the tiny recipe, shortened) with a trainer node and two rollout nodes. At a
step boundary (the loop's `on_step` hook, so nothing depends on timing) one rollout node's raylet
is killed, as when its machine dies, and a new node with the same label joins, with a node that
offers the recipe's elastic rollout group (capacity beyond the counts it waits for, that no node
offered at start). Checked: the run goes on and finishes; the lost server leaves the proxy; each new
node gets a server that warms up, loads the current weights and joins the proxy; the events are on the timeline and in the metrics;
and the trainer's stream shows every finished episode trained exactly once, none lost. While it
trains, nothing of the run listens beyond loopback without a key.

One run for both halves keeps the added CI time to one vLLM restart (about a minute here) on top of
a short three-node run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import ray

from seamless.cluster.local_nodes import LocalNodes
from seamless.config import load_recipe
from seamless.run.folders import create_run_dir
from seamless.run.loop import run
from seamless.cluster.exposure import answers_without_a_key, listening_beyond_loopback

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
ROLE = "seamless.io/role"
TOTAL_STEPS, KILL_AT = 5, 2


@pytest.fixture(scope="module")
def three_nodes():
    """Head 127.0.0.1 (no GPU); trainer node 127.0.0.2; rollout nodes 127.0.0.3 and 127.0.0.4."""
    from seamless.cluster.ray_cluster import start_ray, stop_ray

    had_local_ray = ray.is_initialized()  # the session's one-node Ray (ray_cluster fixture)
    stop_ray()
    nodes = LocalNodes(head_cpus=1)
    try:
        nodes.add(gpus=1, labels={ROLE: "train"})
        for _ in range(2):
            nodes.add(gpus=1, labels={ROLE: "rollout"})
        yield nodes
    finally:
        nodes.shutdown()
        if had_local_ray:
            start_ray(num_gpus=4, num_cpus=2)


def _recipe(address: str, tmp_path: Path):
    resources = (f"[{{count: 1, tags: [train], node_labels: {{{ROLE}: train}}}}, "
                 f"{{count: 2, tags: [rollout], node_labels: {{{ROLE}: rollout}}}}, "
                 f"{{count: 1, tags: [rollout], node_labels: {{{ROLE}: spare}}, elastic: true}}]")
    overrides = [f"cluster.address={address}", "cluster.bind=node", "cluster.policy=disaggregated",
                 f"cluster.resources={resources}", f"trainer.total_steps={TOTAL_STEPS}",
                 f"trainer.checkpoint_every={TOTAL_STEPS}", "trainer.sft_warmup.steps=5", "rollout.batch_size=4",
                 "rollout.group_size=2", "data.eval_size=4", "logging.wandb.mode=disabled",
                 "trainer.eval_every=100", "logging.wandb.sample_table_every=100"]
    recipe = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", overrides)
    return recipe, create_run_dir(recipe, str(tmp_path / "run"))


def test_a_node_lost_and_one_added_mid_run_lose_and_train_twice_no_episode(three_nodes, tmp_path):
    recipe, run_dir = _recipe(three_nodes.address, tmp_path)
    seen: dict = {}

    def on_step(step: int, parts) -> None:
        fleet = parts.fleet
        if step == 1:  # every socket beyond 127.0.0.1 (node addresses, "::") of every process of the run
            exposed = listening_beyond_loopback(host_for_any="127.0.0.2")
            seen["exposed"] = {target: (name, answers_without_a_key(target)) for target, name in exposed}
        elif step == KILL_AT:  # a step boundary: kill the last rollout node, then a fresh node joins
            victim = three_nodes.nodes[-1]
            seen["lost_url"] = next(u for u in fleet.servers().values() if urlsplit(u).hostname == victim.ip)
            seen["servers_before"] = dict(fleet.servers())
            three_nodes.remove(victim)
            seen["new_ip"] = three_nodes.add(gpus=1, labels={ROLE: "rollout"}).ip
            seen["spare_ip"] = three_nodes.add(gpus=1, labels={ROLE: "spare"}).ip
        elif step == KILL_AT + 1:  # hold the loop until the new nodes serve (rollout goes on meanwhile)
            deadline = time.monotonic() + 600
            while not {seen["new_ip"], seen["spare_ip"]} <= {urlsplit(u).hostname for u in fleet.servers().values()}:
                assert time.monotonic() < deadline, f"no server on a new node; events: {fleet.events}"
                time.sleep(1)
            seen["upstreams"] = [u["url"] for u in fleet.proxy.upstreams()["upstreams"]]
            seen["servers"] = dict(fleet.servers())
        elif step == TOTAL_STEPS:
            seen["versions"] = {s.url: s.version for s in fleet._servers.values() if s.state == "up"}
            seen["version"] = fleet.version

    summary = run(recipe, run_dir, on_step=on_step)

    # beyond loopback: the vLLM servers (their key), Ray's raylets and workers (its token); the
    # trainer's store and gloo (no key) on loopback, its rank on one node
    assert seen["exposed"] and all(answer is None for _, answer in seen["exposed"].values()), seen["exposed"]
    names = " ".join(name for name, _ in seen["exposed"].values())
    assert "vllm_guard" in names and "raylet" in names and "TrainWorker" in names, seen["exposed"]

    # the run went on to the end, and the lost server left the proxy; the new one joined it
    assert summary["steps"] == TOTAL_STEPS
    new_url = next(u for u in seen["servers"].values() if urlsplit(u).hostname == seen["new_ip"])
    assert seen["lost_url"] not in seen["upstreams"] and new_url in seen["upstreams"]
    # the elastic resource (id 3) had no server until a node offered it; then it got one there
    assert 3 not in seen["servers_before"] and len(seen["servers_before"]) == 2
    assert urlsplit(seen["servers"][3]).hostname == seen["spare_ip"] and seen["servers"][3] in seen["upstreams"]
    assert len(seen["servers"]) == 3
    # the new server took the weights of every step after it joined, like the one that never left
    assert set(seen["versions"].values()) == {seen["version"]} and new_url in seen["versions"]
    # nothing lost, nothing trained twice (the trainer's stream against every finished episode)
    episodes = summary["episodes"]
    assert episodes["ok"] and episodes["lost"] == [] and episodes["trained_twice"] == [], episodes
    assert episodes["trained"] == TOTAL_STEPS * 4 * 2 and episodes["finished"] >= episodes["trained"]
    # the events: in the summary, on the timeline, and counted in the step rows
    kinds = " | ".join(summary["fleet_events"])
    assert "Ray node lost" in kinds and "Ray node joined" in kinds and " died " in kinds and " restarted " in kinds
    assert "server on resource 3 waiting" in kinds and "server on resource 3 restarted" in kinds, kinds
    timeline = json.loads((run_dir / "timeline.json").read_text())
    assert {"node_lost", "node_joined", "died", "restarted"} <= {e["kind"] for e in timeline["events"]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("fleet/died", 0) for r in rows) == 1 and sum(r.get("fleet/restarted", 0) for r in rows) == 2
    assert "after failure 1" in kinds  # a restart that failed because its node was gone counts no failure
    assert [r["fleet/servers"] for r in rows if "fleet/servers" in r][-1] == 3
