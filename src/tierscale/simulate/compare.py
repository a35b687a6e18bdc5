"""Results of several configs on one trace, ratios to the first, the score, and the replica-hours budget.

Every metric of a config is divided by the first config's (the baseline). The **score** weighs what
users pay for: four equally weighted factors, each a geometric mean of ratios,

    accuracy  A = √(θU ratio · θO ratio)
    timeshare T = √(τU ratio · τO ratio)
    overflow  O = ratio of the share of requests above the ready capacity
    churn     C = √(υ ratio · scalings-per-hour ratio)
    score       = (A · T · O · C)^(1/4)

so below 1 beats the baseline. The weight is per factor, not per metric: with the seven ratios weighed
alike, the five SPEC metrics would outvote overflow and scalings, and tuning to the five alone bought
accuracy with dropped requests and VM churn (issue P). The previous score, the geometric mean of the
five SPEC ratios θU, θO, τU, τO and υ (the reciprocal of BUNGEE's "elastic speedup"), is kept as
`spec_score` so earlier results stay comparable. Jitter is in neither: it is signed, and a ratio of two
negative adaptation deficits means nothing.

Replica-hours are a **constraint**, not a factor: a factor could be traded silently (a config that spends
40 % more replica-hours could still score below 1 by overflowing less). A config whose replica-hours
exceed `max_ratio` × the baseline's (default 1.0: no more than the baseline) is "over budget": it is
marked in the table and the summary and never named the best config, whatever its score.

Each metric is floored before dividing (0.01 percentage points; see `FLOORS` for the others), so a
perfect 0 does not make a ratio infinite or zero: two perfect zeros tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tierscale.simulate.metrics import (
    elasticity,
    overflow_requests,
    overflow_share,
    replica_hours,
    scalings_per_hour,
)
from tierscale.simulate.run import SimRun

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_REPLICA_HOURS",
    "FLOOR",
    "FLOORS",
    "SCORE_FACTORS",
    "SCORE_METRICS",
    "SPEC_METRICS",
    "Result",
    "best_within_budget",
    "factors",
    "measure",
    "ratio",
    "replica_hours_ratio",
    "score",
    "spec_score",
    "within_budget",
]

SPEC_METRICS = ("theta_u", "theta_o", "tau_u", "tau_o", "instability")
# (factor, the metrics whose ratios it is the geometric mean of); the score weighs the factors alike.
SCORE_FACTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accuracy", ("theta_u", "theta_o")),
    ("timeshare", ("tau_u", "tau_o")),
    ("overflow", ("overflow",)),
    ("churn", ("instability", "scalings_per_hour")),
)
SCORE_METRICS = tuple(k for _, keys in SCORE_FACTORS for k in keys)
FLOOR = 0.01  # percentage points: the SPEC metrics
# Below each floor a difference is noise to whoever pays: an overflow share of 0.001 % (one request in
# 100 000, a tenth of a 99.99 % error budget; a lower floor let 0.02 % against 0.0001 % weigh like a
# 200-fold loss), one request over capacity, one scaling in ten hours.
FLOORS = {
    "overflow": 1e-3,
    "overflow_requests": 1.0,
    "scalings_per_hour": 0.1,
    "replica_hours": 1e-9,
}
DEFAULT_MAX_REPLICA_HOURS = 1.0
# A config that spends exactly the baseline's replica-hours is within a 1.0 budget despite float noise.
BUDGET_SLACK = 1e-9

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
    ("scalings_per_hour", "scalings/h", "{:.2f}"),
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
    scalings: int,
) -> dict[str, float]:
    out = elasticity(demand, supply, dt)
    out["overflow"] = overflow_share(rates, supply, capacity)
    out["overflow_requests"] = overflow_requests(rates, supply, capacity, dt)
    out["replica_hours"] = replica_hours(allocated, dt)
    out["scale_events"] = float(scalings)
    out["scalings_per_hour"] = scalings_per_hour(scalings, len(demand), dt)
    return out


def ratio(value: float, base: float, key: str = "") -> float:
    floor = FLOORS.get(key, FLOOR)
    return max(value, floor) / max(base, floor)


def _geo(logs: list[float]) -> float:
    return math.exp(sum(logs) / len(logs))


def factors(metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Each factor of the score: the geometric mean of its metrics' ratios to the baseline."""
    return {
        name: _geo([math.log(ratio(metrics[k], base[k], k)) for k in keys]) for name, keys in SCORE_FACTORS
    }


def score(metrics: dict[str, float], base: dict[str, float]) -> float:
    """(accuracy · timeshare · overflow · churn)^(1/4) against the baseline: below 1 is better."""
    return _geo([math.log(f) for f in factors(metrics, base).values()])


def spec_score(metrics: dict[str, float], base: dict[str, float]) -> float:
    """The geometric mean of the five SPEC ratios θU, θO, τU, τO, υ (the score before issue P)."""
    return _geo([math.log(ratio(metrics[k], base[k], k)) for k in SPEC_METRICS])


def replica_hours_ratio(metrics: dict[str, float], base: dict[str, float]) -> float:
    return ratio(metrics["replica_hours"], base["replica_hours"], "replica_hours")


def within_budget(
    metrics: dict[str, float], base: dict[str, float], max_ratio: float = DEFAULT_MAX_REPLICA_HOURS
) -> bool:
    """Replica-hours at most `max_ratio` × the baseline's."""
    return replica_hours_ratio(metrics, base) <= max_ratio * (1 + BUDGET_SLACK)


def best_within_budget(results: list[Result], max_ratio: float = DEFAULT_MAX_REPLICA_HOURS) -> Result | None:
    """The config with the lowest score among those within the budget (the oracle is a reference, never
    a candidate); ties go to the earlier config, so the baseline wins a tie against itself."""
    base = results[0].metrics
    fits = [r for r in results if r.run is not None and within_budget(r.metrics, base, max_ratio)]
    return min(fits, key=lambda r: score(r.metrics, base), default=None)
