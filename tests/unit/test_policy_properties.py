"""Properties of the policy engine that must hold for any input (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierscale.policy import (
    Behavior,
    Decision,
    GroupSnapshot,
    HpaParams,
    MetricInput,
    PolicyState,
    RatePolicy,
    Recommendation,
    ReplicaStatus,
    ScaleEvent,
    ScalingRules,
    ThresholdParams,
    decide_hpa,
    decide_threshold,
    record_scale,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIM = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NOW = 100_000
times = st.integers(NOW - 2000, NOW)
values = st.floats(0, 5000, allow_nan=False, allow_infinity=False)


@st.composite
def replica(draw: st.DrawFn, rid: str) -> ReplicaStatus:
    return ReplicaStatus(
        rid,
        draw(st.sampled_from(["pending", "running", "running", "running", "failed", "deleted"])),
        draw(st.sampled_from([True, True, False, None])),
        draw(st.none() | times),
        draw(st.none() | times),
        draw(st.sampled_from([1000, 1000, 500, 2000, 0, None])),
    )


@st.composite
def metric(draw: st.DrawFn, name: str, ids: list[str]) -> MetricInput:
    kind = draw(st.sampled_from(["resource", "per_replica", "total"]))
    keys = ids + draw(st.lists(st.sampled_from(["gone-1", "gone-2"]), max_size=1))
    per = {k: draw(st.none() | values) for k in keys if draw(st.booleans()) or kind == "resource"}
    return MetricInput(
        name,
        kind,
        draw(st.sampled_from([0, 10, 50, 80, 100, 250.5])),
        per if kind != "total" else {},
        draw(st.none() | values) if kind == "total" else None,
        draw(st.none() | times),
        draw(st.sampled_from([0.0, 15.0, 60.0])),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> GroupSnapshot:
    n = draw(st.integers(0, 8))
    ids = [f"r{i}" for i in range(n)]
    lo = draw(st.integers(0, 4))
    hi = draw(st.integers(max(lo, 1), 15))
    names = draw(st.lists(st.sampled_from(["cpu", "rps", "queue"]), unique=True, max_size=3))
    return GroupSnapshot(
        NOW,
        draw(st.integers(0, 20)),
        lo,
        hi,
        tuple(draw(replica(i)) for i in ids),
        tuple(draw(metric(name, ids)) for name in names),
    )


rules = st.builds(
    ScalingRules,
    st.sampled_from([None, 0.0, 30.0, 300.0]),
    st.sampled_from(["Max", "Min", "Disabled"]),
    st.lists(
        st.builds(
            RatePolicy, st.sampled_from(["Pods", "Percent"]), st.integers(1, 200), st.sampled_from([15, 60])
        ),
        min_size=1,
        max_size=2,
    ).map(tuple),
)
params = st.builds(
    HpaParams,
    st.sampled_from([0.0, 0.1, 0.3]),
    st.just(300.0),
    st.just(30.0),
    st.builds(Behavior, rules, rules),
)
states = st.builds(
    PolicyState,
    st.lists(st.builds(Recommendation, st.integers(0, 20), times), max_size=4).map(tuple),
    st.lists(st.builds(ScaleEvent, st.integers(0, 10), times), max_size=3).map(tuple),
    st.lists(st.builds(ScaleEvent, st.integers(0, 10), times), max_size=3).map(tuple),
    st.none() | times,
)


@FAST
@given(params, snapshots(), states)
def test_hpa_desired_is_always_within_bounds(p: HpaParams, snap: GroupSnapshot, state: PolicyState) -> None:
    d, _ = decide_hpa(p, snap, state)
    assert snap.min_replicas <= d.desired <= snap.max_replicas, d.reason


@FAST
@given(
    st.builds(
        ThresholdParams,
        st.sampled_from(["cpu", "rps"]),
        st.just(70.0),
        st.just(20.0),
        st.integers(1, 3),
        st.sampled_from([0.0, 15.0]),
    ),
    snapshots(),
    states,
)
def test_threshold_desired_is_always_within_bounds(
    p: ThresholdParams, snap: GroupSnapshot, state: PolicyState
) -> None:
    d, _ = decide_threshold(p, snap, state)
    assert snap.min_replicas <= d.desired <= snap.max_replicas, d.reason


@FAST
@given(params, snapshots(), states)
def test_same_inputs_same_decision(p: HpaParams, snap: GroupSnapshot, state: PolicyState) -> None:
    assert decide_hpa(p, snap, state) == decide_hpa(p, snap, state)


@FAST
@given(
    params,
    states,
    st.integers(1, 10),
    st.lists(st.integers(1, 200), min_size=1, max_size=3),
    st.data(),
)
def test_within_tolerance_never_changes(
    p: HpaParams, state: PolicyState, current: int, targets: list[int], data: st.DataObject
) -> None:
    # Every replica ready and reporting: the calculator's fast path, where tolerance applies directly.
    reps = tuple(ReplicaStatus(f"r{i}", "running", True, NOW - 3000, NOW - 3600) for i in range(current))
    metrics = []
    for j, target in enumerate(targets):
        lo, hi = target * (1 - p.tolerance), target * (1 + p.tolerance)
        usage = {
            r.id: data.draw(st.integers(int(lo * 10) + 1, max(int(hi * 10), int(lo * 10) + 1))) for r in reps
        }
        metrics.append(MetricInput(f"m{j}", "resource", target, usage, NOW, 0.0))
    snap = GroupSnapshot(NOW, current, 1, 10, reps, tuple(metrics))
    d, _ = decide_hpa(p, snap, state)
    ratios = [pr.value / pr.target for pr in d.proposals if pr.value is not None]
    if all(abs(1 - r) <= p.tolerance for r in ratios):
        assert d.desired == current, d.reason


# Simulations -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    at: int  # seconds since the start
    load: float  # millicores per replica-equivalent of demand, spread over the replicas


def _simulate(p: HpaParams, steps: list[Step], lo: int, hi: int, start: int) -> list[tuple[int, Decision]]:
    current, state, out = start, PolicyState(), []
    for s in steps:
        reps = tuple(ReplicaStatus(f"r{i}", "running", True, -10_000, -10_000) for i in range(current))
        per = s.load / max(current, 1)
        m = MetricInput("cpu", "resource", 50, {r.id: per for r in reps}, s.at, 0.0)
        d, state = decide_hpa(p, GroupSnapshot(s.at, current, lo, hi, reps, (m,)), state)
        if d.desired != current:
            state = record_scale(p, state, current, d.desired, s.at)
            current = d.desired
        out.append((s.at, d))
    return out


@st.composite
def runs(draw: st.DrawFn) -> list[Step]:
    gaps = draw(st.lists(st.integers(1, 40), min_size=5, max_size=40))
    at, steps = 0, []
    for g in gaps:
        at += g
        steps.append(Step(at, draw(st.floats(0, 20_000, allow_nan=False))))
    return steps


rate_policy = st.builds(
    RatePolicy, st.sampled_from(["Pods", "Percent"]), st.integers(1, 150), st.sampled_from([10, 15, 60])
)


@SIM
@given(runs(), rate_policy, rate_policy, st.integers(1, 3), st.integers(4, 40))
def test_rate_limits_are_never_exceeded(
    steps: list[Step], up: RatePolicy, down: RatePolicy, lo: int, hi: int
) -> None:
    p = HpaParams(behavior=Behavior(ScalingRules(0.0, "Max", (up,)), ScalingRules(0.0, "Max", (down,))))
    log: list[tuple[int, int]] = []  # (time, signed change)
    prev = lo
    for at, d in _simulate(p, steps, lo, hi, lo):
        change = d.desired - d.current
        assert d.current == prev
        prev = d.desired
        if change == 0:
            continue
        log.append((at, change))
        rule = up if change > 0 else down
        # Net movement in this direction over the policy period ending now, this change included.
        net = sum(c for t, c in log if t > at - rule.period) * (1 if change > 0 else -1)
        start = d.desired - net if change > 0 else d.desired + net
        if rule.type == "Pods":
            assert net <= rule.value, (log, d.reason)
        elif change > 0:
            assert d.desired <= max(-(-start * (100 + rule.value) // 100), d.current), (log, d.reason)
        else:
            assert d.desired >= min(start * (100 - rule.value) // 100, d.current), (log, d.reason)


@SIM
@given(runs(), st.sampled_from([0, 30, 120, 300]), st.sampled_from([0, 30, 120]))
def test_stabilization_never_scales_before_its_window(steps: list[Step], down_w: int, up_w: int) -> None:
    generous = (RatePolicy("Percent", 1000, 15),)
    p = HpaParams(
        behavior=Behavior(ScalingRules(up_w, "Max", generous), ScalingRules(down_w, "Max", generous))
    )
    history: list[tuple[int, int]] = []
    for at, d in _simulate(p, steps, 1, 50, 2):
        if not history:
            history.append((at, d.current))  # the seed the engine records on first sight
        if d.desired < d.current:
            # No recommendation still inside the window may be above where we scale down to.
            inside = [r for t, r in history if t > at - down_w] + [d.recommended]
            assert d.desired >= max(inside), (history, d.reason)
        if d.desired > d.current:
            inside = [r for t, r in history if t > at - up_w] + [d.recommended]
            assert d.desired <= min(inside), (history, d.reason)
        history.append((at, d.recommended))
