"""Predictive policy: the forecasters, the raise-only rule, and the `policy: predictive` config keys."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierscale.config import ConfigError, load_config_text, predictive_params
from tierscale.policy import HpaParams, PolicyState, decide_hpa
from tierscale.policy.predictive import (
    PredictiveParams,
    decide_predictive,
    forecast_load,
    observed_load,
    update_forecast,
)
from tierscale.policy.types import ForecastState, GroupSnapshot, MetricInput, ReplicaStatus


def feed(params: PredictiveParams, samples: list[tuple[float, float]]) -> ForecastState:
    fs = None
    for t, y in samples:
        fs = update_forecast(fs, y, t, params)
    assert fs is not None
    return fs


def test_holt_update_by_hand() -> None:
    p = PredictiveParams(alpha=0.5, beta=0.5, horizon=20.0, warmup=2)
    fs = feed(p, [(0.0, 10.0), (10.0, 20.0)])
    # predicted 10 + 0*10 = 10; level = .5*20 + .5*10 = 15; trend = .5*(15-10)/10 + .5*0 = 0.25
    assert (fs.level, fs.trend, fs.samples) == (15.0, 0.25, 2)
    assert forecast_load(fs, p) == pytest.approx(15.0 + 0.25 * 20.0)
    assert update_forecast(fs, 99.0, 10.0, p) is fs  # a second sample at the same time is ignored


def test_holt_waits_for_warmup_and_follows_a_ramp() -> None:
    p = PredictiveParams(horizon=30.0)
    assert forecast_load(feed(p, [(0.0, 5.0), (5.0, 6.0)]), p) is None  # 2 < warmup 3
    ramp = [(t, 2.0 * t) for t in range(0, 1000, 5)]
    fs = feed(p, ramp)
    assert fs.trend == pytest.approx(2.0, rel=1e-3)
    assert forecast_load(fs, p) == pytest.approx(2.0 * (995 + 30), rel=1e-3)
    falling = feed(p, [(t, max(0.0, 100.0 - 5 * t)) for t in range(0, 20, 5)])
    assert forecast_load(falling, PredictiveParams(horizon=1000.0)) == 0.0  # never a negative load


def test_seasonal_naive_returns_the_load_one_season_earlier() -> None:
    p = PredictiveParams(method="seasonal_naive", season=600.0, bucket=60.0, horizon=120.0)
    # Bucket k (60 s each) carries load k % 10 * 10 for two seasons, sampled every 5 s.
    fs = feed(p, [(float(t), float((t // 60) % 10 * 10)) for t in range(0, 1200, 5)])
    # Last sample at t = 1195 (bucket 19); 1195 + 120 - 600 = 715 -> bucket 11 -> 10.
    assert forecast_load(fs, p) == pytest.approx(10.0)
    young = feed(p, [(float(t), 1.0) for t in range(0, 300, 5)])
    assert forecast_load(young, p) is None  # less than a season of history
    assert len(fs.buckets) <= math.ceil((600 + 120) / 60) + 2  # history stays bounded


def test_seasonal_history_marks_a_gap_as_unknown() -> None:
    p = PredictiveParams(method="seasonal_naive", season=600.0, bucket=60.0, horizon=0.0)
    fs = feed(p, [(0.0, 7.0), (30.0, 9.0), (300.0, 1.0)])  # nothing in buckets 1-4
    assert fs.buckets[0] == 8.0
    assert all(math.isnan(b) for b in fs.buckets[1:5])
    assert fs.open_bucket == 5


def replicas(n: int) -> tuple[ReplicaStatus, ...]:
    return tuple(ReplicaStatus(f"r{i}", "running", True, 0.0, 0.0, 500) for i in range(n))


def test_observed_load_for_cpu_and_totals() -> None:
    cpu = MetricInput("cpu", "resource", 60.0, {"r0": 200.0, "r1": 400.0, "gone": None})
    snap = GroupSnapshot(100.0, 2, 1, 10, replicas(2), (cpu,))
    load = observed_load(PredictiveParams(), snap)
    assert load is not None
    assert (load.metric, load.value, load.per_replica) == ("cpu", 600.0, 300.0)  # 60 % of 500m
    total = MetricInput("requests_per_replica", "total", 20.0, total=55.0)
    snap2 = GroupSnapshot(100.0, 2, 1, 10, replicas(2), (cpu, total))
    load2 = observed_load(PredictiveParams(metric="requests_per_replica"), snap2)
    assert load2 is not None and (load2.value, load2.per_replica) == (55.0, 20.0)
    lat = MetricInput("latency_p95_ms", "per_replica", 100.0, {"r0": 50.0})
    assert observed_load(PredictiveParams(), GroupSnapshot(100.0, 2, 1, 10, replicas(2), (lat,))) is None


def snap_at(t: float, total: float | None, current: int = 2) -> GroupSnapshot:
    metric = MetricInput("requests_per_replica", "total", 10.0, total=total)
    return GroupSnapshot(t, current, 1, 50, replicas(current), (metric,))


def test_a_rising_load_is_served_ahead_of_time() -> None:
    params = PredictiveParams(horizon=60.0)
    state = PolicyState()
    for t in range(0, 60, 5):  # 1 req/s more every second
        _, state = decide_predictive(HpaParams(), params, snap_at(float(t), float(t)), state)
    snap = snap_at(60.0, 60.0, current=6)
    reactive, _ = decide_hpa(HpaParams(), snap, state)
    decision, new_state = decide_predictive(HpaParams(), params, snap, state)
    assert reactive.desired == 6  # 60 req/s at 10 per replica
    assert decision.policy == "predictive"
    assert decision.desired > reactive.desired  # ~120 req/s expected in 60 s, rate-limited to 12
    assert "forecast requests_per_replica" in decision.reason and "raises 6" in decision.reason
    assert any(p.metric == "forecast" for p in decision.proposals)
    assert new_state.forecast is not None and new_state.forecast.samples == 13


def test_no_scale_in_on_a_forecast_alone() -> None:
    params = PredictiveParams(horizon=600.0)
    state = PolicyState()
    for t in range(0, 60, 5):  # falling fast: the forecast says 0
        _, state = decide_predictive(HpaParams(), params, snap_at(float(t), 100.0 - t), state)
    decision, _ = decide_predictive(HpaParams(), params, snap_at(60.0, 40.0, current=4), state)
    assert decision.desired == 4  # the reactive count (40 / 10), not lower
    assert "not above" in decision.reason
    broken, _ = decide_predictive(HpaParams(), params, snap_at(65.0, None, current=4), state)
    assert broken.desired == 4 and "load not measured" in broken.reason


@settings(max_examples=150, deadline=None)
@given(
    current=st.integers(1, 20),
    total=st.one_of(st.none(), st.floats(0, 500)),
    level=st.floats(0, 1000),
    trend=st.floats(-50, 50),
    recent=st.lists(st.integers(1, 30), max_size=5),
    horizon=st.floats(0, 300),
)
def test_forecast_only_raises_the_reactive_decision(
    current: int, total: float | None, level: float, trend: float, recent: list[int], horizon: float
) -> None:
    from tierscale.policy.types import Recommendation

    now = 1000.0
    fs = ForecastState(level, trend, now - 5.0, 10)
    recs = tuple(Recommendation(n, now - 10.0 * (i + 1)) for i, n in enumerate(recent))
    state = PolicyState(recommendations=recs, forecast=fs)
    snap = snap_at(now, total, current)
    reactive, _ = decide_hpa(HpaParams(), snap, state)
    decision, _ = decide_predictive(HpaParams(), PredictiveParams(horizon=horizon), snap, state)
    assert decision.desired >= reactive.desired
    if decision.desired < current:  # any scale-in was the reactive policy's own
        assert reactive.desired < current
    if total is None:
        assert decision.desired == reactive.desired


# ---- config ------------------------------------------------------------------------------------------------

HEAD = """\
groups:
  - name: web
    tier: libvirt
    max: 10
    sync_period: 5s
    template: {kernel: /k}
