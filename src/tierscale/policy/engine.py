"""The product-facing policy API: snapshot + state in, decision + state out.

`decide_hpa` maps tierscale's view of a group onto the Kubernetes HPA: each `MetricInput` becomes
one HPA metric for the replica calculator, the largest proposal wins, and the result runs through
the `behavior` pipeline (stabilize → rate limit) exactly as `horizontal.go` composes it.
"""

from __future__ import annotations

import math
from dataclasses import replace

from tierscale.policy import threshold
from tierscale.policy.behavior import (
    RateLimited,
    Stabilized,
    rate_limit,
    scale_down_proposals,
    scale_up_proposals,
    stabilize,
    store_scale_event,
    with_downscale_window,
)
from tierscale.policy.replica_calculator import (
    CalculatorConfig,
    Container,
    ContainerSample,
    MetricError,
    Pod,
    PodMetric,
    PodPhase,
    PodSample,
    ReplicaCount,
    external_per_pod_replicas,
    pods_metric_replicas,
    resource_replicas,
)
from tierscale.policy.types import (
    Decision,
    GroupSnapshot,
    HpaParams,
    MetricInput,
    MetricProposal,
    PolicyState,
    RatePolicy,
    Recommendation,
    ReplicaStatus,
    ScalingRules,
    ThresholdParams,
)

CONTAINER = "main"  # a replica is one pod with one container: its CPU allotment is the request

_PHASES: dict[str, PodPhase] = {"pending": "Pending", "running": "Running", "failed": "Failed"}


# Mapping onto the calculator ----------------------------------------------------------------------


def _units(x: float) -> int:
    # Kubernetes quantities round up to whole milli-units; round() first so 0.1 * 1000 stays 100.
    return math.ceil(round(x, 6))


def _milli(x: float) -> int:
    return _units(x * 1000.0)


def _pod(r: ReplicaStatus) -> Pod:
    return Pod(
        name=r.id,
        phase=_PHASES.get(r.phase, "Running"),
        ready=r.ready,
        ready_last_transition=r.ready_changed_at,
        start_time=r.started_at,
        deleted=r.phase == "deleted",
        containers=(Container(CONTAINER, r.cpu_allotment_milli),),
    )


def _sample_keys(m: MetricInput, snap: GroupSnapshot) -> list[str]:
    # Replicas first, then samples for ids the group no longer lists (upstream counts those too).
    ids = [r.id for r in snap.replicas]
    known = set(ids)
    return ids + [k for k in m.per_replica if k not in known]


def _propose(
    params: HpaParams, snap: GroupSnapshot, m: MetricInput
) -> tuple[MetricProposal, ReplicaCount | None]:
    cfg = CalculatorConfig(params.tolerance, params.cpu_initialization_period, params.initial_readiness_delay)
    pods = [_pod(r) for r in snap.replicas]
    ts = m.sample_time if m.sample_time is not None else snap.now
    try:
        if not m.target > 0:
            raise MetricError(f"target must be positive, got {m.target}")
        if m.kind == "resource":
            samples = [
                PodSample(k, (ContainerSample(CONTAINER, _units(v)),), ts, m.sample_window)
                for k in _sample_keys(m, snap)
                if (v := m.per_replica.get(k)) is not None
            ]
            # HPA utilization targets are whole percents.
            calc = resource_replicas(snap.current_replicas, round(m.target), pods, samples, cfg, snap.now)
            value: float = calc.usage
        elif m.kind == "per_replica":
            metrics = {
                k: PodMetric(_milli(v), ts, m.sample_window)
                for k in _sample_keys(m, snap)
                if (v := m.per_replica.get(k)) is not None
            }
            calc = pods_metric_replicas(snap.current_replicas, _milli(m.target), pods, metrics, cfg, snap.now)
            value = calc.usage / 1000.0
        else:
            if m.total is None:
                why = m.error or "the source returned no value"
                raise MetricError(f"unable to get external metric {m.name}: {why}")
            calc = external_per_pod_replicas(
                snap.current_replicas, [_milli(m.total)], _milli(m.target), params.tolerance
            )
            value = m.total
    except MetricError as err:
        return MetricProposal(m.name, m.target, None, None, str(err)), None
    return MetricProposal(m.name, m.target, value, calc.replicas), calc


# Reason text --------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:.4g}"


def _kind(snap: GroupSnapshot, name: str) -> str:
    return next((m.kind for m in snap.metrics if m.name == name), "per_replica")


def _measured(snap: GroupSnapshot, p: MetricProposal, short: bool = False) -> str:
    kind = _kind(snap, p.metric)
    value = "?" if p.value is None else _num(p.value)
    vs = "vs" if short else "vs target"
    if kind == "resource":
        return f"{p.metric} {value}% {vs} {_num(p.target)}%"
    if kind == "total":
        return f"{p.metric} total {value} {vs} {_num(p.target)}/replica"
    return f"{p.metric} {value}/replica {vs} {_num(p.target)}"


def _policy(p: RatePolicy) -> str:
    return f"{p.type} {p.value}/{_num(p.period)}s"


def _rate_reason(
    limited: RateLimited, current: int, rules: ScalingRules, state: PolicyState, snap: GroupSnapshot
) -> str:
    lo, hi = snap.min_replicas, snap.max_replicas
    if limited.reason == "TooManyReplicas":
        return f"capped at max {hi}"
    if limited.reason == "TooFewReplicas":
        return f"held at min {lo}"
    up = limited.reason == "ScaleUpLimit"
    word = "scale-up" if up else "scale-down"
    if rules.select_policy == "Disabled":
        return f"{word} disabled by policy: stay at {limited.replicas}"
    propose = scale_up_proposals if up else scale_down_proposals
    proposals = propose(current, state.scale_up_events, state.scale_down_events, rules, snap.now)
    named = [_policy(p) for p, n in proposals if n == limited.replicas]
    if named:
        return f"{word} limited by rate policy ({', '.join(named)}) to {limited.replicas}"
    # Recent rescales already used the whole budget of every policy.
    return f"{word} limited by rate policy (budget used by recent scaling) to {limited.replicas}"


