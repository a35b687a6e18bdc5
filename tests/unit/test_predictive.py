"""Predictive policy: the forecasters, the raise-only rule, and the `policy: predictive` config keys."""

from __future__ import annotations

import math
from dataclasses import replace

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
    p = PredictiveParams(alpha=0.5, beta=0.5, horizon=20.0, warmup=2, damping=math.inf, confirm=0)
    fs = feed(p, [(0.0, 10.0), (10.0, 20.0)])
    # predicted 10 + 0*10 = 10; level = .5*20 + .5*10 = 15; trend = .5*(15-10)/10 + .5*0 = 0.25
    assert (fs.level, fs.trend, fs.samples) == (15.0, 0.25, 2)
    # The forecaster supplies the change; it is added to the load measured now (20), not to its level.
    assert forecast_load(fs, p, 20.0) == pytest.approx(20.0 + 0.25 * 20.0)
    assert update_forecast(fs, 99.0, 10.0, p) is fs  # a second sample at the same time is ignored


def test_holt_waits_for_warmup_and_follows_a_ramp() -> None:
    p = PredictiveParams(horizon=30.0, damping=math.inf)
    assert forecast_load(feed(p, [(0.0, 5.0), (5.0, 6.0)]), p, 6.0) is None  # 2 < warmup 3
    ramp = [(t, 2.0 * t) for t in range(0, 1000, 5)]
    fs = feed(p, ramp)
    assert fs.trend == pytest.approx(2.0, rel=1e-3)
    assert forecast_load(fs, p, 2.0 * 995) == pytest.approx(2.0 * (995 + 30), rel=1e-3)
    falling = feed(p, [(t, max(0.0, 100.0 - 5 * t)) for t in range(0, 20, 5)])
    assert forecast_load(falling, replace(p, horizon=1000.0), 85.0) == 0.0  # never a negative load


