"""HPA normalization: stabilization windows, scaling rate policies and scale-event bookkeeping.

Mirrors the `behavior` half of Kubernetes `horizontal.go` (and the rule defaulting of
`apis/autoscaling/v2/defaults.go`). Pure: histories go in and come back as new tuples, and `now`
is an argument. Comparisons against cutoffs are strict, as upstream's `Before`/`After`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from tierscale.policy.types import (
    RatePolicy,
    Recommendation,
    ScaleEvent,
    ScalingRules,
    SelectPolicy,
    default_scale_up,
)

Direction = Literal["up", "down"]
ConditionReason = Literal[
    "DesiredWithinRange", "ScaleUpLimit", "TooManyReplicas", "ScaleDownLimit", "TooFewReplicas"
]

# Upstream seeds the policy fold with the int32 extremes; with no policies the sentinel leaks out.
MIN_INT32 = -(2**31)
MAX_INT32 = 2**31 - 1

DEFAULT_DOWNSCALE_STABILIZATION = 300.0  # --horizontal-pod-autoscaler-downscale-stabilization
LEGACY_SCALE_UP_LIMIT_FACTOR = 2.0
LEGACY_SCALE_UP_LIMIT_MINIMUM = 4.0


# Default rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRules:
    """Scaling rules as a user wrote them: None means "not set"."""

    stabilization_window: float | None = None
    select_policy: SelectPolicy | None = None
    policies: tuple[RatePolicy, ...] | None = None


def default_rules(direction: Direction) -> ScalingRules:
    if direction == "up":
        return default_scale_up()
    # The scale-down window has no API default: the controller flag fills it in later.
    return ScalingRules(None, "Max", (RatePolicy("Percent", 100, 15.0),))


def generate_rules(direction: Direction, user: UserRules | None) -> ScalingRules:
    """`GenerateHPAScaleUpRules` / `GenerateHPAScaleDownRules`: field-wise fallback to the defaults."""
    base = default_rules(direction)
    if user is None:
        return base
    return ScalingRules(
        stabilization_window=(
            user.stabilization_window if user.stabilization_window is not None else base.stabilization_window
        ),
        select_policy=user.select_policy if user.select_policy is not None else base.select_policy,
        # Policies are replaced as a whole, never merged.
        policies=user.policies if user.policies is not None else base.policies,
    )


def with_downscale_window(
    rules: ScalingRules, default: float = DEFAULT_DOWNSCALE_STABILIZATION
) -> ScalingRules:
    """`maybeInitScaleDownStabilizationWindow`."""
    if rules.stabilization_window is not None:
        return rules
    return ScalingRules(default, rules.select_policy, rules.policies)


# Stabilization ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stabilized:
    replicas: int
    recommendations: tuple[Recommendation, ...]  # history after recording this recommendation
    up_bound: int  # lowest recommendation inside the scale-up window (desired included)
    down_bound: int  # highest recommendation inside the scale-down window (desired included)


def _record(
    history: Sequence[Recommendation], old_index: int | None, desired: int, now: float
) -> tuple[Recommendation, ...]:
    # Reusing the slot of a recommendation that fell out of every window keeps the history bounded.
    rec = Recommendation(desired, now)
    if old_index is None:
        return (*history, rec)
    out = list(history)
    out[old_index] = rec
    return tuple(out)


def stabilize(
    current: int,
    desired: int,
    recommendations: Sequence[Recommendation],
    up_window: float,
    down_window: float,
    now: float,
) -> Stabilized:
    """`stabilizeRecommendationWithBehaviors`."""
    up_cutoff = now - up_window
    down_cutoff = now - down_window
    up = down = desired
    old_index: int | None = None
    for i, rec in enumerate(recommendations):
        if rec.t > up_cutoff:
            up = min(up, rec.replicas)
        if rec.t > down_cutoff:
            down = max(down, rec.replicas)
        if rec.t < up_cutoff and rec.t < down_cutoff:
            old_index = i
    result = current
    if result < up:
        result = up
    if result > down:
        result = down
    return Stabilized(result, _record(recommendations, old_index, desired, now), up, down)


def legacy_stabilize(
    desired: int, recommendations: Sequence[Recommendation], window: float, now: float
) -> tuple[int, tuple[Recommendation, ...]]:
    """`stabilizeRecommendation`: the HPA without `behavior` only stabilizes scale-down."""
    cutoff = now - window
    result = desired
    old_index: int | None = None
    for i, rec in enumerate(recommendations):
        if rec.t < cutoff:
            old_index = i
        elif rec.replicas > result:
            result = rec.replicas
    return result, _record(recommendations, old_index, desired, now)


# Rate limits --------------------------------------------------------------------------------------


def replicas_changed_in_period(events: Sequence[ScaleEvent], period: float, now: float) -> int:
    """`getReplicasChangePerPeriod`: an event exactly `period` old no longer counts."""
    cutoff = now - period
    return sum(e.replica_change for e in events if e.t > cutoff)


def _period_start(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    period: float,
    now: float,
) -> int:
    # The replica count at the start of the policy period, undoing what happened inside it.
    added = replicas_changed_in_period(up_events, period, now)
    deleted = replicas_changed_in_period(down_events, period, now)
    return current - added + deleted


def scale_up_proposals(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    rules: ScalingRules,
    now: float,
) -> tuple[tuple[RatePolicy, int], ...]:
    """What each scale-up policy alone would allow."""
    out: list[tuple[RatePolicy, int]] = []
    for p in rules.policies:
        start = _period_start(current, up_events, down_events, p.period, now)
        if p.type == "Pods":
            proposed = start + p.value
        else:
            # Rounded up so that a small percentage can still add a replica.
            proposed = math.ceil(float(start) * (1 + float(p.value) / 100))
        out.append((p, proposed))
    return tuple(out)


def scale_down_proposals(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    rules: ScalingRules,
    now: float,
) -> tuple[tuple[RatePolicy, int], ...]:
    """What each scale-down policy alone would allow."""
    out: list[tuple[RatePolicy, int]] = []
    for p in rules.policies:
        start = _period_start(current, up_events, down_events, p.period, now)
        # Percent truncates toward zero, as Go's int32() does; it may go below zero.
        proposed = start - p.value if p.type == "Pods" else int(float(start) * (1 - float(p.value) / 100))
        out.append((p, proposed))
    return tuple(out)


def _fold(proposals: Sequence[tuple[RatePolicy, int]], pick: Callable[[int, int], int], seed: int) -> int:
    result = seed
    for _, proposed in proposals:
        result = pick(result, proposed)
    return result


def scale_up_limit(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    rules: ScalingRules,
    now: float,
) -> int:
    """`calculateScaleUpLimitWithScalingRules`: Max picks the largest allowance, Min the smallest."""
    if rules.select_policy == "Disabled":
        return current
    proposals = scale_up_proposals(current, up_events, down_events, rules, now)
    if rules.select_policy == "Min":
        return _fold(proposals, min, MAX_INT32)
    return _fold(proposals, max, MIN_INT32)


def scale_down_limit(
    current: int,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    rules: ScalingRules,
    now: float,
) -> int:
    """`calculateScaleDownLimitWithBehaviors`: Max means the largest change, i.e. the lowest count."""
    if rules.select_policy == "Disabled":
        return current
    proposals = scale_down_proposals(current, up_events, down_events, rules, now)
    if rules.select_policy == "Min":
        return _fold(proposals, max, MIN_INT32)
    return _fold(proposals, min, MAX_INT32)


@dataclass(frozen=True)
class RateLimited:
    replicas: int
    reason: ConditionReason  # what the HPA ScalingLimited condition would say
    limit: int | None = None  # the rate limit in force when one was computed


def rate_limit(
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    up_rules: ScalingRules,
    down_rules: ScalingRules,
    up_events: Sequence[ScaleEvent],
    down_events: Sequence[ScaleEvent],
    now: float,
) -> RateLimited:
    """`convertDesiredReplicasWithBehaviorRate`. With desired == current, min/max are not applied."""
    if desired > current:
        # A limit below current means recent events used the budget up: hold, never shrink.
        lim = max(scale_up_limit(current, up_events, down_events, up_rules, now), current)
        if max_replicas > lim:
            allowed, reason = lim, "ScaleUpLimit"
        else:
            allowed, reason = max_replicas, "TooManyReplicas"
        if desired > allowed:
            return RateLimited(allowed, reason, lim)
        return RateLimited(desired, "DesiredWithinRange", lim)
    if desired < current:
        lim = min(scale_down_limit(current, up_events, down_events, down_rules, now), current)
        if min_replicas < lim:
            allowed, reason = lim, "ScaleDownLimit"
        else:
            allowed, reason = min_replicas, "TooFewReplicas"
        if desired < allowed:
            return RateLimited(allowed, reason, lim)
        return RateLimited(desired, "DesiredWithinRange", lim)
    return RateLimited(desired, "DesiredWithinRange")


def legacy_scale_up_limit(
    current: int,
    factor: float = LEGACY_SCALE_UP_LIMIT_FACTOR,
    minimum: float = LEGACY_SCALE_UP_LIMIT_MINIMUM,
) -> int:
    """`calculateScaleUpLimit`."""
    return int(max(factor * float(current), minimum))


def legacy_normalize(
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    factor: float = LEGACY_SCALE_UP_LIMIT_FACTOR,
    minimum: float = LEGACY_SCALE_UP_LIMIT_MINIMUM,
) -> RateLimited:
    """`convertDesiredReplicasWithRules`: the HPA without `behavior`."""
    lim = legacy_scale_up_limit(current, factor, minimum)
    if max_replicas > lim:
        allowed, reason = lim, "ScaleUpLimit"
    else:
        allowed, reason = max_replicas, "TooManyReplicas"
    if desired < min_replicas:
        return RateLimited(min_replicas, "TooFewReplicas", lim)
    if desired > allowed:
        return RateLimited(allowed, reason, lim)
    return RateLimited(desired, "DesiredWithinRange", lim)


# Scale events -------------------------------------------------------------------------------------


def longest_policy_period(rules: ScalingRules) -> float:
    return max((p.period for p in rules.policies), default=0.0)


def store_scale_event(
    events: Sequence[ScaleEvent], rules: ScalingRules | None, prev: int, new: int, now: float
) -> tuple[ScaleEvent, ...]:
    """`storeScaleEvent` for one direction's history; `rules` None means the HPA has no behavior."""
    if rules is None:
        return tuple(events)  # nothing would ever read them
    cutoff = now - longest_policy_period(rules)
    # The flag is sticky: once no policy can see an event, its slot is free for reuse.
    marked = [ScaleEvent(e.replica_change, e.t, e.outdated or e.t < cutoff) for e in events]
    event = ScaleEvent(abs(new - prev), now, False)
    reusable = [i for i, e in enumerate(marked) if e.outdated]
    if reusable:
        marked[reusable[-1]] = event
    else:
        marked.append(event)
    return tuple(marked)
