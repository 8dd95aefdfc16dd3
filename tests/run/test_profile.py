"""The step profile: parts of a step that add up to its wall time, from arranged stamps."""

import time

import pytest

from seamless.agent.runner import EpisodeTimes
from seamless.run.profile import PARTS, StepClock, split_rollout
from seamless.types import Turn


def _turn(started: float, sent: float, first: float, ended: float) -> Turn:
    return Turn(session_id="s", index=0, prompt_token_ids=[1], completion_token_ids=[2], completion_logprobs=[0.0],
                weight_versions=[1], started_at=started, sent_at=sent, answered_at=sent, first_token_at=first,
                ended_at=ended)


def test_one_episode_splits_into_its_phases():
    # window 0..10: nothing 0-1, a slot 1-2 (both admission), session 2-3, agent 3-4, call 4-7
    # (proxy 1, queued 1, gen 1), agent 7-8, reward 8-9, finish 9-10
    times = EpisodeTimes(admission=(1, 2), session=(2, 3), agent=(3, 8), reward=(8, 9), finish=(9, 10))
    shares = split_rollout([(0.0, 10.0)], [(times, [_turn(4, 5, 6, 7)])])
    assert shares == pytest.approx({"admission": 0.2, "session": 0.1, "proxy": 0.1, "queued": 0.1, "generation": 0.1,
                                    "agent": 0.2, "reward": 0.1, "finish": 0.1})


def test_episodes_waiting_for_a_slot_do_not_crowd_out_the_active_ones():
    running = EpisodeTimes(admission=(0, 0), session=(0, 0), agent=(0, 10), reward=(10, 10), finish=(10, 10))
    waiting = EpisodeTimes(admission=(0, 10), session=(10, 10), agent=(10, 10), reward=(10, 10), finish=(10, 10))
    shares = split_rollout([(0.0, 10.0)], [(running, [_turn(2, 2, 2, 10)])] + [(waiting, [])] * 50)
    assert shares["admission"] == 0 and shares["generation"] == pytest.approx(0.8)


def test_overlapping_episodes_share_the_busy_time_and_parts_outside_the_window_do_not_count():
    a = EpisodeTimes(admission=(5, 5), session=(5, 5), agent=(5, 14), reward=(14, 14), finish=(14, 14))
    b = EpisodeTimes(admission=(12, 12), session=(12, 12), agent=(12, 16), reward=(16, 16), finish=(16, 16))
    # a and its call started before the window; both calls are all generation
    shares = split_rollout([(10.0, 18.0)], [(a, [_turn(5, 5, 5, 14)]), (b, [_turn(12, 12, 12, 16)])])
    assert shares["admission"] == pytest.approx(2 / 8)  # nothing active from 16 to 18
    assert shares["generation"] == pytest.approx(6 / 8) and sum(shares.values()) == pytest.approx(1.0)


def test_the_clock_adds_up_to_the_time_between_takes():
    clock = StepClock()
    episodes = []
    for part in ("other", "rollout", "stream", "switch", "train", "sync", "switch", "log"):
        if part == "rollout":
            now = time.time()
            episodes.append((EpisodeTimes((now - 0.02, now - 0.02), (now - 0.02, now - 0.015), (now - 0.015, now - 0.01),
                                          (now - 0.01, now - 0.005), (now - 0.005, now)), []))
        time.sleep(0.01)
        clock.mark(part)
    row = clock.take(episodes)
    assert set(row) == {f"profile/{p}_s" for p in PARTS} | {"profile/step_s"}
    assert all(v >= 0 for v in row.values())
    assert sum(row[f"profile/{p}_s"] for p in PARTS) == pytest.approx(row["profile/step_s"])
    assert row["profile/switch_s"] >= 0.02 and row["profile/admission_s"] < row["profile/step_s"]


def test_a_groups_shared_calls_count_once():
    # 4 episodes whose one session call (0-1) and one finish call (3-4) are shared; agents 1-3
    group = [EpisodeTimes(admission=(1, 1), session=(0, 1), agent=(1, 3), reward=(3, 3), finish=(3, 4))] * 4
    shares = split_rollout([(0.0, 4.0)], [(times, []) for times in group])
    assert shares["session"] == pytest.approx(1 / 10) and shares["agent"] == pytest.approx(8 / 10)