"""


def test_predictive_config_and_horizon() -> None:
    g = load_config_text(HEAD + "    policy: predictive\n", "c.yaml").groups[0]
    p = predictive_params(g)
    assert (p.method, p.horizon, p.alpha, p.beta, p.metric) == ("holt", 3.0 + 5.0, 0.5, 0.2, None)
    assert predictive_params(g, provisioning_delay=60.0).horizon == 65.0
    text = HEAD + (
        "    policy: predictive\n"
        "    metrics: [{type: cpu, target: 60}, {type: requests_per_replica, target: 20}]\n"
        "    forecast: {method: seasonal_naive, horizon: 2m, metric: requests_per_replica, season: 7d,"
        " bucket: 5m, alpha: 0.3, beta: 0}\n"
    )
    p2 = predictive_params(load_config_text(text, "c.yaml").groups[0])
    assert (p2.method, p2.horizon, p2.season, p2.bucket, p2.metric) == (
        "seasonal_naive",
        120.0,
        7 * 86400.0,
        300.0,
        "requests_per_replica",
    )
    auto = HEAD + "    policy: predictive\n    forecast: {horizon: auto}\n"
    assert predictive_params(load_config_text(auto, "c.yaml").groups[0]).horizon == 8.0


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("    forecast: {method: holt}\n", "c.yaml:7: groups[0].forecast: only used with policy: predictive"),
        (
            "    policy: predictive\n    forecast: {metric: requests_per_replica}\n",
            "c.yaml:8: groups[0].forecast.metric: must be one of the group's metrics (cpu)",
        ),
        (
            "    policy: predictive\n    metrics: [{type: latency_p95_ms, target: 200}]\n",
            "c.yaml:7: groups[0].policy: predictive needs a cpu, requests_per_replica or prometheus metric "
            "to forecast",
        ),
        (
            "    policy: predictive\n    forecast: {alpha: 0}\n",
            "c.yaml:8: groups[0].forecast.alpha: must be > 0.0",
        ),
        (
            "    policy: predictive\n    forecast: {method: arima}\n",
            "c.yaml:8: groups[0].forecast.method: must be one of: holt, seasonal_naive",
        ),
        (
            "    policy: predictive\n    forecast: {horizon: soon}\n",
            "c.yaml:8: groups[0].forecast.horizon: expected a duration like 500ms, 15s, 2m (got 'soon')",
        ),
        (
            "    policy: predictive\n    forecast: {season: 1h, bucket: 40m}\n",
            "c.yaml:8: groups[0].forecast.bucket: must be at most half the season (3600s)",
        ),
        ("    policy: magic\n", "c.yaml:7: groups[0].policy: must be one of: hpa, threshold, predictive"),
    ],
)
def test_bad_predictive_config(tail: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(HEAD + tail, "c.yaml")
    assert [str(p) for p in info.value.problems] == [expected]
