"""The planner's measured check (scripts/run_policies.py --plan-check) without the runs: which
layouts it runs, the measured speed of a run folder, and the verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from seamless.config import ClusterConfig, SimConfig, load_recipe
from seamless.scheduler.plan_check import check_layouts, format_check, judge, layout_of, measured_tokens_per_s
from seamless.scheduler.planner import Layout, candidate_layouts, make_plan
from seamless.scheduler.policy import make_policy
from seamless.scheduler.resources import ResourcePool
from seamless.scheduler.sim import Simulation
from seamless.scheduler.validate import RecordedRun

REPO = Path(__file__).resolve().parents[2]


def test_the_check_runs_the_planners_layouts_once_each_at_the_highest_staleness_unless_asked():
    every = check_layouts(4, max_staleness=1, every_staleness=True)
    assert set(every) == set(candidate_layouts(4, 1)) and len(every) == 14
    cheap = check_layouts(4, max_staleness=1)
    assert len(cheap) == 8 and set(cheap) <= set(every)
    assert {lay.staleness for lay in cheap if lay.policy != "colocated"} == {1}
    assert Layout("colocated", 0, 4, 0, 0) in cheap and Layout("tagged", 0, 4, 0, 1) in cheap
    assert len({tuple(lay.overrides()) for lay in cheap}) == len(cheap)  # no two cases run the same thing


def test_a_recipe_cluster_reads_back_as_its_layout():
    for layout in check_layouts(4, 1, every_staleness=True):
        assert layout_of(layout.cluster(ClusterConfig())) == layout
    recipe = load_recipe(REPO / "recipes" / "policies" / "long_answers.yaml")
    assert layout_of(recipe.cluster) == Layout("tagged", 0, 2, 2, 1)


def _recorded(run_dir: Path, layout: Layout) -> RecordedRun:
    """A run folder whose recorded run is a simulated one (exact timeline, known tokens)."""
    truth = SimConfig(steps=5, warmup_steps=1, response_median_tokens=30, response_sigma=0.6, max_response_tokens=64,
                      prompt_tokens=20, decode_tokens_per_s=2000, half_load_concurrency=4, train_tokens_per_s=5000,
                      switch_s=0.1, weight_sync_s=0.05, train_step_overhead_s=0.0)
    pool = ResourcePool.from_cluster(layout.cluster(ClusterConfig()))
    sim = Simulation(make_policy(layout.policy, pool, layout.staleness), truth, batch_episodes=16)
    result = sim.run()
    run_dir.mkdir(parents=True)
    run = RecordedRun(cluster=layout.cluster(ClusterConfig()).model_dump(mode="json"), timeline=sim.timeline.to_dict(),
                      batch_episodes=16, completion_lengths=sim.completion_lengths, prompt_tokens=20,
                      # one entry per trained step, as a real run records them (the sim's lists start
                      # with a 0 and may hold a step begun after the last one it reports)
                      step_tokens=sim.step_tokens[1:truth.steps + 1],
                      step_context_tokens=sim.step_context_tokens[1:truth.steps + 1])
    run.save(run_dir / "recorded_run.json")
    return run, result


def test_measured_speed_is_the_window_after_the_warm_up_as_the_simulator_reports_it(tmp_path):
    run, result = _recorded(tmp_path / "run", Layout("tagged", 0, 2, 2, 1))
    speed, steps = measured_tokens_per_s(tmp_path / "run", warmup_steps=1)
    assert steps == len(run.step_tokens) - 1 == 4
    assert speed == pytest.approx(result.tokens_per_s, rel=1e-6)


def test_the_verdict_compares_the_planners_pick_with_the_measured_best(tmp_path):
    own = Layout("tagged", 0, 2, 2, 1)
    _recorded(tmp_path / "own", own)
    recipe = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", ["rollout.batch_size=4", "cluster.sim.warmup_steps=1"])
    plan = make_plan(recipe, gpus=4, run_dir=tmp_path / "own")
    layouts = check_layouts(4, 1)[:3]
    predicted = {p.layout: p.tokens_per_s for p in plan.ranked}
    # measurement that agrees with the plan's order: a pass, ranks equal
    agree = judge({lay: predicted[lay] for lay in layouts}, plan, own)
    assert agree.passed and agree.shortfall == 0
    assert all(r.measured_rank == r.planner_rank for r in agree.rows)
    # the plan's pick measured 20% below the best: a fail, whatever the plan predicted
    pick = max(layouts, key=predicted.get)
    others = [lay for lay in layouts if lay != pick]
    worse = judge({pick: 80.0, others[0]: 100.0, others[1]: 95.0}, plan, own)
    assert not worse.passed and worse.shortfall == pytest.approx(0.2) and worse.best.layout == others[0]
    text = format_check(worse, "title")
    assert "FAIL" in text and "measured best: " + others[0].label() in text and "within 20%" in text
    with pytest.raises(ValueError, match="no prediction"):
        judge({Layout("tagged", 0, 8, 0, 1): 1.0}, plan, own)


def test_the_script_names_every_case_folder_apart():
    spec = importlib.util.spec_from_file_location("run_policies", REPO / "scripts" / "run_policies.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    layouts = check_layouts(4, 1, every_staleness=True)
    assert len({script.slug(lay) for lay in layouts}) == len(layouts)
    assert script.slug(Layout("tagged", 0, 3, 1, 1)) == "tagged-3b1r-s1"


def _pool_run(layout: Layout, workload: SimConfig):
    pool = ResourcePool.from_cluster(layout.cluster(ClusterConfig()))
    sim = Simulation(make_policy(layout.policy, pool, layout.staleness), workload, batch_episodes=32)
    return sim, sim.run()


def test_on_shared_cores_more_servers_than_cores_add_no_rollout_speed():
    # generation only: no switch or sync costs, training nearly free
    gen = SimConfig(steps=5, warmup_steps=1, response_median_tokens=100, response_sigma=0.0, max_response_tokens=100,
                    prompt_tokens=10, decode_tokens_per_s=1000, half_load_concurrency=1, train_tokens_per_s=1e7,
                    switch_s=0.0, weight_sync_s=0.0, train_step_overhead_s=0.0)
    speed = {}
    for units in (None, 2.0):
        w = gen.model_copy(update={"compute_units": units})
        for rollout in (1, 2, 3):
            speed[units, rollout] = _pool_run(Layout("disaggregated", 1, 0, rollout, 1), w)[1].tokens_per_s
    assert speed[None, 3] == pytest.approx(3 * speed[None, 1], rel=0.1)  # every GPU on its own
    assert speed[2.0, 2] == pytest.approx(2 * speed[2.0, 1], rel=0.1)  # still a core each
    assert speed[2.0, 3] == pytest.approx(speed[2.0, 2], rel=0.1)  # the third server shares the two cores


def test_on_shared_cores_weight_loads_and_switches_stretch_and_the_fit_reads_whole_unit_costs(tmp_path):
    truth = SimConfig(steps=6, warmup_steps=1, response_median_tokens=30, response_sigma=0.6, max_response_tokens=64,
                      prompt_tokens=20, decode_tokens_per_s=2000, half_load_concurrency=4, train_tokens_per_s=5000,
                      switch_s=0.2, weight_sync_s=0.3, train_step_overhead_s=0.0, compute_units=2.0)
    layout = Layout("disaggregated", 1, 0, 3, 1)  # three servers load weights on two cores
    sim, _ = _pool_run(layout, truth)
    syncs = [p.end - p.start for p in sim.timeline.phases if p.name == "sync"]
    assert min(syncs) > truth.weight_sync_s * 1.4  # 3 loads on 2 units: 1.5x, less any idle server
    run = RecordedRun(cluster=layout.cluster(ClusterConfig()).model_dump(mode="json"), timeline=sim.timeline.to_dict(),
                      batch_episodes=32, completion_lengths=sim.completion_lengths, prompt_tokens=20,
                      step_tokens=sim.step_tokens[1:truth.steps + 1],
                      step_context_tokens=sim.step_context_tokens[1:truth.steps + 1])
    from seamless.scheduler.validate import fit_workload

    fitted = fit_workload(run, truth.model_copy(update={"weight_sync_s": 9.0, "train_tokens_per_s": 1.0}))
    assert fitted.weight_sync_s == pytest.approx(truth.weight_sync_s, rel=0.15)
    assert fitted.train_tokens_per_s == pytest.approx(truth.train_tokens_per_s, rel=0.15)
    blind = fit_workload(run, truth.model_copy(update={"compute_units": None}))  # the same run read as real GPUs
    assert blind.weight_sync_s > fitted.weight_sync_s * 1.3


def test_a_calibration_error_above_100_percent_still_gives_a_plan(tmp_path):
    from seamless.scheduler.planner import Calibration, _leaders_under_error, predict

    recipe = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", ["rollout.batch_size=2", "cluster.sim.steps=3",
                                                                   "cluster.sim.warmup_steps=1"])
    workload = recipe.cluster.sim.model_copy(update={"response_median_tokens": 20.0, "max_response_tokens": 40})
    run = lambda layout, w=workload: predict(layout, w, 8)  # noqa: E731
    leaders = [run(lay) for lay in check_layouts(4, 1)[:2]]
    lines = _leaders_under_error(leaders, workload, Calibration("x", 1.5, 0.1), run)  # 1 - 1.5 would be negative
    assert len(lines) == 4 and "decode x0.40, train x0.40" in lines[0]


def test_a_decoding_server_counts_as_its_server_workers_and_the_fit_reads_it_the_same_way():
    gen = SimConfig(steps=5, warmup_steps=1, response_median_tokens=100, response_sigma=0.0, max_response_tokens=100,
                    prompt_tokens=10, decode_tokens_per_s=1000, half_load_concurrency=1, train_tokens_per_s=1e7,
                    switch_s=0.0, weight_sync_s=0.0, train_step_overhead_s=0.0, compute_units=2.0)
    speed = {(workers, rollout): _pool_run(Layout("disaggregated", 1, 0, rollout, 1),
                                           gen.model_copy(update={"server_workers": workers}))[1].tokens_per_s
             for workers in (1.0, 2.0) for rollout in (1, 2)}
    assert speed[1.0, 2] == pytest.approx(2 * speed[1.0, 1], rel=0.1)  # a core each
    assert speed[2.0, 2] == pytest.approx(speed[2.0, 1], rel=0.1)  # each server already keeps two cores busy
    # training beside decoding servers gets less of the cores; the fit reads whole-unit speeds back
    truth = SimConfig(steps=6, warmup_steps=1, response_median_tokens=60, response_sigma=0.3, max_response_tokens=90,
                      prompt_tokens=20, decode_tokens_per_s=2000, half_load_concurrency=8, train_tokens_per_s=3000,
                      switch_s=0.2, weight_sync_s=0.1, train_step_overhead_s=0.0, compute_units=2.0, server_workers=1.5)
    layout = Layout("disaggregated", 2, 0, 2, 1)
    sim, _ = _pool_run(layout, truth)
    run = RecordedRun(cluster=layout.cluster(ClusterConfig()).model_dump(mode="json"), timeline=sim.timeline.to_dict(),
                      batch_episodes=32, completion_lengths=sim.completion_lengths, prompt_tokens=20,
                      step_tokens=sim.step_tokens[1:truth.steps + 1],
                      step_context_tokens=sim.step_context_tokens[1:truth.steps + 1])
    from seamless.scheduler.validate import fit_workload

    fitted = fit_workload(run, truth.model_copy(update={"train_tokens_per_s": 1.0}))
    assert fitted.train_tokens_per_s == pytest.approx(truth.train_tokens_per_s, rel=0.15)
    one_each = fit_workload(run, truth.model_copy(update={"server_workers": 1.0}))  # servers read as one process
    assert one_each.train_tokens_per_s < fitted.train_tokens_per_s * 0.9  # the trainer's share over-read


def test_a_run_that_never_switched_roles_keeps_the_recipes_switch_cost():
    from seamless.scheduler.validate import fit_workload

    truth = SimConfig(steps=5, warmup_steps=1, response_median_tokens=30, response_sigma=0.5, max_response_tokens=64,
                      prompt_tokens=20, decode_tokens_per_s=2000, half_load_concurrency=4, train_tokens_per_s=5000,
                      switch_s=0.3, weight_sync_s=0.1, train_step_overhead_s=0.0)
    fitted = {}
    for layout in (Layout("disaggregated", 2, 0, 2, 1), Layout("colocated", 0, 4, 0, 0)):
        sim, _ = _pool_run(layout, truth)
        run = RecordedRun(cluster=layout.cluster(ClusterConfig()).model_dump(mode="json"),
                          timeline=sim.timeline.to_dict(), batch_episodes=32, completion_lengths=sim.completion_lengths,
                          prompt_tokens=20, step_tokens=sim.step_tokens[1:truth.steps + 1],
                          step_context_tokens=sim.step_context_tokens[1:truth.steps + 1])
        fitted[layout.policy] = fit_workload(run, truth.model_copy(update={"switch_s": 5.0})).switch_s
    assert fitted["disaggregated"] == 5.0  # no switch seen: the recipe's, not a free switch
    assert fitted["colocated"] == pytest.approx(truth.switch_s, rel=0.25)


def test_a_cap_on_sequences_a_server_runs_favours_more_servers_and_each_run_is_fitted_under_its_own_cap():
    from seamless.scheduler.validate import fit_workload

    # the CPU test bed's engine: a decode step's fixed work is 44 sequences' worth, 1.4 processes a server
    truth = SimConfig(steps=6, warmup_steps=1, response_median_tokens=100, response_sigma=0.2, max_response_tokens=150,
                      prompt_tokens=20, decode_tokens_per_s=3000, half_load_concurrency=44, train_tokens_per_s=20000,
                      switch_s=0.2, weight_sync_s=0.05, train_step_overhead_s=0.0, compute_units=2.0,
                      server_workers=1.4)
    one, two = Layout("disaggregated", 3, 0, 1, 1), Layout("disaggregated", 2, 0, 2, 1)
    free = {lay: _pool_run(lay, truth)[1].tokens_per_s for lay in (one, two)}
    capped_truth = truth.model_copy(update={"max_concurrency": 4})
    capped = {lay: _pool_run(lay, capped_truth)[1].tokens_per_s for lay in (one, two)}
    assert free[one] > free[two]  # one server batching the whole step wins...
    assert capped[two] > capped[one] * 1.3  # ...until it may run only 4 sequences at once
    # a run recorded under its cap: fitted as such, its decode speed comes back; read as uncapped it is under-rated
    sim, _ = _pool_run(one, capped_truth)
    run = RecordedRun(cluster=one.cluster(ClusterConfig()).model_dump(mode="json"), timeline=sim.timeline.to_dict(),
                      batch_episodes=32, completion_lengths=sim.completion_lengths, prompt_tokens=20,
                      step_tokens=sim.step_tokens[1:truth.steps + 1],
                      step_context_tokens=sim.step_context_tokens[1:truth.steps + 1], server_max_sequences=4)
    assert fit_workload(run, truth).decode_tokens_per_s == pytest.approx(truth.decode_tokens_per_s, rel=0.15)
    run.server_max_sequences = None
    assert fit_workload(run, truth).decode_tokens_per_s < truth.decode_tokens_per_s * 0.8


def test_the_plan_holds_each_server_to_the_recipes_max_num_seqs():
    recipe = load_recipe(REPO / "recipes" / "policies" / "few_sequences.yaml", ["cluster.sim.steps=4"])
    assert recipe.rollout.max_num_seqs == 4
    assert make_plan(recipe, 4).workload.max_concurrency == 4
    free = load_recipe(REPO / "recipes" / "policies" / "long_answers.yaml", ["cluster.sim.steps=4"])
    assert make_plan(free, 4).workload.max_concurrency == free.cluster.sim.max_concurrency
