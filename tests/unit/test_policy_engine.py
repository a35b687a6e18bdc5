"""Table-driven tests of the product-facing policy API: decide_hpa, decide_threshold, record_scale."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from tierscale.policy import (
    Behavior,
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

NOW = 10_000.0


def running(
    n: int, start: int = 0, ready: bool | None = True, allot: int | None = 1000
) -> list[ReplicaStatus]:
    # Started long ago and ready for long: outside every CPU readiness rule.
    return [
        ReplicaStatus(f"r{i}", "running", ready, NOW - 3000, NOW - 3600, allot)
        for i in range(start, start + n)
    ]


def cpu(*usage: float | None, target: float = 50, name: str = "cpu") -> MetricInput:
    return MetricInput(name, "resource", target, {f"r{i}": u for i, u in enumerate(usage)}, sample_time=NOW)


def per_replica(name: str, target: float, *values: float | None) -> MetricInput:
    return MetricInput(
        name, "per_replica", target, {f"r{i}": v for i, v in enumerate(values)}, sample_time=NOW
    )


def total(name: str, target: float, value: float | None) -> MetricInput:
    return MetricInput(name, "total", target, total=value)


def snap(
    current: int,
    *metrics: MetricInput,
    lo: int = 1,
    hi: int = 10,
    replicas: list[ReplicaStatus] | None = None,
    now: float = NOW,
) -> GroupSnapshot:
    reps = running(current) if replicas is None else replicas
    return GroupSnapshot(now, current, lo, hi, tuple(reps), metrics)


NEVER_READY = ReplicaStatus("r2", "running", False, NOW - 3600, NOW - 3600)
NO_DOWN_WINDOW = HpaParams(
    behavior=Behavior(scale_down=ScalingRules(0.0, "Max", (RatePolicy("Percent", 100, 15),)))
)
GENEROUS = HpaParams(
    behavior=Behavior(
        scale_up=ScalingRules(0.0, "Max", (RatePolicy("Percent", 1000, 15),)),
        scale_down=ScalingRules(0.0, "Max", (RatePolicy("Percent", 100, 15),)),
    )
)


@dataclass(frozen=True)
class HpaCase:
    snap: GroupSnapshot
    desired: int
    limits: tuple[str, ...] = ()
    reason_has: tuple[str, ...] = ()
    params: HpaParams = field(default_factory=HpaParams)
    state: PolicyState = field(default_factory=PolicyState)
    recommended: int | None = None


HPA_CASES = {
    "scale up on cpu": HpaCase(
        snap(2, cpu(910, 910)), 4, reason_has=("cpu 91% vs target 50% → 4",), recommended=4
    ),
    "within tolerance": HpaCase(
        snap(2, cpu(520, 520)), 2, ("tolerance",), ("within tolerance", "52%", "stay at 2")
    ),
    "multiple metrics: the largest proposal wins": HpaCase(
        snap(4, cpu(600, 600, 600, 600), per_replica("rps", 10, 20, 20, 20, 20), hi=20),
        8,
        reason_has=("rps 20/replica vs target 10 → 8", "largest of cpu → 5, rps → 8"),
        recommended=8,
    ),
    "invalid metric blocks scale-down": HpaCase(
        snap(4, cpu(100, 100, 100, 100), total("queue", 5, None)),
        4,
        ("invalid-metric",),
        ("scale-down blocked", "queue"),
        NO_DOWN_WINDOW,
        recommended=1,
    ),
    "invalid metric does not block scale-up": HpaCase(
        snap(2, cpu(910, 910), total("queue", 5, None)), 4, reason_has=("ignoring invalid metric queue",)
    ),
    "all metrics invalid: stay": HpaCase(
        snap(3, total("queue", 5, None)), 3, ("invalid-metric",), ("stay at 3",), recommended=3
    ),
    "no metrics at all: stay": HpaCase(snap(3), 3, ("invalid-metric",), ("no metrics",)),
    # 2 ready at 80% want ceil(1.6·2)=4, but the pending third replica counts as 0% → 53%: tolerance.
    "pending replica counts as 0 on scale-up": HpaCase(
        snap(3, cpu(800, 800), replicas=[*running(2), ReplicaStatus("r2", "pending", None, None, None)]),
        3,
        ("tolerance",),
        ("within tolerance",),
    ),
    # Without the missing replica the mean is 5 → 1 replica; taking it at target (10) gives 2.
    "missing metric treated as target on scale-down": HpaCase(
        snap(3, per_replica("rps", 10, 5, 5)), 2, params=NO_DOWN_WINDOW, recommended=2
    ),
    "total kind: total / target per replica": HpaCase(
        snap(8, total("rps", 10, 95), hi=20), 10, reason_has=("rps total 95 vs target 10/replica → 10",)
    ),
    "total kind within tolerance": HpaCase(snap(8, total("rps", 10, 84)), 8, ("tolerance",)),
    "stabilization holds a cold-start scale-down": HpaCase(
        snap(4, cpu(100, 100, 100, 100)),
        4,
        ("stabilization",),
        ("scale-down held by stabilization window (300s): highest recommendation 4",),
        recommended=1,
    ),
    "rate policy limits scale-up": HpaCase(
        snap(2, cpu(1000, 1000, target=10), hi=50),
        6,
        ("ScaleUpLimit",),
        ("cpu 100% vs target 10% → 20", "scale-up limited by rate policy (Pods 4/15s) to 6"),
        recommended=20,
    ),
    "recent scale-ups use the rate budget": HpaCase(
        snap(6, cpu(*[1000] * 6, target=10), hi=50),
        6,
        ("ScaleUpLimit",),
        ("budget used",),
        state=PolicyState(scale_up_events=(ScaleEvent(6, NOW - 5),)),
    ),
    "the policy that binds is named": HpaCase(
        snap(6, cpu(*[1000] * 6, target=10), hi=50),
        6,
        ("ScaleUpLimit",),
        ("(Pods 4/15s) to 6",),
        state=PolicyState(scale_up_events=(ScaleEvent(4, NOW - 5),)),
    ),
    "max clamps the scale-up": HpaCase(
        snap(2, cpu(1000, 1000, target=10), hi=3), 3, ("TooManyReplicas",), ("capped at max 3",)
    ),
    "min holds the scale-down": HpaCase(
        snap(3, cpu(10, 10, 10), lo=2), 2, ("TooFewReplicas",), ("held at min 2",), NO_DOWN_WINDOW
    ),
    "current above max goes to max": HpaCase(
        snap(12, cpu(*[500] * 12)), 10, ("TooManyReplicas",), ("current 12 above max 10",)
    ),
    "current below min goes to min even without metrics": HpaCase(
        snap(0, total("rps", 10, None), lo=1, replicas=[]), 1, ("TooFewReplicas",), ("below min 1",)
    ),
    # CPU readiness rules: a replica that has never been ready does not count...
    "never-ready replica ignored on scale-down": HpaCase(
        snap(3, cpu(100, 100, 900), replicas=[*running(2), NEVER_READY]), 1, params=NO_DOWN_WINDOW
    ),
    # ...but one that was ready once and turned unready after initialisation still does (as upstream).
    "once-ready replica still counts": HpaCase(
        snap(3, cpu(100, 100, 900), replicas=[*running(2), *running(1, start=2, ready=False)]),
        3,
        params=NO_DOWN_WINDOW,
    ),
    # Inside the CPU initialisation period a ready replica counts only once a full window was sampled.
    "booting replica's sample ignored until a window passed": HpaCase(
        snap(
            3,
            MetricInput("cpu", "resource", 50, {"r0": 100, "r1": 100, "r2": 900}, NOW - 10, 60),
            replicas=[*running(2), ReplicaStatus("r2", "running", True, NOW - 30, NOW - 60)],
        ),
        1,
        params=NO_DOWN_WINDOW,
    ),
    "missing cpu allotment is an invalid metric": HpaCase(
        snap(2, cpu(500, 500), replicas=running(2, allot=None)), 2, ("invalid-metric",), ("missing request",)
    ),
}


@pytest.mark.parametrize("case", HPA_CASES.values(), ids=HPA_CASES.keys())
def test_decide_hpa(case: HpaCase) -> None:
    d, _ = decide_hpa(case.params, case.snap, case.state)
    assert d.desired == case.desired, d.reason
    assert d.limits == case.limits, d.reason
    for text in case.reason_has:
        assert text in d.reason
    if case.recommended is not None:
        assert d.recommended == case.recommended
    assert d.policy == "hpa" and d.current == case.snap.current_replicas
    assert len(d.proposals) == len(case.snap.metrics)
    assert "\n" not in d.reason


def test_proposals_carry_measurements_and_errors() -> None:
    d, _ = decide_hpa(HpaParams(), snap(2, cpu(910, 910), total("q", 5, None)), PolicyState())
    cpu_p, q_p = d.proposals
    assert (cpu_p.metric, cpu_p.value, cpu_p.replicas, cpu_p.error) == ("cpu", 91, 4, None)
    assert q_p.replicas is None and q_p.error and "q" in q_p.error


def test_state_is_seeded_and_recommendation_recorded() -> None:
    _, st = decide_hpa(HpaParams(), snap(2, cpu(910, 910)), PolicyState())
    assert st.recommendations == (Recommendation(2, NOW), Recommendation(4, NOW))


def test_stabilization_releases_after_the_window() -> None:
    params, state = HpaParams(), PolicyState()
    low = (100, 100, 100, 100)
    d, state = decide_hpa(params, snap(4, cpu(*low), now=NOW), state)
    assert d.desired == 4 and "stabilization" in d.limits
    d, state = decide_hpa(params, snap(4, cpu(*low), now=NOW + 299), state)
    assert d.desired == 4
    # The seed {4, NOW} is exactly 300 s old: no longer inside the window (strict comparison).
    d, state = decide_hpa(params, snap(4, cpu(*low), now=NOW + 300), state)
    assert d.desired == 1 and d.limits == ()


def test_rate_limit_budget_refills_after_the_period() -> None:
    params, state = HpaParams(), PolicyState()
    hot = cpu(*[1000] * 10, target=10)
    d, state = decide_hpa(params, snap(2, hot, hi=50), state)
    assert d.desired == 6
    state = record_scale(params, state, 2, 6, NOW)
    d, state = decide_hpa(params, snap(6, hot, hi=50, now=NOW + 14), state)
    assert d.desired == 6 and "ScaleUpLimit" in d.limits
    d, state = decide_hpa(params, snap(6, hot, hi=50, now=NOW + 15), state)
    assert d.desired == 12  # Percent 100 from 6 beats Pods 4


RECORD_CASES = {
    "scale up stores an up event": (2, 5, (ScaleEvent(3, NOW),), ()),
    "scale down stores a down event": (5, 2, (), (ScaleEvent(3, NOW),)),
    "no change stores nothing": (3, 3, (), ()),
}


@pytest.mark.parametrize(("prev", "new", "ups", "downs"), RECORD_CASES.values(), ids=RECORD_CASES.keys())
def test_record_scale(
    prev: int, new: int, ups: tuple[ScaleEvent, ...], downs: tuple[ScaleEvent, ...]
) -> None:
    st = record_scale(HpaParams(), PolicyState(), prev, new, NOW)
    assert st.scale_up_events == ups and st.scale_down_events == downs
    assert st.last_scale_at == (None if prev == new else NOW)


def test_record_scale_reuses_outdated_slots() -> None:
    st = PolicyState(scale_up_events=(ScaleEvent(1, NOW - 100), ScaleEvent(2, NOW - 5)))
    st = record_scale(HpaParams(), st, 3, 4, NOW)
    assert st.scale_up_events == (ScaleEvent(1, NOW), ScaleEvent(2, NOW - 5))


# Threshold -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThCase:
    snap: GroupSnapshot
    desired: int
    limits: tuple[str, ...] = ()
    reason_has: tuple[str, ...] = ()
    params: ThresholdParams = field(default_factory=ThresholdParams)
    state: PolicyState = field(default_factory=PolicyState)


TH_CASES = {
    "above upper adds a step": ThCase(snap(2, cpu(800, 900)), 3, reason_has=("cpu 85% above upper 70%",)),
    "below lower removes a step": ThCase(snap(3, cpu(100, 100, 100)), 2, reason_has=("below lower 20%",)),
    "between bounds stays": ThCase(snap(3, cpu(500, 500, 500)), 3, reason_has=("stay at 3",)),
    "step size": ThCase(snap(2, cpu(900, 900)), 5, params=ThresholdParams(step=3)),
    "clamped at max": ThCase(snap(10, cpu(*[900] * 10)), 10, ("TooManyReplicas",), ("capped at max 10",)),
    "clamped at min": ThCase(snap(1, cpu(10)), 1, ("TooFewReplicas",)),
    "mean over ready replicas only": ThCase(
        snap(3, cpu(800, 800, 0), replicas=[*running(2), *running(1, start=2, ready=False)]), 4
    ),
    "cooldown holds": ThCase(
        snap(2, cpu(900, 900)), 2, ("cooldown",), ("cooldown (15s",), state=PolicyState(last_scale_at=NOW - 5)
    ),
    "cooldown over": ThCase(snap(2, cpu(900, 900)), 3, state=PolicyState(last_scale_at=NOW - 15)),
    "missing metric": ThCase(snap(2, cpu(900, 900, name="mem")), 2, ("invalid-metric",), ("not observed",)),
    "no ready sample": ThCase(snap(2, cpu(None, None)), 2, ("invalid-metric",)),
    "per replica mean": ThCase(
        snap(2, per_replica("rps", 0, 100, 60)), 3, params=ThresholdParams(metric="rps", upper=50, lower=10)
    ),
    "total divided by current": ThCase(
        snap(4, total("rps", 0, 20)), 3, params=ThresholdParams(metric="rps", upper=50, lower=10)
    ),
    "invalid total": ThCase(
        snap(4, total("rps", 0, None)), 4, ("invalid-metric",), params=ThresholdParams(metric="rps")
    ),
}


@pytest.mark.parametrize("case", TH_CASES.values(), ids=TH_CASES.keys())
def test_decide_threshold(case: ThCase) -> None:
    d, st = decide_threshold(case.params, case.snap, case.state)
    assert d.desired == case.desired, d.reason
    assert d.limits == case.limits, d.reason
    for text in case.reason_has:
        assert text in d.reason
    assert st == case.state and d.policy == "threshold"


def test_threshold_cooldown_starts_at_record_scale() -> None:
    params = ThresholdParams(cooldown=30)
    st = record_scale(HpaParams(), PolicyState(), 2, 3, NOW)
    hot = snap(3, cpu(900, 900, 900), now=NOW + 29)
    assert decide_threshold(params, hot, st)[0].desired == 3
    assert decide_threshold(params, replace(hot, now=NOW + 30), st)[0].desired == 4
