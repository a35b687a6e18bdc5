"""A short in-memory history per group for the dashboard's charts, fed by every reconcile pass.

One point per pass (the group's `sync_period`), kept for `WINDOW` seconds in a bounded deque: at a 1s
period that is ~900 small tuples per group, a few hundred kilobytes at most. Nothing is persisted: the
decision history in the event store is the durable record; the charts start again with the controller.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from tierscale.controller.status_model import GroupStatus

WINDOW = 900.0  # the dashboard shows the last 15 minutes

# Metrics measured for the whole group whose target is per replica (HPA External/AverageValue): the
# chart divides them by the replica count so that value and target share a unit.
TOTAL_METRICS = frozenset({"requests_per_replica", "prometheus"})


@dataclass(frozen=True, slots=True)
class Point:
    t: float
    desired: int | None
    current: int
    ready: int
    rps: float | None
    p95_ms: float | None
    # metric name -> (value in the target's unit, target); value None when the metric was invalid
    metrics: tuple[tuple[str, float | None, float], ...]


def _round(x: float | None, digits: int = 2) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)


def point_from_status(now: float, status: GroupStatus) -> Point:
    metrics: list[tuple[str, float | None, float]] = []
    decision = status.last_decision
    # A paused group records a manual decision without proposals: its metric lines show a gap.
    for p in decision.proposals if decision else []:
        value = p.value
        if value is not None and p.metric in TOTAL_METRICS:
            value = value / max(1, decision.current)  # type: ignore[union-attr]
        metrics.append((p.metric, _round(value), float(p.target)))
    return Point(
        t=now,
        desired=status.desired,
        current=status.current,
        ready=status.ready,
        rps=_round(status.rps),
        p95_ms=_round(status.p95_ms, 1),
        metrics=tuple(metrics),
    )


class GroupSeries:
    def __init__(self, period: float, window: float = WINDOW) -> None:
        self.window = window
        # Passes can come faster than sync_period (manual scale and health changes wake the loop).
        self.points: deque[Point] = deque(maxlen=int(window / max(0.25, period) * 2) + 16)

    def add(self, now: float, status: GroupStatus) -> None:
        self.points.append(point_from_status(now, status))

    def columns(self, now: float, since: float | None = None) -> dict[str, Any]:
        """Column-wise JSON (one array per line of a chart): compact, and what a chart draws from."""
        start = max(now - self.window, since if since is not None else -math.inf)
        pts = [p for p in self.points if p.t >= start]
        names: list[str] = []
        for p in pts:
            for name, _, _ in p.metrics:
                if name not in names:
                    names.append(name)
        metrics: dict[str, dict[str, list[float | None]]] = {n: {"value": [], "target": []} for n in names}
        for p in pts:
            seen = {name: (value, target) for name, value, target in p.metrics}
            for n in names:
                value, target = seen.get(n, (None, None))
                metrics[n]["value"].append(value)
                metrics[n]["target"].append(target)
        return {
            "t": [round(p.t, 3) for p in pts],
            "desired": [p.desired for p in pts],
            "current": [p.current for p in pts],
            "ready": [p.ready for p in pts],
            "rps": [p.rps for p in pts],
            "p95_ms": [p.p95_ms for p in pts],
            "metrics": metrics,
        }
