"""Predictive scaling: forecast the load a provisioning delay ahead and scale out before it arrives.

The load is the group-wide total behind one of the group's metrics: for `cpu` the summed usage of the
replicas (millicores), for `requests_per_replica` / `prometheus` the measured total. The forecast is
either Holt's linear trend (double exponential smoothing; adapts within minutes, follows ramps) or
seasonal-naive (the load one `season` earlier, from per-`bucket` means; needs one season of history).

The forecast only ever *raises* the reactive recommendation, as AWS predictive scaling does: it enters
the HPA pipeline as one more "total" metric only when it asks for more replicas than the reactive metrics
do, so the largest proposal wins and stabilization and the scale-up rate limits apply to it as to any
metric. A group is never scaled in on a forecast alone: when the reactive metrics are all invalid, or the
forecast is not above them, the reactive decision stands unchanged.

Pure: no I/O, no clock. The forecaster's memory (level, trend, seasonal buckets) lives in
`PolicyState.forecast`, so it survives exactly as long as the rest of the policy state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from tierscale.policy.engine import decide_hpa
from tierscale.policy.types import (
    Decision,
    ForecastState,
    GroupSnapshot,
    HpaParams,
    MetricInput,
    PolicyState,
)

__all__ = [
    "FORECAST_METRIC",
    "ForecastMethod",
    "PredictiveParams",
    "decide_predictive",
    "forecast_load",
    "observed_load",
    "update_forecast",
]

ForecastMethod = Literal["holt", "seasonal_naive"]
FORECAST_METRIC = "forecast"  # the name of the extra proposal in decisions and /metrics


@dataclass(frozen=True)
class PredictiveParams:
    method: ForecastMethod = "holt"
    horizon: float = 10.0  # seconds ahead: the provisioning delay plus one sync period
    alpha: float = 0.5  # Holt level smoothing, 0 < alpha <= 1
    beta: float = 0.2  # Holt trend smoothing, 0 <= beta <= 1
    season: float = 86400.0  # seasonal_naive: the period of the pattern
    bucket: float = 60.0  # seasonal_naive: resolution of the remembered history
    metric: str | None = None  # which metric's load to forecast; None: the first cpu/total metric
    warmup: int = 3  # samples before Holt's forecast is trusted


@dataclass(frozen=True)
class Load:
    metric: str
    value: float  # group-wide total
    per_replica: float  # what one replica should carry at the metric's target


def _pick(params: PredictiveParams, snap: GroupSnapshot) -> MetricInput | None:
    for m in snap.metrics:
        if params.metric is not None and m.name != params.metric:
            continue
        if m.kind in ("resource", "total"):
            return m
    return None


def observed_load(params: PredictiveParams, snap: GroupSnapshot) -> Load | None:
    """The group-wide load behind the forecast metric, or None when it was not measured this tick."""
    m = _pick(params, snap)
    if m is None or not m.target > 0:
        return None
    if m.kind == "total":
        if m.total is None:
            return None
        return Load(m.name, m.total, m.target)
    allot = {r.id: r.cpu_allotment_milli for r in snap.replicas}
    values = [(v, allot.get(k) or 1000) for k, v in m.per_replica.items() if v is not None]
    if not values:
        return None
    mean_allotment = sum(a for _, a in values) / len(values)
    return Load(m.name, sum(v for v, _ in values), m.target / 100.0 * mean_allotment)


def _history_len(params: PredictiveParams) -> int:
    return math.ceil((params.season + params.horizon) / params.bucket) + 2


def _fold_bucket(fs: ForecastState, y: float, now: float, params: PredictiveParams) -> ForecastState:
    b = math.floor(now / params.bucket)
    if b == fs.open_bucket:
        return replace(fs, open_sum=fs.open_sum + y, open_n=fs.open_n + 1)
    closed = fs.open_sum / fs.open_n if fs.open_n else math.nan
    gap = max(0, b - fs.open_bucket - 1)  # buckets with no sample at all (controller was down)
    buckets = (*fs.buckets, closed, *([math.nan] * min(gap, _history_len(params))))
    first = b - len(buckets)
    keep = _history_len(params)
    if len(buckets) > keep:
        first += len(buckets) - keep
        buckets = buckets[-keep:]
    return replace(fs, buckets=buckets, first_bucket=first, open_bucket=b, open_sum=y, open_n=1)


def update_forecast(
    fs: ForecastState | None, y: float, now: float, params: PredictiveParams
) -> ForecastState:
    """Fold one load sample taken at `now` into the forecaster (irregular spacing is fine)."""
    if fs is None:
        b = math.floor(now / params.bucket)
        return ForecastState(y, 0.0, now, 1, (), b, b, y, 1)
    dt = now - fs.t
    if dt <= 0:
        return fs
    predicted = fs.level + fs.trend * dt
    level = params.alpha * y + (1 - params.alpha) * predicted
    trend = params.beta * (level - fs.level) / dt + (1 - params.beta) * fs.trend
    out = replace(fs, level=level, trend=trend, t=now, samples=fs.samples + 1)
    if params.method == "seasonal_naive":
        out = _fold_bucket(out, y, now, params)
    return out


def forecast_load(fs: ForecastState | None, params: PredictiveParams) -> float | None:
    """The load expected `params.horizon` seconds after the last sample; None while it cannot say."""
    if fs is None:
        return None
    if params.method == "holt":
        if fs.samples < params.warmup:
            return None
        return max(0.0, fs.level + fs.trend * params.horizon)
    target = fs.t + params.horizon - params.season
    i = math.floor(target / params.bucket) - fs.first_bucket
    if 0 <= i < len(fs.buckets) and not math.isnan(fs.buckets[i]):
        return fs.buckets[i]
    return None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def decide_predictive(
    hpa: HpaParams, params: PredictiveParams, snap: GroupSnapshot, state: PolicyState
) -> tuple[Decision, PolicyState]:
    """The HPA decision, raised (never lowered) to what the forecast load needs."""
    load = observed_load(params, snap)
    fs = state.forecast
    if load is not None:
        fs = update_forecast(fs, load.value, snap.now, params)
    reactive, reactive_state = decide_hpa(hpa, snap, state)

    def done(decision: Decision, st: PolicyState, note: str) -> tuple[Decision, PolicyState]:
        reason = f"{decision.reason}; {note}" if note else decision.reason
        return replace(decision, policy="predictive", reason=reason), replace(st, forecast=fs)

    if load is None:
        return done(reactive, reactive_state, "forecast: load not measured this tick")
    if all(p.replicas is None for p in reactive.proposals):
        # No valid reactive metric: never act on a forecast alone.
        return done(reactive, reactive_state, "forecast not used without a valid metric")
    predicted = forecast_load(fs, params)
    if predicted is None:
        return done(reactive, reactive_state, "forecast: warming up")
    need = math.ceil(round(predicted / load.per_replica, 9))
    head = f"forecast {load.metric} {_fmt(predicted)} in {_fmt(params.horizon)}s → {need}"
    if need <= reactive.recommended:
        return done(reactive, reactive_state, f"{head}, not above {reactive.recommended}")
    extra = MetricInput(FORECAST_METRIC, "total", load.per_replica, total=predicted)
    # No tolerance band here: it exists to ignore noise in a measurement, and the forecast is already
    # smoothed. With it, a forecast within 10 % of the current count would be dropped, which costs a
    # steady ramp one replica of lead. The result is still >= the reactive one: the largest proposal is
    # at least `need`, which is above the reactive recommendation.
    raised, raised_state = decide_hpa(
        replace(hpa, tolerance=0.0), replace(snap, metrics=(*snap.metrics, extra)), state
    )
    return done(raised, raised_state, f"{head} raises {reactive.recommended}")
