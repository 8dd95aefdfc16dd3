"""`seamless run` through the real tag scheduler: vLLM servers, the DeepSpeed trainer, the proxy
and Redis on 2 logical GPUs, `tagged` with 1 [rollout] + 1 [train, rollout], 2 GRPO steps."""

import json
import math
from pathlib import Path

from seamless.cli import main
from seamless.scheduler import Role, Timeline
from seamless.scheduler.validate import RecordedRun, compare

REPO = Path(__file__).resolve().parents[2]


def test_tagged_run_switches_the_dual_resource_and_trains(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["trainer.total_steps=2", "trainer.checkpoint_every=2", "trainer.sft_warmup.steps=0",
                 "rollout.batch_size=2", "rollout.group_size=2", "data.eval_size=2",
                 "logging.wandb.mode=disabled",
                 "cluster.resources=[{count: 1, tags: [rollout]}, {count: 1, tags: [train, rollout]}]"]
    assert main(["run", str(REPO / "recipes/policies/tagged.yaml"), *overrides, "--run-dir", str(run_dir)]) == 0

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["policy"] == "tagged"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1].endswith("2")
    timeline = Timeline.load(run_dir / "timeline.json")
    assert (run_dir / "timeline.png").stat().st_size > 0
    roles = {rid: [s.role for s in sorted(timeline.segments, key=lambda s: s.start) if s.resource == rid]
             for rid in (0, 1)}
    # the rollout-only resource never trains; the dual one serves, trains, serves again, twice
    assert Role.TRAIN not in roles[0] and Role.ROLLOUT in roles[0]
    working = [r for i, r in enumerate(roles[1]) if r in (Role.ROLLOUT, Role.TRAIN) and (i == 0 or r != roles[1][i - 1])]
    assert [r for i, r in enumerate(working) if i == 0 or r != working[i - 1]] == [
        Role.ROLLOUT, Role.TRAIN, Role.ROLLOUT, Role.TRAIN, Role.ROLLOUT]
    assert timeline.role_switches() == 4 == summary["role_switches"]
    assert any(s.resource == 1 and s.role is Role.TRAIN and s.busy for s in timeline.segments)
    assert [p.name for p in timeline.phases if p.name != "rollout"] == ["switch", "train", "sync"] * 2
    # leaving rollout parked the dual resource's server: two servers were ever started, none restarted
    assert sorted(p.name.split("-")[0] for p in (run_dir / "servers").iterdir()) == ["r0", "r1"]

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("train/policy_loss" in r and 0.0 <= r["scheduler/bubble_ratio"] <= 1.0
               and "scheduler/bubble_ratio/train" in r for r in steps)

    recorded = RecordedRun.load(run_dir / "recorded_run.json")
    assert recorded.batch_episodes == 4 and len(recorded.step_tokens) == 2
    comparison = compare(recorded)
    assert all(math.isfinite(x) for x in (comparison.sim_bubble_ratio, comparison.sim_tokens_per_s))