def test_seasonal_naive_returns_the_load_one_season_earlier() -> None:
    p = PredictiveParams(method="seasonal_naive", season=600.0, bucket=60.0, horizon=120.0)
    # Bucket k (60 s each) carries load k % 10 * 10 for two seasons, sampled every 5 s.
    fs = feed(p, [(float(t), float((t // 60) % 10 * 10)) for t in range(0, 1200, 5)])
    # Last sample at t = 1195 (bucket 19, load 90). A season earlier the load went from 90 (t = 595, bucket 9)
    # to 10 (1195 + 120 - 600 = 715, bucket 11) over the horizon: the same change today, 90 -> 10.
    assert forecast_load(fs, p, 90.0) == pytest.approx(10.0)
    assert forecast_load(fs, p, 45.0) == pytest.approx(5.0)  # relative: today's load is half last season's
    young = feed(p, [(float(t), 1.0) for t in range(0, 300, 5)])
    assert forecast_load(young, p, 1.0) is None  # less than a season of history
    assert len(fs.buckets) <= math.ceil((600 + 120) / 60) + 2  # history stays bounded


def test_damping_caps_how_far_the_trend_reaches() -> None:
    ramp = [(float(t), 2.0 * t) for t in range(0, 1000, 5)]
    undamped = PredictiveParams(horizon=65.0, damping=math.inf)
    damped = PredictiveParams(horizon=65.0, damping=15.0)
    fs = feed(damped, ramp)
    now = 2.0 * 995
    assert forecast_load(fs, undamped, now) == pytest.approx(now + 2.0 * 65, rel=1e-3)
    # reach = 15 * (1 - e^(-65/15)) = 14.80 s of trend instead of 65
    assert forecast_load(fs, damped, now) == pytest.approx(now + 2.0 * 15 * -math.expm1(-65 / 15), rel=1e-3)
    # A short horizon is barely damped: 8 s ahead reaches 6.2 s.
    short = PredictiveParams(horizon=8.0, damping=15.0)
    assert forecast_load(fs, short, now) == pytest.approx(now + 2.0 * 15 * -math.expm1(-8 / 15), rel=1e-3)


def test_confirm_ignores_a_single_step_but_follows_a_ramp() -> None:
    p = PredictiveParams(horizon=30.0, confirm=4)
    # One step from 100 to 200, then flat: Holt's trend is still positive 10 s later, but only one of the
    # last four sample-to-sample steps rose, so the forecast is the load measured now.
    step = feed(p, [(float(t), 100.0 if t < 50 else 200.0) for t in range(0, 65, 5)])
    assert step.trend > 0 and step.recent == (100.0, 100.0, 200.0, 200.0, 200.0)
    assert forecast_load(step, p, 200.0) == 200.0
    assert forecast_load(step, replace(p, confirm=0), 200.0) > 200.0  # unconfirmed: the step's trend counts
    # A ramp with one dip among the last four steps still counts as rising (3 of 4 rose).
    dip = [(50.0, 44.0), (55.0, 56.0), (60.0, 61.0)]
    ramp = feed(p, [(float(t), float(t)) for t in range(0, 50, 5)] + dip)
    assert forecast_load(ramp, p, 61.0) > 61.0


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


def cpu_snap(t: float, per_replica_milli: float, current: int) -> GroupSnapshot:
    # Replicas up for long (no CPU readiness rules), 1000m each.
    reps = tuple(ReplicaStatus(f"r{i}", "running", True, -1000.0, -1000.0, 1000) for i in range(current))
    cpu = MetricInput("cpu", "resource", 68.0, {r.id: per_replica_milli for r in reps}, sample_time=t)
    return GroupSnapshot(t, current, 1, 50, reps, (cpu,))


def test_a_flat_forecast_asks_for_what_the_metric_does() -> None:
    # 24 replicas at 68.6 %: HPA truncates to 68 % and keeps 24, although 24 * 68.6 / 68 = 24.2. A forecast
    # of the same load must not ask for 25 through different arithmetic.
    hpa = HpaParams(tolerance=0.0)
    params = PredictiveParams(horizon=8.0)
    state = PolicyState()
    for t in range(0, 100, 5):
        decision, state = decide_predictive(hpa, params, cpu_snap(float(t), 686.0, 24), state)
    reactive, _ = decide_hpa(hpa, cpu_snap(100.0, 686.0, 24), state)
    decision, _ = decide_predictive(hpa, params, cpu_snap(100.0, 686.0, 24), state)
    assert reactive.desired == 24 and decision.desired == 24
    assert "not above 24" in decision.reason


def test_a_flat_forecast_keeps_the_tolerance_band() -> None:
    # 10 replicas at 72 % against 68 %: within HPA's default 10 % tolerance, so the count stays. The
    # forecast proposal is computed without a band; with no rise expected it must not add one replica.
    params = PredictiveParams(horizon=8.0)
    state = PolicyState()
    for t in range(0, 100, 5):
        _, state = decide_predictive(HpaParams(), params, cpu_snap(float(t), 720.0, 10), state)
    decision, _ = decide_predictive(HpaParams(), params, cpu_snap(100.0, 720.0, 10), state)
    assert decide_hpa(HpaParams(), cpu_snap(100.0, 720.0, 10), state)[0].desired == 10
    assert decision.desired == 10 and "not above 10" in decision.reason


def test_no_raise_right_after_a_drop() -> None:
    # Holt's level still remembers the higher load a few samples after a drop; the forecast must not.
    params = PredictiveParams(horizon=8.0)
    state = PolicyState()
    for t in range(0, 100, 5):
        _, state = decide_predictive(HpaParams(), params, snap_at(float(t), 100.0, 10), state)
    decision, state = decide_predictive(HpaParams(), params, snap_at(100.0, 60.0, 10), state)
    assert state.forecast is not None and state.forecast.level == pytest.approx(80.0)
    assert "raises" not in decision.reason and not any(
        p.metric == "forecast" and p.replicas and p.replicas > 6 for p in decision.proposals
    )


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
    assert (p.damping, p.confirm) == (15.0, 6)
    tuned = HEAD + "    policy: predictive\n    forecast: {damping: none, confirm: 0}\n"
    p3 = predictive_params(load_config_text(tuned, "c.yaml").groups[0])
    assert (p3.damping, p3.confirm) == (math.inf, 0)
    p4 = predictive_params(
        load_config_text(HEAD + "    policy: predictive\n    forecast: {damping: 1m}\n", "c.yaml").groups[0]
    )
    assert p4.damping == 60.0
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
            "c.yaml:7: groups[0].policy: predictive needs a cpu, requests_per_replica, prometheus, redis or "
            "rabbitmq metric to forecast",
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
        (
            "    policy: predictive\n    forecast: {damping: 0s}\n",
            "c.yaml:8: groups[0].forecast.damping: must be > 0",
        ),
        (
            "    policy: predictive\n    forecast: {damping: fast}\n",
            "c.yaml:8: groups[0].forecast.damping: expected a duration like 500ms, 15s, 2m (got 'fast')"
            " or none",
        ),
        (
            "    policy: predictive\n    forecast: {confirm: -1}\n",
            "c.yaml:8: groups[0].forecast.confirm: must be >= 0",
        ),
        ("    policy: magic\n", "c.yaml:7: groups[0].policy: must be one of: hpa, threshold, predictive"),
    ],
)
def test_bad_predictive_config(tail: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(HEAD + tail, "c.yaml")
    assert [str(p) for p in info.value.problems] == [expected]
