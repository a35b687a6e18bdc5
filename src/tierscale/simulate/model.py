"""The capacity model: what a replica serves, how long it takes to provision, and what the group needs.

- A replica serves at most `capacity` requests per second (100 % of its CPU allotment); the balancer
  spreads the rate evenly over the ready replicas, so each one's CPU is `rate / (ready × capacity)`,
  capped at 100 %. What exceeds `ready × capacity` is the overflow (requests that would queue or fail).
- Demand (Herbst et al.): d_t = replicas needed to serve the rate at the reference utilization,
  `ceil(rate / (capacity × utilization))`. The reference is the same for every config compared, so a
  config cannot look better by aiming at a higher utilization.
- A new replica is ready (serves, reports metrics) a provisioning delay after it was asked for: fixed,
  uniform or log-normal; `container` ~1 s, `vm` ~3 s, `cloud` ~60 s.
- The trace is replayed on a grid of cells of at most one second (`Grid`); with `speed` > 1 time is
  compressed: each bin lasts bin/speed seconds while rates, delays and the policy's periods stay as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tierscale.config.durations import parse_duration
from tierscale.simulate.trace import SimInputError, Trace

__all__ = [
    "DELAY_PRESETS",
    "CapacityModel",
    "DelayModel",
    "Grid",
    "auto_capacity",
    "build_grid",
    "parse_delay",
]

DELAY_PRESETS = {"container": 1.0, "vm": 3.0, "cloud": 60.0}
DELAY_HINT = (
    "expected a duration (3s), a preset (container, vm, cloud), A..B (uniform) or lognormal:MEDIAN:SIGMA"
)


@dataclass(frozen=True)
class DelayModel:
    kind: Literal["fixed", "uniform", "lognormal"]
    a: float  # fixed: the delay; uniform: low; lognormal: median
    b: float = 0.0  # uniform: high; lognormal: sigma of the log
    text: str = ""

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        if self.kind == "lognormal":
            return self.a * math.exp(self.b**2 / 2)
        return self.a

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "uniform":
            return float(rng.uniform(self.a, self.b))
        if self.kind == "lognormal":
            return float(self.a * math.exp(self.b * rng.standard_normal()))
        return self.a


def parse_delay(text: str) -> DelayModel:
    spec = text.strip()
    if spec.lower() in DELAY_PRESETS:
        return DelayModel("fixed", DELAY_PRESETS[spec.lower()], text=spec.lower())
    try:
        if spec.lower().startswith("lognormal:"):
            _, median_text, sigma_text = spec.split(":")
            median, sigma = parse_duration(median_text), float(sigma_text)
            if not (median > 0 and 0 <= sigma <= 3):
                raise ValueError("lognormal needs a median > 0 and 0 <= sigma <= 3")
            return DelayModel("lognormal", median, sigma, spec)
        if ".." in spec:
            low_text, high_text = spec.split("..")
            low, high = parse_duration(low_text), parse_duration(high_text)
            if high < low:
                raise ValueError(f"A..B needs A <= B (got {spec!r})")
            return DelayModel("uniform", low, high, spec)
        return DelayModel("fixed", parse_duration(spec), text=spec)
    except ValueError as exc:
        detail = str(exc) if "lognormal" in str(exc) or ".." in str(exc) else DELAY_HINT
        raise SimInputError(f"--delay: {detail} (got {text!r})") from None


@dataclass(frozen=True)
class CapacityModel:
    capacity: float  # req/s one replica serves at 100 % of its CPU allotment
    utilization: float = 0.7  # reference utilization at which demand is counted (0 < u <= 1)

    @property
    def at_reference(self) -> float:
        return self.capacity * self.utilization

    def demand(self, rates: np.ndarray) -> np.ndarray:
        # The small epsilon keeps exact multiples (rate == k × capacity) at k, despite float noise.
        return np.ceil(rates / self.at_reference - 1e-9).clip(min=0).astype(np.int64)


def auto_capacity(rates: np.ndarray, utilization: float, max_replicas: int) -> float:
    """Replicas sized so the 99.9th-percentile rate needs 80 % of `max` at the reference utilization."""
    q = float(np.quantile(rates, 0.999))
    if q <= 0:
        raise SimInputError("--capacity auto: the trace has no load; give --capacity RPS")
    return q / (0.8 * max_replicas) / utilization


@dataclass(frozen=True)
class Grid:
    """The simulated timeline: `n` cells of `dt` seconds, the offered rate held constant in each."""

    dt: float
    rate: np.ndarray  # req/s per cell
    prefix: np.ndarray  # prefix[c] = sum(rate[:c])  (window means in O(1))

    @property
    def n(self) -> int:
        return len(self.rate)

    @property
    def duration(self) -> float:
        return self.n * self.dt

    def cell(self, t: float) -> int:
        """The first cell that starts at or after `t` (a change at `t` takes effect from there)."""
        return min(self.n, max(0, math.ceil(t / self.dt - 1e-9)))


def build_grid(trace: Trace, speed: float = 1.0) -> Grid:
    span = trace.bin / speed  # seconds one bin lasts on the simulated clock
    per_bin = max(1, math.ceil(span - 1e-9))  # cells per bin, so that a cell is at most ~1 s
    rate = np.repeat(trace.rates, per_bin) if per_bin > 1 else trace.rates.copy()
    prefix = np.concatenate(([0.0], np.cumsum(rate)))
    return Grid(span / per_bin, rate, prefix)
