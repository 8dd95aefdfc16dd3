"""PNG plots drawn with PIL (no plotting library is installed): a timeline of roles and busy/idle
per resource, and the simulator's comparison of policies across cluster sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from seamless.scheduler.resources import Role
from seamless.scheduler.timeline import Timeline

# (busy, idle) colours per role; switching and idle are never busy
_COLOURS = {Role.ROLLOUT: ((52, 120, 200), (180, 205, 235)), Role.TRAIN: ((230, 120, 30), (245, 205, 160)),
            Role.SWITCHING: ((210, 40, 40), (210, 40, 40)), Role.IDLE: ((150, 150, 150), (150, 150, 150))}
_PHASE_COLOURS = {"rollout": (52, 120, 200), "switch": (210, 40, 40), "train": (230, 120, 30),
                  "sync": (120, 60, 160)}
_EVENT_COLOURS = {"node_lost": (200, 0, 0), "died": (200, 0, 0), "gave_up": (120, 0, 0), "waiting": (150, 150, 150),
                  "node_joined": (0, 140, 0), "restarted": (0, 140, 0), "restart_failed": (200, 120, 0)}
_LINE_COLOURS = [(52, 120, 200), (230, 120, 30), (40, 160, 80), (210, 40, 40), (120, 60, 160)]
_MAX_ROWS = 128


def plot_timeline(timeline: Timeline, path: str | Path, title: str = "", width: int = 1200) -> Path:
    """One row per resource (at most 128, evenly sampled), a phase strip on top, a legend below."""
    assert timeline.end is not None, "close() the timeline first"
    rows = list(range(timeline.num_resources))
    if len(rows) > _MAX_ROWS:
        rows = [round(i * (len(rows) - 1) / (_MAX_ROWS - 1)) for i in range(_MAX_ROWS)]
    row_h = max(3, min(20, 600 // len(rows)))
    left, top, right = 70, 50, 20
    height = top + len(rows) * row_h + 80 + (50 if timeline.events else 0)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    span = max(timeline.end - timeline.t0, 1e-9)
    x = lambda t: left + (t - timeline.t0) / span * (width - left - right)  # noqa: E731
    draw.text((left, 8), f"{title}  bubble ratio {timeline.bubble_ratio():.1%}", fill="black")
    for phase in timeline.phases:
        draw.rectangle([x(phase.start), top - 14, x(phase.end), top - 4], fill=_PHASE_COLOURS[phase.name])
    index = {rid: i for i, rid in enumerate(rows)}
    for seg in timeline.segments:
        if seg.resource in index:
            y = top + index[seg.resource] * row_h
            colour = _COLOURS[seg.role][0 if seg.busy else 1]
            draw.rectangle([x(seg.start), y, max(x(seg.end) - 1, x(seg.start)), y + row_h - 2], fill=colour)
    for mark in timeline.marks:  # the parts of a GPU role switch, as ticks with their initials
        if mark.resource in index:
            y = top + index[mark.resource] * row_h
            draw.rectangle([x(mark.start), y + row_h // 2 - 1, max(x(mark.end), x(mark.start) + 1), y + row_h // 2 + 1],
                           fill="black")
            if row_h >= 10:
                initials = "".join(word[0] for word in mark.name.split("_"))
                draw.text((x(mark.start), y), initials, fill="black")
    _draw_events(draw, timeline, x, top, top + len(rows) * row_h)
    for i, rid in enumerate(rows):
        if row_h >= 10 or i % max(1, len(rows) // 16) == 0:
            draw.text((5, top + i * row_h), f"gpu {rid}", fill="black")
    base = top + len(rows) * row_h + 8
    legend_y = base + 25 + (50 if timeline.events else 0)  # event labels go between the ticks and the legend
    for k in range(6):
        t = timeline.t0 + span * k / 5
        draw.text((x(t) - 10, base), f"{t - timeline.t0:.1f}s", fill="black")
    legend = [("rollout busy", _COLOURS[Role.ROLLOUT][0]), ("rollout idle", _COLOURS[Role.ROLLOUT][1]),
              ("train busy", _COLOURS[Role.TRAIN][0]), ("train idle", _COLOURS[Role.TRAIN][1]),
              ("switching", _COLOURS[Role.SWITCHING][0]), ("no role", _COLOURS[Role.IDLE][0]),
              ("phase sync", _PHASE_COLOURS["sync"])]
    for i, (name, colour) in enumerate(legend):
        lx = left + i * 150
        draw.rectangle([lx, legend_y, lx + 12, legend_y + 12], fill=colour)
        draw.text((lx + 16, legend_y), name, fill="black")
    path = Path(path)
    image.save(path)
    return path


def _draw_events(draw: ImageDraw.ImageDraw, timeline: Timeline, x, top: int, bottom: int) -> None:
    """Cluster changes (nodes lost or joined, servers dying and restarting): a line across every
    row, its label under the rows (staggered on three lines, so events close in time stay legible)."""
    for n, event in enumerate(timeline.events):
        ex = x(event.t)
        colour = _EVENT_COLOURS.get(event.kind, (0, 0, 0))
        draw.line([(ex, top - 16), (ex, bottom)], fill=colour, width=2)
        label = event.kind.replace("node_", "node ") + (f" gpu {event.resource}" if event.resource is not None else "")
        draw.text((ex + 2, bottom + 30 + 12 * (n % 3)), label, fill=colour)


def plot_sweep(results: Sequence, path: str | Path, width: int = 1100, height: int = 460) -> Path:
    """Two panels against cluster size (log scale): tokens/s per GPU and bubble ratio, a line per policy."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    policies = list(dict.fromkeys(r.policy for r in results))
    sizes = sorted({r.gpus for r in results})
    panels = [("tokens/s per GPU", lambda r: r.tokens_per_s / r.gpus), ("bubble ratio", lambda r: r.bubble_ratio)]
    panel_w = (width - 60) // 2
    for p, (name, value) in enumerate(panels):
        x0, y0, x1, y1 = 60 + p * panel_w, 40, 60 + p * panel_w + panel_w - 60, height - 90
        top = max(value(r) for r in results) * 1.1 or 1.0
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 15), name, fill="black")
        lo, hi = math.log2(sizes[0]), math.log2(sizes[-1])
        px = lambda n: x0 + 20 + (math.log2(n) - lo) / ((hi - lo) or 1) * (x1 - x0 - 40)  # noqa: E731
        py = lambda v: y1 - v / top * (y1 - y0)  # noqa: E731
        for n in sizes:
            draw.text((px(n) - 10, y1 + 5), str(n), fill="black")
        for k in range(5):
            v = top * k / 4
            draw.text((x0 - 55, py(v) - 6), f"{v:.3g}", fill="black")
        for i, policy in enumerate(policies):
            colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
            points = [(px(r.gpus), py(value(r))) for r in sorted(results, key=lambda r: r.gpus)
                      if r.policy == policy]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for cx, cy in points:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    draw.text((60, height - 60), "GPUs (log scale)", fill="black")
    for i, policy in enumerate(policies):
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        draw.rectangle([60 + i * 200, height - 35, 72 + i * 200, height - 23], fill=colour)
        draw.text((76 + i * 200, height - 35), policy, fill="black")
    path = Path(path)
    image.save(path)
    return path
