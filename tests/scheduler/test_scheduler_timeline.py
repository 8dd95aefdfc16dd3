"""Timeline and bubble arithmetic on hand cases."""

import pytest

from seamless.scheduler import Role, Timeline
from seamless.scheduler.plot import plot_timeline


def two_gpu_timeline():
    # gpu 0: rollout busy 0-6, switching 6-7, train busy 7-9, train idle 9-10
    # gpu 1: rollout busy 0-4, idle 4-7, busy 7-10
    tl = Timeline(2, {0: Role.ROLLOUT, 1: Role.ROLLOUT})
    tl.set(0, 0, busy=True)
    tl.set(0, 1, busy=True)
    tl.set(4, 1, busy=False)
    tl.begin_phase(6, "switch", 1)
    tl.set(6, 0, role=Role.SWITCHING)
    tl.begin_phase(7, "train", 1)
    tl.set(7, 0, role=Role.TRAIN, busy=True)
    tl.set(7, 1, busy=True)
    tl.begin_phase(9, "sync", 1)
    tl.set(9, 0, busy=False)
    tl.close(10)
    return tl


def test_bubble_ratio_is_idle_over_total_resource_seconds():
    tl = two_gpu_timeline()
    # idle: gpu0 1 s switching + 1 s train idle; gpu1 3 s = 5 of 20 resource-seconds
    assert tl.bubble_ratio() == pytest.approx(5 / 20)
    assert tl.bubble_ratio(4, 7) == pytest.approx(4 / 6)


def test_bubble_ratio_per_phase():
    phases = two_gpu_timeline().bubble_by_phase()
    assert phases["rollout"] == pytest.approx(2 / 12)  # 0-6: gpu1 idle 4-6
    assert phases["switch"] == pytest.approx(2 / 2)   # 6-7: both idle
    assert phases["train"] == pytest.approx(0.0)      # 7-9: both busy
    assert phases["sync"] == pytest.approx(1 / 2)     # 9-10: gpu0 idle


def test_role_switches_metrics_and_round_trip(tmp_path):
    tl = two_gpu_timeline()
    assert tl.role_switches() == 1
    metrics = tl.metrics("sched/")
    assert metrics["sched/bubble_ratio"] == pytest.approx(0.25)
    assert metrics["sched/role_seconds/train"] == pytest.approx(3.0)
    back = Timeline.load(tl.save(tmp_path / "t.json"))
    assert back.bubble_by_phase() == tl.bubble_by_phase()
    png = plot_timeline(tl, tmp_path / "t.png", title="hand case")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_snapshot_leaves_the_live_timeline_open():
    tl = Timeline(1, {0: Role.ROLLOUT})
    tl.set(0, 0, busy=True)
    tl.set(2, 0, busy=False)
    assert tl.snapshot(4).bubble_ratio() == pytest.approx(0.5)
    assert tl.end is None


def test_the_parts_of_a_gpu_role_switch_are_marked_in_their_rows_and_kept(tmp_path):
    tl = two_gpu_timeline()
    plain = plot_timeline(tl, tmp_path / "plain.png").read_bytes()
    tl.mark(0, "vllm_sleep", 6.0, 6.4)
    tl.mark(0, "trainer_reload", 6.4, 6.9)
    back = Timeline.load(tl.save(tmp_path / "t.json"))
    assert [(m.resource, m.name, m.start, m.end) for m in back.marks] == [
        (0, "vllm_sleep", 6.0, 6.4), (0, "trainer_reload", 6.4, 6.9)]
    assert back.bubble_ratio() == tl.bubble_ratio()  # marks change no role
    assert plot_timeline(back, tmp_path / "marked.png").read_bytes() != plain
