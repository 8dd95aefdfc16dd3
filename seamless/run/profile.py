"""Where each step's wall time went: the loop's own phases, and its rollout split into what the
episodes spent their time on, from the runner's stamps and the proxy's call clock.

A step's time is the span from the end of the previous step's row to the end of its own (the
previous step's checkpoint and evaluation count as `other` in this one). The loop marks the end of
each phase; everything since the last mark belongs to the phase marked. The rollout phase (from
the previous step until a batch is ready) overlaps many episodes, so it is split by share: the
window's time with no episode of the step active is `admission`, the rest goes to the active
parts in proportion to the episode-seconds each took inside the window (an episode waiting for a
runner slot is not active: it would crowd out what the active ones spend their time on; a GRPO
group's session and finish calls, one for all its episodes, count once). So the
parts add up to the step's wall time exactly, and each shows what a second of rollout went to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from seamless.agent.runner import EpisodeTimes
from seamless.types import Turn

ROLLOUT_PARTS = ("admission", "session", "proxy", "queued", "generation", "agent", "reward", "finish")
"""admission: no episode of the step active (waiting for the scheduler to admit them, or for a runner
slot); session: creating proxy sessions; proxy: the proxy's own part of LLM calls (auth, a paused
pool, token-in); queued: sent to vLLM until the first token (tokenizing, queue, prefill);
generation: first token to the call's end; agent: the agent's own time between its calls; reward:
scoring (and posting) it; finish: finishing the session."""
LOOP_PARTS = ("stream", "switch", "train", "sync", "log", "other")
"""stream: reading whole groups from the episode stream; switch: role changes (begin/end step);
train: the optimizer step; sync: staging and loading weights; log: traces and the row; other:
the previous step's checkpoint, evaluation and samples."""
PARTS = ROLLOUT_PARTS + LOOP_PARTS


class StepClock:
    """Accumulates the loop's phases between two `take()`s."""

    def __init__(self) -> None:
        self.last = time.time()
        self.parts: dict[str, float] = {}
        self.windows: list[tuple[float, float]] = []
        """Rollout windows (start, end) since the last take."""
        self.history: list[dict[str, float]] = []

    def mark(self, part: str) -> float:
        """The time since the last mark goes to `part`; returns now."""
        now = time.time()
        self.parts[part] = self.parts.get(part, 0.0) + (now - self.last)
        if part == "rollout":
            self.windows.append((self.last, now))
        self.last = now
        return now

    def take(self, episodes: Sequence[tuple[EpisodeTimes, Sequence[Turn]]]) -> dict[str, float]:
        """The step's profile as `profile/<part>_s` plus `profile/step_s`; starts the next step.
        `episodes`: the step's episodes, each with its recorded turns."""
        parts = {name: self.parts.get(name, 0.0) for name in LOOP_PARTS}
        rollout = self.parts.get("rollout", 0.0)
        parts |= {name: rollout * share for name, share in split_rollout(self.windows, episodes).items()}
        row = {f"profile/{name}_s": parts[name] for name in PARTS}
        row["profile/step_s"] = sum(self.parts.values())
        self.history.append(row)
        self.parts, self.windows = {}, []
        return row


def split_rollout(windows: list[tuple[float, float]],
                  episodes: Sequence[tuple[EpisodeTimes, Sequence[Turn]]]) -> dict[str, float]:
    """Shares (summing to 1) of the rollout windows' time spent on each of ROLLOUT_PARTS."""
    total = sum(end - start for start, end in windows)
    seconds = dict.fromkeys(ROLLOUT_PARTS, 0.0)
    active: list[tuple[float, float]] = []
    for window in windows:
        shared: set[tuple[str, tuple[float, float]]] = set()
        for times, turns in episodes:
            for name, value in _episode_seconds(times, _calls(turns), window).items():
                if name in ("session", "finish"):  # a group's one call, shared by its episodes: count it once
                    span = getattr(times, name)
                    value = 0.0 if (name, span) in shared else value
                    shared.add((name, span))
                seconds[name] += value
            active += [(max(a, window[0]), min(b, window[1]))
                       for a, b in (times.session, times.agent, times.reward, times.finish)]
    del seconds["admission"]  # waiting for a slot: not active (see the module's docstring)
    episode_s = sum(seconds.values())
    if total <= 0 or episode_s <= 0:
        return {name: float(name == "admission" and total > 0) for name in ROLLOUT_PARTS}
    busy = min(total, _union(active)) / total
    return {"admission": 1.0 - busy} | {name: busy * value / episode_s for name, value in seconds.items()}


