"""The step rule: compare one metric's mean with an upper and a lower bound.

This is the lab's original rule, kept for users who want it, with the edges fixed: the mean is taken
over ready replicas only (a booting replica reporting 0% would otherwise drag it down), a missing
or broken metric never moves the count, bounds are always honoured, and a cooldown after each
rescale stops it from flapping while the new replicas warm up.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierscale.policy.types import (
    Decision,
    GroupSnapshot,
    MetricInput,
    MetricProposal,
    PolicyState,
    ReplicaStatus,
    ThresholdParams,
)


class ThresholdMetricError(ValueError):
    """The configured metric cannot be measured this tick."""


@dataclass(frozen=True)
class Measurement:
    value: float
    unit: str  # "%" for utilization, "" otherwise
    samples: int  # how many replicas (or 1 for a group total) went into the mean


def _is_ready(r: ReplicaStatus) -> bool:
    return r.phase == "running" and r.ready is True


def measure(metric: MetricInput, snap: GroupSnapshot) -> Measurement:
    """Mean of the metric over ready replicas (utilization % for `resource`; total/current for `total`)."""
    if metric.kind == "total":
        if metric.total is None:
            raise ThresholdMetricError(f"{metric.name}: the source returned no value")
        if snap.current_replicas <= 0:
            raise ThresholdMetricError(f"{metric.name}: no replicas to share the total")
        return Measurement(metric.total / snap.current_replicas, "", 1)
    values: list[float] = []
    for r in snap.replicas:
        v = metric.per_replica.get(r.id)
        if v is None or not _is_ready(r):
            continue
        if metric.kind == "resource":
            if not r.cpu_allotment_milli:
                continue  # utilization of an unknown allotment is meaningless
            values.append(v / r.cpu_allotment_milli * 100.0)
        else:
            values.append(v)
    if not values:
        raise ThresholdMetricError(f"{metric.name}: no ready replica reported a value")
    return Measurement(sum(values) / len(values), "%" if metric.kind == "resource" else "", len(values))


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


def decide(params: ThresholdParams, snap: GroupSnapshot, state: PolicyState) -> Decision:
    current = snap.current_replicas
    lo, hi = snap.min_replicas, snap.max_replicas
    limits: list[str] = []

    def done(recommended: int, desired: int, proposal: MetricProposal, reason: str) -> Decision:
        bounded = _clamp(desired, lo, hi)
        if bounded > desired:
            limits.append("TooFewReplicas")
            reason += f"; held at min {lo}"
        elif bounded < desired:
            limits.append("TooManyReplicas")
            reason += f"; capped at max {hi}"
        return Decision(
            "threshold", snap.now, current, bounded, (proposal,), recommended, tuple(limits), reason
        )

    metric = next((m for m in snap.metrics if m.name == params.metric), None)
    try:
        if metric is None:
            raise ThresholdMetricError(f"{params.metric}: metric not observed")
        m = measure(metric, snap)
    except ThresholdMetricError as err:
        limits.append("invalid-metric")
        proposal = MetricProposal(params.metric, params.upper, None, None, str(err))
        return done(current, current, proposal, f"invalid metric ({err}): stay at {current}")

    if m.value > params.upper:
        wanted, verb = current + params.step, f"above upper {_fmt(params.upper)}{m.unit}"
    elif m.value < params.lower:
        wanted, verb = current - params.step, f"below lower {_fmt(params.lower)}{m.unit}"
    else:
        wanted, verb = current, f"within [{_fmt(params.lower)}, {_fmt(params.upper)}]{m.unit}"
    head = f"{params.metric} {_fmt(m.value)}{m.unit} {verb}"
    proposal = MetricProposal(params.metric, params.upper, m.value, wanted)

    if wanted == current:
        return done(wanted, current, proposal, f"{head}: stay at {current}")
    # The cooldown runs from the last actual rescale, strict so that a zero cooldown never blocks.
    if state.last_scale_at is not None and snap.now < state.last_scale_at + params.cooldown:
        limits.append("cooldown")
        left = state.last_scale_at + params.cooldown - snap.now
        reason = f"{head} → {wanted}; held by cooldown ({_fmt(params.cooldown)}s, {_fmt(left)}s left)"
        return done(wanted, current, proposal, f"{reason}: stay at {current}")
    return done(wanted, wanted, proposal, f"{head} → {wanted}")
