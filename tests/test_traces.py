"""The run folder's trace export: written whole per step, read back typed, cleaned on resume."""

import json

import pytest

from seamless.errors import SeamlessError
from seamless.traces.export import drop_steps_after, read_traces, step_path, write_step
from seamless.types import NO_VERSION, Trajectory, TrainingSequence, Turn


def _trajectory(sid: str, reward: float, group: str) -> Trajectory:
    turn = Turn(session_id=sid, index=0, prompt_token_ids=[1, 2, 3], completion_token_ids=[7, 8],
                completion_logprobs=[-0.5, -0.25], weight_versions=[4, 4], finish_reason="stop",
                upstream="http://127.0.0.1:9", started_at=10.0, ended_at=10.5)
    sequence = TrainingSequence(session_id=sid, token_ids=[1, 2, 3, 7, 8], loss_mask=[0, 0, 0, 1, 1],
                                rollout_logprobs=[0.0, 0.0, 0.0, -0.5, -0.25],
                                weight_versions=[NO_VERSION] * 3 + [4, 4], reward=reward, group_id=group,
                                task_id="add-1-2")
    return Trajectory(session_id=sid, turns=[turn], sequences=[sequence], reward=reward, group_id=group,
                      task_id="add-1-2", metadata={"agent": "math"})


def test_a_step_round_trips_token_for_token(tmp_path):
    trajectories = [_trajectory("s1", 1.0, "g"), _trajectory("s2", 0.0, "g")]
    path = write_step(tmp_path, 3, ["1-0", "1-1"], trajectories)
    assert path == step_path(tmp_path, 3) and path.name == "step-000003.jsonl"
    assert not list(path.parent.glob("*.tmp"))
    traced = list(read_traces(tmp_path))
    assert [(t.step, t.entry_id, t.session_id, t.reward) for t in traced] == [(3, "1-0", "s1", 1.0), (3, "1-1", "s2", 0.0)]
    assert traced[0].sequences == trajectories[0].sequences
    call = traced[0].calls[0]
    assert (call.prompt_tokens, call.completion_tokens, call.finish_reason) == (3, 2, "stop")
    assert traced[0].metadata == {"agent": "math"} and traced[0].group_id == "g"


def test_steps_read_in_order_and_a_rewrite_replaces_the_step(tmp_path):
    write_step(tmp_path, 10, ["b"], [_trajectory("late", 1.0, "g2")])
    write_step(tmp_path, 2, ["a"], [_trajectory("old", 0.0, "g1")])
    write_step(tmp_path, 2, ["c"], [_trajectory("new", 1.0, "g1")])
    assert [(t.step, t.session_id) for t in read_traces(tmp_path)] == [(2, "new"), (10, "late")]


def test_a_resume_drops_the_steps_it_trains_again(tmp_path):
    for step in (1, 2, 3, 4):
        write_step(tmp_path, step, [str(step)], [_trajectory(f"s{step}", 0.0, "g")])
    assert drop_steps_after(tmp_path, 2) == [3, 4]
    assert [t.step for t in read_traces(tmp_path)] == [1, 2]
    assert drop_steps_after(tmp_path / "no-traces-yet", 0) == []


def test_mismatched_entries_and_a_damaged_file_are_errors(tmp_path):
    with pytest.raises(ValueError, match="2 stream entries for 1 trajectories"):
        write_step(tmp_path, 1, ["a", "b"], [_trajectory("s", 0.0, "g")])
    path = write_step(tmp_path, 1, ["a"], [_trajectory("s", 0.0, "g")])
    record = json.loads(path.read_text())
    del record["sequences"][0]["loss_mask"][0]
    path.write_text(json.dumps(record) + "\n" + '{"step": 1, "entry_id"')
    with pytest.raises(SeamlessError, match=r"step-000001.jsonl:1: not a trace record .*delete it to skip"):
        list(read_traces(tmp_path))
