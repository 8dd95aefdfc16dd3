"""The simulator: determinism, the issue's target at 64 GPUs, the CLI's JSON, sim-vs-sim fitting."""

import json

import pytest

from seamless.cli import main
from seamless.config import ClusterConfig, SimConfig
from seamless.scheduler.policy import make_policy
from seamless.scheduler.resources import ResourcePool
from seamless.scheduler.sim import SimCase, Simulation, simulate, sweep
from seamless.scheduler.validate import RecordedRun, compare

SMALL = SimConfig(steps=4, warmup_steps=1, episodes_per_gpu=8)


def test_same_seed_same_numbers_other_seed_other_numbers():
    case = SimCase("tagged", "tagged", 1)
    first, again = simulate(SMALL, 8, case), simulate(SMALL, 8, case)
    assert first.to_json() == again.to_json()
    other = simulate(SMALL.model_copy(update={"seed": 1}), 8, case)
    assert other.tokens_per_s != first.tokens_per_s


def test_tagged_beats_colocated_under_5_percent_bubble_at_64_gpus():
    results = {r.policy: r for r in sweep(SimConfig(steps=6, warmup_steps=2), [64])}
    assert results["tagged"].bubble_ratio < 0.05
    assert results["tagged"].tokens_per_s > results["colocated"].tokens_per_s
    assert results["colocated"].staleness_max == results["disaggregated"].staleness_max == 0
    # the long tail is what colocated loses: most of its bubble is in the rollout phase
    assert results["colocated"].bubble_by_phase["rollout"] > 0.1


def test_without_a_tail_or_switch_costs_colocated_has_no_rollout_bubble():
    flat = SMALL.model_copy(update={"response_sigma": 0.0, "switch_s": 0.0, "weight_sync_s": 0.0})
    result = simulate(flat, 8, SimCase("colocated", "colocated", 0))
    assert result.bubble_by_phase["rollout"] < 0.02


def test_multi_turn_agents_with_tool_latency_run():
    agent = SMALL.model_copy(update={"turns": 3, "tool_latency_s": 5.0, "response_median_tokens": 300})
    result = simulate(agent, 8, SimCase("tagged", "tagged", 1))
    assert result.tokens_per_s > 0 and 0 <= result.bubble_ratio <= 1


def test_sim_cli_json_has_one_object_per_policy(capsys, tmp_path):
    code = main(["sim", "recipes/grpo_tiny_cpu.yaml", "cluster.sim.steps=3", "cluster.sim.warmup_steps=1",
                 "--gpus", "8", "--json", "--plot", str(tmp_path / "sim.png")])
    assert code == 0
    objects = json.loads(capsys.readouterr().out)
    assert [o["policy"] for o in objects] == ["colocated", "disaggregated", "disaggregated-async", "tagged"]
    for obj in objects:
        assert obj["gpus"] == 8 and obj["tokens_per_s"] > 0 and 0 <= obj["bubble_ratio"] <= 1
    assert (tmp_path / "sim.png").stat().st_size > 0


def test_sim_cli_table_and_bad_gpus(capsys):
    assert main(["sim", "recipes/grpo_tiny_cpu.yaml", "cluster.sim.steps=3", "--gpus", "4", "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert "tagged" in out and "bubble" in out
    assert main(["sim", "recipes/grpo_tiny_cpu.yaml", "--gpus", "1"]) == 2
    assert "--gpus 1" in capsys.readouterr().err


@pytest.mark.parametrize("policy,groups", [
    ("tagged", [(2, ["rollout"]), (2, ["train", "rollout"])]),
    ("colocated", [(4, ["train", "rollout"])]),
    ("disaggregated", [(2, ["rollout"]), (2, ["train"])]),
])
def test_fitting_a_recorded_timeline_recovers_bubble_and_throughput(policy, groups):
    """A run recorded from a sim with parameters the fit does not know; the fitted sim must land
    within 20% (the same check the real tiny recipe will get)."""
    cluster = ClusterConfig(policy=policy, resources=[{"count": c, "tags": t} for c, t in groups])
    truth = SimConfig(steps=6, warmup_steps=1, response_median_tokens=30, response_sigma=0.6,
                      max_response_tokens=64, prompt_tokens=20, decode_tokens_per_s=2000,
                      half_load_concurrency=4, train_tokens_per_s=5000, switch_s=0.1,
                      weight_sync_s=0.05, train_step_overhead_s=0.0)
    sim = Simulation(make_policy(policy, ResourcePool.from_cluster(cluster), cluster.staleness), truth,
                     batch_episodes=16)
    sim.run()
    run = RecordedRun(cluster=cluster.model_dump(mode="json"), timeline=sim.timeline.to_dict(),
                      batch_episodes=16, completion_lengths=sim.completion_lengths, prompt_tokens=20,
                      step_tokens=sim.step_tokens[1:], step_context_tokens=sim.step_context_tokens[1:])
    comparison = compare(run, SimConfig(warmup_steps=1))
    assert comparison.within(0.2), comparison


def test_harness_time_and_the_agent_limit_slow_rollout_and_leave_servers_idle():
    """Episodes that spend time outside their LLM calls hold no server (more bubble, fewer tokens/s);
    an agent limit below the batch makes episodes wait for a slot (slower still)."""
    policy = lambda: make_policy("colocated", ResourcePool.split(2, 0.5, all_dual=True), 0)  # noqa: E731
    flat = SMALL.model_copy(update={"response_sigma": 0.0, "switch_s": 0.0, "weight_sync_s": 0.0})
    plain = Simulation(policy(), flat, batch_episodes=16).run()
    harness = Simulation(policy(), flat, batch_episodes=16, episode_overhead_s=5.0).run()
    limited = Simulation(policy(), flat, batch_episodes=16, episode_overhead_s=5.0, agent_concurrency=4).run()
    assert harness.bubble_by_phase["rollout"] > plain.bubble_by_phase["rollout"] + 0.1
    assert plain.tokens_per_s > harness.tokens_per_s > limited.tokens_per_s
    assert limited.step_time_s > 3 * 5.0  # 16 episodes through 4 slots: at least 4 rounds of 5 s
