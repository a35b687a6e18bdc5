"""Results of several configs on one trace, ratios to the first, and one score per config.

The score is the geometric mean of the ratios (config / first config) of the five SPEC elasticity
metrics θU, θO, τU, τO and υ: below 1 is better than the first config. It is the reciprocal of BUNGEE's
"elastic speedup". Jitter is left out because it is signed (a ratio of two negative adaptation deficits
means nothing); replica-hours and the overflow share are reported beside it, not folded in, so a config
cannot buy a better score with more replicas unnoticed. Each metric is floored at 0.01 (percentage
points) before dividing, so a perfect 0 does not make the ratio infinite or zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tierscale.simulate.metrics import elasticity, overflow_share, replica_hours
from tierscale.simulate.run import SimRun

__all__ = ["COLUMNS", "FLOOR", "SCORE_METRICS", "Result", "measure", "ratio", "score"]

SCORE_METRICS = ("theta_u", "theta_o", "tau_u", "tau_o", "instability")
FLOOR = 0.01
# key, header, format
COLUMNS = (
    ("theta_u", "θU %", "{:.2f}"),
    ("theta_o", "θO %", "{:.2f}"),
    ("tau_u", "τU %", "{:.2f}"),
    ("tau_o", "τO %", "{:.2f}"),
    ("instability", "υ %", "{:.2f}"),
    ("jitter", "jitter/h", "{:.1f}"),
    ("overflow", "overflow %", "{:.3f}"),
    ("replica_hours", "replica-h", "{:.1f}"),
    ("scale_events", "scalings", "{:.0f}"),
)


@dataclass
class Result:
    name: str
    policy: str
    metrics: dict[str, float]
    supply: np.ndarray
    allocated: np.ndarray
    config: str | None = None  # path; None for the oracle
    group: str | None = None
    run: SimRun | None = None
    extra: dict[str, float] = field(default_factory=dict)


def measure(
    demand: np.ndarray,
    supply: np.ndarray,
    allocated: np.ndarray,
    rates: np.ndarray,
    capacity: float,
    dt: float,
) -> dict[str, float]:
    out = elasticity(demand, supply, dt)
    out["overflow"] = overflow_share(rates, supply, capacity)
    out["replica_hours"] = replica_hours(allocated, dt)
    return out


# The overflow share is tiny next to the SPEC metrics (a few 0.001 % matter): it gets its own floor.
FLOORS = {"overflow": 1e-4, "replica_hours": 1e-9}


def ratio(value: float, base: float, key: str = "") -> float:
    floor = FLOORS.get(key, FLOOR)
    return max(value, floor) / max(base, floor)


def score(metrics: dict[str, float], base: dict[str, float]) -> float:
    logs = [math.log(ratio(metrics[k], base[k])) for k in SCORE_METRICS]
    return math.exp(sum(logs) / len(logs))
