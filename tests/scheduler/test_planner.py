"""`seamless plan` and `cluster.policy: auto`: the simulator ranks layouts, a recorded run
calibrates it, and a run planned at start goes on with a layout that fits the recipe."""

from __future__ import annotations

import json

import pytest

from seamless.cli import main
from seamless.config import ClusterConfig, SimConfig, load_recipe
from seamless.errors import ConfigError
from seamless.run.layout import resolve_layout
from seamless.scheduler.planner import Layout, candidate_layouts, make_plan
from seamless.scheduler.policy import make_policy
from seamless.scheduler.resources import ResourcePool
from seamless.scheduler.sim import Simulation
from seamless.scheduler.validate import RecordedRun

TINY = "recipes/grpo_tiny_cpu.yaml"
# a workload where the layouts differ clearly and a plan runs in a second or two
FAST = ["cluster.sim.steps=5", "cluster.sim.warmup_steps=1", "cluster.sim.response_median_tokens=200",
        "cluster.sim.max_response_tokens=2000", "rollout.batch_size=8", "rollout.group_size=8"]


def test_every_candidate_layout_is_a_pool_its_policy_accepts():
    layouts = candidate_layouts(16, max_staleness=2)
    for layout in layouts:
        assert layout.gpus == 16
        make_policy(layout.policy, ResourcePool.from_cluster(layout.cluster(ClusterConfig())), layout.staleness)
    assert {lay.policy for lay in layouts} == {"colocated", "disaggregated", "tagged"}
    assert {lay.staleness for lay in layouts} == {0, 1, 2}
    assert Layout("colocated", 0, 16, 0, 0) in layouts and Layout("tagged", 0, 16, 0, 0) not in layouts  # the same
    with pytest.raises(ConfigError, match="at least 2 GPUs"):
        candidate_layouts(1, 1)


def test_the_plan_ranks_by_predicted_throughput_and_its_pick_beats_the_fixed_policies():
    plan = make_plan(load_recipe(TINY, FAST), gpus=16)
    speeds = [p.tokens_per_s for p in plan.ranked]
    assert speeds == sorted(speeds, reverse=True) and len(plan.ranked) == len(candidate_layouts(16, 1))
    assert set(plan.fixed) == {"colocated", "disaggregated", "tagged"}
    assert all(plan.best.tokens_per_s >= p.tokens_per_s for p in plan.fixed.values())
    assert {p.bound for p in plan.ranked} <= {"rollout", "training", "switching"}
    # the pick, as the recipe section and as overrides, loads back as that layout
    chosen = load_recipe(TINY, plan.best.layout.overrides()).cluster
    assert chosen == plan.best.layout.cluster(load_recipe(TINY).cluster)


def _recorded(tmp_path, policy="tagged") -> tuple:
    cluster = ClusterConfig(policy=policy, resources=[{"count": 2, "tags": ["train", "rollout"]},
                                                      {"count": 2, "tags": ["rollout"]}])
    truth = SimConfig(steps=6, warmup_steps=1, response_median_tokens=30, response_sigma=0.6, max_response_tokens=64,
                      prompt_tokens=20, decode_tokens_per_s=2000, half_load_concurrency=4, train_tokens_per_s=5000,
                      switch_s=0.1, weight_sync_s=0.05, train_step_overhead_s=0.0)
    sim = Simulation(make_policy(policy, ResourcePool.from_cluster(cluster), 1), truth, batch_episodes=16)
    sim.run()
    RecordedRun(cluster=cluster.model_dump(mode="json"), timeline=sim.timeline.to_dict(), batch_episodes=16,
                completion_lengths=sim.completion_lengths, prompt_tokens=20, step_tokens=sim.step_tokens[1:],
                step_context_tokens=sim.step_context_tokens[1:]).save(tmp_path / "recorded_run.json")
    return cluster, truth


def test_a_plan_from_a_recorded_run_says_how_far_the_simulator_was_off_and_what_leads_within_it(tmp_path):
    _recorded(tmp_path)
    recipe = load_recipe(TINY, ["rollout.batch_size=2", "cluster.sim.warmup_steps=1"])
    plan = make_plan(recipe, gpus=4, run_dir=tmp_path)
    assert plan.calibration is not None and plan.calibration.tokens_per_s_error < 0.2
    assert len(plan.leaders_under_error) == 4 and all("decode x" in line for line in plan.leaders_under_error)
    assert plan.workload.decode_tokens_per_s != recipe.cluster.sim.decode_tokens_per_s  # fitted, not the default
    with pytest.raises(ConfigError, match="no recorded_run.json there"):
        make_plan(recipe, gpus=4, run_dir=tmp_path / "nowhere")


def test_plan_on_the_command_line_prints_a_table_or_json(capsys):
    assert main(["plan", TINY, *FAST, "--gpus", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == 8 and out["ranked"][0] == out["best"] and "cluster:" in out["cluster_yaml"]
    assert main(["plan", TINY, *FAST, "--gpus", "8"]) == 0
    text = capsys.readouterr().out
    assert "best layout" in text and "calibration: none" in text and "the pick is" in text


def test_auto_plans_the_run_layout_at_start_and_a_resume_keeps_its_trainer_size(tmp_path):
    recipe = load_recipe(TINY, [*FAST, "cluster.policy=auto", "cluster.resources=[{count: 4, tags: [train, rollout]}]"])
    chosen, plan = resolve_layout(recipe)
    assert chosen.cluster.policy != "auto" and chosen.cluster.num_gpus == 4
    assert chosen.cluster == plan.best.layout.cluster(recipe.cluster)
    # a resumed run: its checkpoint holds 1 trainer rank's shards, so the plan keeps 1 trainer
    trained = load_recipe(TINY, ["cluster.policy=disaggregated",
                                 "cluster.resources=[{count: 1, tags: [train]}, {count: 3, tags: [rollout]}]"])
    (tmp_path / "recipe.resolved.yaml").write_text(trained.to_yaml())
    resumed, plan = resolve_layout(recipe, tmp_path)
    assert all(p.layout.train + p.layout.dual == 1 for p in plan.ranked)
    assert sum(g.count for g in resumed.cluster.resources if "train" in g.tags) == 1
    assert resolve_layout(load_recipe(TINY)) == (load_recipe(TINY), None)  # not auto: untouched
    with pytest.raises(ConfigError, match="cluster.policy auto plans a layout of 2 GPUs or more"):
        load_recipe(TINY, ["cluster.policy=auto"])