def _calls(turns: Sequence[Turn]) -> list[tuple[float, float, float, float]]:
    """(started, sent, first token, ended) of each call once (the choices of a call share its clock)."""
    return sorted({(t.started_at, t.sent_at, t.first_token_at, t.ended_at) for t in turns if t.started_at > 0})


def _episode_seconds(e: EpisodeTimes, calls: list[tuple[float, float, float, float]],
                     window: tuple[float, float]) -> dict[str, float]:
    """Seconds of one episode's parts inside `window`."""
    def clip(a: float, b: float) -> float:
        return max(0.0, min(b, window[1]) - max(a, window[0]))

    in_calls = _union([(max(c[0], window[0]), min(c[3], window[1])) for c in calls])
    return {"admission": clip(*e.admission), "session": clip(*e.session),
            "proxy": sum(clip(c[0], c[1]) for c in calls), "queued": sum(clip(c[1], c[2]) for c in calls),
            "generation": sum(clip(c[2], c[3]) for c in calls), "agent": max(0.0, clip(*e.agent) - in_calls),
            "reward": clip(*e.reward), "finish": clip(*e.finish)}


def _union(spans: list[tuple[float, float]]) -> float:
    """Total length covered by the spans (empty or inverted spans count nothing)."""
    covered, end = 0.0, float("-inf")
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if b <= end:
            continue
        covered += b - max(a, end)
        end = b
    return covered


_COLOURS = {"admission": (160, 160, 160), "session": (140, 90, 60), "proxy": (250, 200, 60),
            "queued": (180, 205, 235), "generation": (52, 120, 200), "agent": (40, 160, 80),
            "reward": (150, 220, 150), "finish": (120, 60, 160),
            "stream": (90, 200, 200), "switch": (210, 40, 40), "train": (230, 120, 30), "sync": (245, 160, 200),
            "log": (100, 100, 100), "other": (60, 60, 60)}


def plot_profile(history: Sequence[dict[str, float]], path: str | Path, width: int = 1100, height: int = 460) -> Path:
    """A stacked bar per step: seconds of each part (PIL; no plotting library is installed)."""
    left, top, bottom, right = 60, 30, 90, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    tallest = max((row["profile/step_s"] for row in history), default=1.0) or 1.0
    plot_h = height - top - bottom
    bar_w = (width - left - right) / max(1, len(history))
    draw.text((left, 8), "where each step's wall time went (s)", fill="black")
    for i, row in enumerate(history):
        y = height - bottom
        for name in PARTS:
            h = row[f"profile/{name}_s"] / tallest * plot_h
            if h > 0:
                draw.rectangle([left + i * bar_w, y - h, left + (i + 1) * bar_w - 1, y], fill=_COLOURS[name])
            y -= h
    for k in range(5):
        y = height - bottom - plot_h * k / 4
        draw.text((5, y - 6), f"{tallest * k / 4:.2f}", fill="black")
    for i, name in enumerate(PARTS):
        lx, ly = left + (i % 8) * 128, height - bottom + 20 + (i // 8) * 22
        draw.rectangle([lx, ly, lx + 12, ly + 12], fill=_COLOURS[name])
        draw.text((lx + 16, ly), name, fill="black")
    path = Path(path)
    image.save(path)
    return path
