"""Timeline: every resource's role and busy/idle state over time, and the bubble ratio.

bubble ratio = idle resource-seconds / total resource-seconds, over a window or per phase.
A resource is idle when it holds no role, is switching roles, or holds a role with nothing to do
(a rollout server with no running request, a trainer rank between steps).
"""

from __future__ import annotations

import bisect
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from seamless.scheduler.resources import Role

PHASES = ("rollout", "switch", "train", "sync")
"""Pipeline phases: no step running; roles changing before a step; a step; weights reaching
servers and roles changing back."""


@dataclass(frozen=True, slots=True)
class Segment:
    resource: int
    role: Role
    busy: bool
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class PhaseSpan:
    name: str
    step: int
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Mark:
    """One named part of a resource's role switch (vLLM sleep, a trainer offload, ...)."""

    resource: int
    name: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Event:
    """Something that changed the cluster at time t: a node joined or was lost, a server died,
    restarted or gave up. `resource` is the resource it concerns (None: the cluster)."""

    t: float
    kind: str
    detail: str = ""
    resource: int | None = None


class Timeline:
    """Recorder of segments; `set` and `begin_phase` are called at events, times in seconds."""

    def __init__(self, num_resources: int, roles: dict[int, Role] | None = None, t0: float = 0.0) -> None:
        self.num_resources = num_resources
        self.t0 = t0
        self.segments: list[Segment] = []
        self.phases: list[PhaseSpan] = []
        self.marks: list[Mark] = []
        self.events: list[Event] = []
        roles = roles or {}
        # open state per resource: (role, busy, since)
        self._open: dict[int, tuple[Role, bool, float]] = {
            rid: (roles.get(rid, Role.IDLE), False, t0) for rid in range(num_resources)}
        self._phase: tuple[str, int, float] = ("rollout", 0, t0)
        self.end: float | None = None
        self.lock = threading.RLock()
        """Held by every change here; a caller holds it too to read its clock and record in one go
        (a load sampler thread records busy/idle while the main thread switches roles)."""

    def set(self, t: float, rid: int, role: Role | None = None, busy: bool | None = None,
            only_if: Role | None = None) -> None:
        """Resource `rid` holds `role` and is busy or idle from time t on (None keeps the old value);
        with `only_if`, nothing changes unless the resource holds that role now."""
        with self.lock:
            if only_if is not None and self._open[rid][0] is not only_if:
                return
            self._set(max(t, self._open[rid][2]) if only_if is not None else t, rid, role, busy)

    def _set(self, t: float, rid: int, role: Role | None, busy: bool | None) -> None:
        old_role, old_busy, since = self._open[rid]
        role = old_role if role is None else role
        busy = old_busy if busy is None else busy
        if role in (Role.SWITCHING, Role.IDLE):
            busy = False
        if (role, busy) == (old_role, old_busy):
            return
        assert t >= since - 1e-9, f"time went back for resource {rid}: {t} < {since}"
        if t > since:
            self.segments.append(Segment(rid, old_role, old_busy, since, t))
        self._open[rid] = (role, busy, t)

    def mark(self, rid: int, name: str, start: float, end: float) -> None:
        """A part of a role switch on resource `rid`, drawn inside its row (it changes no role)."""
        with self.lock:
            self.marks.append(Mark(rid, name, start, end))

    def event(self, t: float, kind: str, detail: str = "", resource: int | None = None) -> None:
        """A cluster event at time t (drawn as a line across every row); it changes no role."""
        with self.lock:
            self.events.append(Event(t, kind, detail, resource))

    def role_of(self, rid: int) -> Role:
        return self._open[rid][0]

    def begin_phase(self, t: float, name: str, step: int) -> None:
        assert name in PHASES, name
        with self.lock:
            old, old_step, since = self._phase
            if t > since:
                self.phases.append(PhaseSpan(old, old_step, since, t))
            self._phase = (name, step, t)

    def close(self, t: float) -> None:
        """End every open segment and phase at t; the timeline is complete afterwards."""
        with self.lock:
            self._close(t)

    def _close(self, t: float) -> None:
        for rid, (role, busy, since) in self._open.items():
            if t > since:
                self.segments.append(Segment(rid, role, busy, since, t))
            self._open[rid] = (role, busy, t)
        self.begin_phase(t, self._phase[0], self._phase[1])
        self.end = t

    def snapshot(self, t: float) -> Timeline:
        """A closed copy ending at t (the live timeline keeps recording)."""
        copy = Timeline(self.num_resources, t0=self.t0)
        with self.lock:
            copy.segments = list(self.segments)
            copy.phases = list(self.phases)
            copy.marks = list(self.marks)
            copy.events = list(self.events)
            copy._open = dict(self._open)
            copy._phase = self._phase
        latest = max([since for _, _, since in copy._open.values()] + [copy._phase[2]])
        copy.close(max(t, latest))
        return copy

    # ---- arithmetic -------------------------------------------------------------------------

    def idle_and_total(self, start: float, end: float) -> tuple[float, float]:
        """Idle resource-seconds and total resource-seconds within [start, end]."""
        assert self.end is not None, "close() the timeline first"
        idle = sum(max(0.0, min(s.end, end) - max(s.start, start)) for s in self.segments if not s.busy)
        return idle, self.num_resources * max(0.0, end - start)

    def bubble_ratio(self, start: float | None = None, end: float | None = None) -> float:
        start = self.t0 if start is None else start
        end = self.end if end is None else end
        idle, total = self.idle_and_total(start, end)
        return idle / total if total > 0 else 0.0

    def bubble_by_phase(self, start: float | None = None, end: float | None = None) -> dict[str, float]:
        """Bubble ratio within the spans of each phase (phases absent from the window are left out)."""
        assert self.end is not None, "close() the timeline first"
        start = self.t0 if start is None else start
        end = self.end if end is None else end
        spans = [p for p in self.phases if p.end > start and p.start < end]
        starts = [p.start for p in spans]
        idle = dict.fromkeys(PHASES, 0.0)
        total = dict.fromkeys(PHASES, 0.0)
        for p in spans:
            total[p.name] += self.num_resources * (min(p.end, end) - max(p.start, start))
        for seg in self.segments:
            if seg.busy:
                continue
            # only spans that can overlap the segment: from the one containing seg.start onwards
            i = max(0, bisect.bisect_right(starts, seg.start) - 1)
            while i < len(spans) and spans[i].start < seg.end:
                p = spans[i]
                lo, hi = max(seg.start, p.start, start), min(seg.end, p.end, end)
                if hi > lo:
                    idle[p.name] += hi - lo
                i += 1
        return {name: idle[name] / total[name] for name in PHASES if total[name] > 0}

    def role_switches(self) -> int:
        """How many times a resource went from one working role to the other."""
        last: dict[int, Role] = {}
        switches = 0
        for seg in sorted(self.segments, key=lambda s: (s.resource, s.start)):
            if seg.role not in (Role.ROLLOUT, Role.TRAIN):
                continue
            if seg.resource in last and last[seg.resource] is not seg.role:
                switches += 1
            last[seg.resource] = seg.role
        return switches

    def role_seconds(self) -> dict[str, float]:
        out = {role.value: 0.0 for role in Role}
        for seg in self.segments:
            out[seg.role.value] += seg.end - seg.start
        return out

    def metrics(self, prefix: str = "scheduler/", start: float | None = None,
                end: float | None = None) -> dict[str, float]:
        """W&B-ready scalars: bubble ratio overall and per phase, role switches, seconds per role."""
        out = {f"{prefix}bubble_ratio": self.bubble_ratio(start, end)}
        out |= {f"{prefix}bubble_ratio/{k}": v for k, v in self.bubble_by_phase(start, end).items()}
        out[f"{prefix}role_switches"] = float(self.role_switches())
        out |= {f"{prefix}role_seconds/{k}": v for k, v in self.role_seconds().items()}
        return out

    # ---- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        assert self.end is not None, "close() the timeline first"
        return {"num_resources": self.num_resources, "t0": self.t0, "end": self.end,
                "segments": [asdict(s) | {"role": s.role.value} for s in self.segments],
                "phases": [asdict(p) for p in self.phases], "marks": [asdict(m) for m in self.marks],
                "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict) -> Timeline:
        timeline = cls(data["num_resources"], t0=data["t0"])
        timeline.segments = [Segment(s["resource"], Role(s["role"]), s["busy"], s["start"], s["end"])
                             for s in data["segments"]]
        timeline.phases = [PhaseSpan(**p) for p in data["phases"]]
        timeline.marks = [Mark(**m) for m in data.get("marks", [])]  # older files have none
        timeline.events = [Event(**e) for e in data.get("events", [])]
        timeline.end = data["end"]
        return timeline

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Timeline:
        return cls.from_dict(json.loads(Path(path).read_text()))