# decide_hpa ---------------------------------------------------------------------------------------


def _seed(state: PolicyState, current: int, now: float) -> PolicyState:
    # The controller's first look: without it a cold start could scale down with no window at all.
    if state.recommendations:
        return state
    return replace(state, recommendations=(Recommendation(current, now),))


def _clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


def decide_hpa(params: HpaParams, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
    """One HPA evaluation. The state returned carries the recorded recommendation."""
    current, lo, hi, now = snap.current_replicas, snap.min_replicas, snap.max_replicas, snap.now
    state = _seed(state, current, now)
    computed = [_propose(params, snap, m) for m in snap.metrics]
    proposals = tuple(out for out, _ in computed)
    valid = [(out, calc) for out, calc in computed if calc is not None]
    invalid = [out for out, calc in computed if calc is None]
    recommended = max((calc.replicas for _, calc in valid), default=current)

    def decision(desired: int, limits: list[str], parts: list[str], rec: int = recommended) -> Decision:
        return Decision("hpa", now, current, desired, proposals, rec, tuple(limits), "; ".join(parts))

    # Out of bounds: upstream goes straight to the bound, before looking at metrics or behavior.
    if current > hi:
        return decision(hi, ["TooManyReplicas"], [f"current {current} above max {hi} → {hi}"]), state
    if current < lo:
        return decision(lo, ["TooFewReplicas"], [f"current {current} below min {lo} → {lo}"]), state

    bad = ", ".join(f"{p.metric} ({p.error})" for p in invalid)
    if not valid:
        what = f"invalid metric {bad}" if invalid else "no metrics"
        return decision(current, ["invalid-metric"], [f"{what}: stay at {current}"], current), state

    win, calc = max(valid, key=lambda pc: pc[1].replicas)
    parts: list[str] = []
    limits: list[str] = []
    if calc.outcome == "tolerance" and recommended == current:
        parts.append(f"within tolerance ({_measured(snap, win, short=True)}): stay at {current}")
        limits.append("tolerance")
    elif calc.outcome == "direction-flip" and recommended == current:
        parts.append(
            f"{_measured(snap, win)}: counting missing/unready replicas would reverse the change: "
            f"stay at {current}"
        )
        limits.append("missing-or-unready")
    else:
        parts.append(f"{_measured(snap, win)} → {recommended}")
    if len(valid) > 1:
        parts[-1] += " (largest of " + ", ".join(f"{out.metric} → {out.replicas}" for out, _ in valid) + ")"

    # Upstream never scales down on partial information: a broken metric might be the busy one.
    if invalid and recommended < current:
        limits.append("invalid-metric")
        parts.append(f"scale-down blocked by invalid metric {bad}: stay at {current}")
        return decision(current, limits, parts), state
    if invalid:
        parts.append(f"ignoring invalid metric {bad}")

    behavior = params.behavior
    up_rules = behavior.scale_up
    down_rules = with_downscale_window(behavior.scale_down)
    stab: Stabilized = stabilize(
        current,
        recommended,
        state.recommendations,
        up_rules.stabilization_window or 0.0,
        down_rules.stabilization_window or 0.0,
        now,
    )
    state = replace(state, recommendations=stab.recommendations)
    if stab.replicas != recommended:
        limits.append("stabilization")
        if recommended < current:
            window = down_rules.stabilization_window or 0.0
            parts.append(
                f"scale-down held by stabilization window ({_num(window)}s): "
                f"highest recommendation {stab.down_bound}"
            )
        else:
            window = up_rules.stabilization_window or 0.0
            parts.append(
                f"scale-up held by stabilization window ({_num(window)}s): "
                f"lowest recommendation {stab.up_bound}"
            )

    limited = rate_limit(
        current,
        stab.replicas,
        lo,
        hi,
        up_rules,
        down_rules,
        state.scale_up_events,
        state.scale_down_events,
        now,
    )
    desired = limited.replicas
    if limited.reason != "DesiredWithinRange":
        limits.append(limited.reason)
        rules = up_rules if limited.reason == "ScaleUpLimit" else down_rules
        parts.append(_rate_reason(limited, current, rules, state, snap))

    bounded = _clamp(desired, lo, hi)
    if bounded != desired:
        limits.append("TooManyReplicas" if bounded < desired else "TooFewReplicas")
        parts.append(f"clamped to [{lo}, {hi}] → {bounded}")
    if bounded != recommended and not parts[-1].endswith(f" {bounded}"):
        parts.append(f"stay at {bounded}" if bounded == current else f"→ {bounded}")
    return decision(bounded, limits, parts), state


def record_scale(params: HpaParams, state: PolicyState, prev: int, new: int, now: float) -> PolicyState:
    """Call after the group was actually rescaled from `prev` to `new` replicas."""
    if new == prev:
        return state
    if new > prev:
        ups = store_scale_event(state.scale_up_events, params.behavior.scale_up, prev, new, now)
        return replace(state, scale_up_events=ups, last_scale_at=now)
    downs = store_scale_event(state.scale_down_events, params.behavior.scale_down, prev, new, now)
    return replace(state, scale_down_events=downs, last_scale_at=now)


def decide_threshold(
    params: ThresholdParams, snap: GroupSnapshot, state: PolicyState
) -> tuple[Decision, PolicyState]:
    """The upper/lower step rule; state only changes through `record_scale`."""
    return threshold.decide(params, snap, state), state
