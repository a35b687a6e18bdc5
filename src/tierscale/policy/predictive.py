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

import itertools
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
    # Holt: how far the trend reaches. A linear trend projected a minute ahead is overconfident (damped
    # trend, Gardner & McKenzie 1985): its effect fades with this time constant, seconds (inf: never).
    damping: float = 15.0
    # Holt: a rise counts only when most of the last `confirm` sample-to-sample steps rose (0: always).
    # A load that jumped once and stays flat leaves Holt's trend positive for a minute, and the extra
    # replica it asks for then stays, since HPA's ceil(ratio * current) holds either count.
    confirm: int = 6


@dataclass(frozen=True)
class Load:
    metric: str
    value: float  # group-wide total
    per_replica: float  # what one replica should carry at the metric's target
    source: MetricInput  # the measurement it was read from (the forecast proposal is a scaled copy)


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
        return Load(m.name, m.total, m.target, m)
    allot = {r.id: r.cpu_allotment_milli for r in snap.replicas}
    values = [(v, allot.get(k) or 1000) for k, v in m.per_replica.items() if v is not None]
    if not values:
        return None
    mean_allotment = sum(a for _, a in values) / len(values)
    return Load(m.name, sum(v for v, _ in values), m.target / 100.0 * mean_allotment, m)


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
        return ForecastState(y, 0.0, now, 1, (), b, b, y, 1, recent=(y,) if params.confirm else ())
    dt = now - fs.t
    if dt <= 0:
        return fs
    predicted = fs.level + fs.trend * dt
    level = params.alpha * y + (1 - params.alpha) * predicted
    trend = params.beta * (level - fs.level) / dt + (1 - params.beta) * fs.trend
    recent = (*fs.recent, y)[-(params.confirm + 1) :] if params.confirm else ()
    out = replace(fs, level=level, trend=trend, t=now, samples=fs.samples + 1, recent=recent)
    if params.method == "seasonal_naive":
        out = _fold_bucket(out, y, now, params)
    return out


def _rising(recent: tuple[float, ...]) -> bool:
    # Most steps up, not one jump: a load that stepped once and stays flat is served by the reactive count.
    steps = [b - a for a, b in itertools.pairwise(recent)]
    return len(steps) > 0 and sum(d > 0 for d in steps) * 2 > len(steps)


def _season_value(fs: ForecastState, t: float, params: PredictiveParams) -> float | None:
    i = math.floor(t / params.bucket) - fs.first_bucket
    if 0 <= i < len(fs.buckets) and not math.isnan(fs.buckets[i]):
        return fs.buckets[i]
    return None


def forecast_load(fs: ForecastState | None, params: PredictiveParams, current: float) -> float | None:
    """The load expected `params.horizon` seconds after the last sample, whose load was `current`;
    None while the forecaster cannot say.

    The forecaster only supplies the expected *change*, applied to the load measured now: Holt's level
    trails a step by a few samples, and a forecast built on it would still ask for the old load after a
    drop. A flat forecast is therefore exactly the current load, and only an expected rise adds to it.
    """
    if fs is None:
        return None
    h = params.horizon
    if params.method == "holt":
        if fs.samples < params.warmup:
            return None
        reach = h if math.isinf(params.damping) else params.damping * -math.expm1(-h / params.damping)
        rise = fs.trend * reach
        if rise > 0 and params.confirm and not _rising(fs.recent):
            rise = 0.0
        return max(0.0, current + rise)
    # Seasonal: the change over the next `horizon` one season ago, applied to today's load.
    then = _season_value(fs, fs.t + h - params.season, params)
    before = _season_value(fs, fs.t - params.season, params)
    if then is None or before is None:
        return None
    return max(0.0, current * then / before if before > 0 else current + then - before)


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
    predicted = forecast_load(fs, params, load.value)
    if predicted is None:
        return done(reactive, reactive_state, "forecast: warming up")
    head = f"forecast {load.metric} {_fmt(predicted)} in {_fmt(params.horizon)}s"
    if not load.value > 0:
        return done(reactive, reactive_state, "forecast: no load to scale from")
    if predicted <= load.value:
        # No rise expected: the reactive decision stands (and HPA is not run a second time each pass).
        return done(reactive, reactive_state, f"{head}, not above {reactive.recommended}")
    # The forecast enters as the observed metric scaled by the expected change, so it goes through the very
    # maths of the reactive proposal (whole-percent utilization, readiness rules): only a rise asks for
    # more than the metric does.
    extra = _scaled(load.source, predicted / load.value)
    # No tolerance band here: it exists to ignore noise in a measurement, and the forecast is already
    # smoothed. With it, a forecast within 10 % of the current count would be dropped, which costs a
    # steady ramp one replica of lead. The result is still >= the reactive one: the largest proposal is
    # at least the forecast's, which is above the reactive recommendation.
    raised, raised_state = decide_hpa(
        replace(hpa, tolerance=0.0), replace(snap, metrics=(*snap.metrics, extra)), state
    )
    need = next((p.replicas for p in raised.proposals if p.metric == FORECAST_METRIC), None)
    if need is None or need <= reactive.recommended:
        return done(reactive, reactive_state, f"{head}, not above {reactive.recommended}")
    return done(raised, raised_state, f"{head} → {need} raises {reactive.recommended}")


def _scaled(m: MetricInput, factor: float) -> MetricInput:
    if m.kind == "total":
        return replace(m, name=FORECAST_METRIC, total=None if m.total is None else m.total * factor)
    values = {k: None if v is None else v * factor for k, v in m.per_replica.items()}
    return replace(m, name=FORECAST_METRIC, per_replica=values)
