"""Scale to zero and back (SPEC §7 `scale_to_zero`): the rules around whatever strategy the group runs.

- At zero, requests held by the balancer are the demand: the group wakes to enough replicas for them
  (`replica_concurrency` each) at once, without waiting for a metric that cannot exist yet.
- Above zero, the strategy decides as usual but never below one replica: a metric reading alone (a
  quiet CPU, a gap in the access log) must not empty a group that still gets requests.
- The group goes to zero only once no request arrived for `idle_after`, counted from the last request
  (not from the last scale-up), and never while a request is held.
- External totals (a query, a queue's depth) are demand too, as KEDA reads them: above `activation`
  (default 0) at zero, the group wakes straight to ceil(total / target) replicas; it goes to zero only
  once every one of them has been at or below its activation for `idle_after`. A total that could not
  be read is never idle and never wakes: unknown is not 0 (a fallback count, substituted upstream as
  count × target, does wake).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tierscale.policy.types import Decision, GroupSnapshot, MetricInput, PolicyState, Recommendation


@dataclass(frozen=True)
class ScaleToZeroParams:
    idle_after: float
    replica_concurrency: int = 10


def floor_at_one(snap: GroupSnapshot) -> GroupSnapshot:
    """The snapshot the strategy sees above zero: its minimum is at least one replica."""
    return snap if snap.min_replicas >= 1 else replace(snap, min_replicas=1)


def idle_for(snap: GroupSnapshot) -> float | None:
    """Seconds since the last request; None when the balancer has seen none."""
    return None if snap.last_request_at is None else max(0.0, snap.now - snap.last_request_at)


def _work(m: MetricInput) -> bool | None:
    """Whether an external total says there is work; None when it could not be read."""
    if m.total is None:
        return None
    return m.total > (m.activation or 0.0)


def _totals(snap: GroupSnapshot) -> list[MetricInput]:
    return [m for m in snap.metrics if m.kind == "total" and m.activation is not None]


def note_activity(state: PolicyState, snap: GroupSnapshot) -> PolicyState:
    """Record `now` as the last active time when any external total has work or is unknown."""
    busy = any(_work(m) is not False for m in _totals(snap))
    if busy or state.last_active_at is None:
        return replace(state, last_active_at=snap.now)
    return state


def at_zero(params: ScaleToZeroParams, snap: GroupSnapshot) -> Decision:
    """The decision for a group at zero replicas (`snap` carries the scheduled bounds)."""
    lo, hi, held = snap.min_replicas, snap.max_replicas, snap.held_requests
    if held > 0:
        want = max(lo, min(hi, max(1, math.ceil(held / params.replica_concurrency))))
        reason = f"woke: {held} request(s) held at zero → {want} replica(s)"
        return Decision("scale_to_zero", snap.now, 0, want, (), want, ("held_requests",), reason)
    waking = [m for m in _totals(snap) if _work(m) and m.target > 0]
    if waking:
        m = max(waking, key=lambda m: (m.total or 0.0) / m.target)
        total = m.total or 0.0
        want = max(lo, min(hi, max(1, math.ceil(round(total / m.target, 6)))))
        act = m.activation or 0.0
        reason = f"woke: {m.name} {total:g} above activation {act:g} → {want} replica(s)"
        return Decision("scale_to_zero", snap.now, 0, want, (), want, ("activation",), reason)
    if lo > 0:
        return Decision("scale_to_zero", snap.now, 0, lo, (), lo, ("TooFewReplicas",), f"min is {lo}")
    return Decision("scale_to_zero", snap.now, 0, 0, (), 0, (), "at zero: no request held")


def remember_wake(state: PolicyState, decision: Decision) -> PolicyState:
    """A wake's count joins the HPA's recommendations, so its scale-down stabilization window holds it as
    it holds any other scale-up (without it the next pass would undo the wake before the load shows)."""
    if decision.desired == 0:
        return state
    rec = Recommendation(decision.desired, decision.now)
    return replace(state, recommendations=(*state.recommendations, rec))


def to_zero_when_idle(
    params: ScaleToZeroParams, snap: GroupSnapshot, decision: Decision, last_active_at: float | None = None
) -> Decision:
    """`decision` (the strategy's, floored at one), or 0 when the group has been idle for `idle_after`:
    no request, and no external total above its activation (`last_active_at`, see `note_activity`)."""
    if snap.min_replicas > 0 or snap.held_requests > 0 or decision.desired == 0:
        return decision
    idle = idle_for(snap)
    if idle is None or idle < params.idle_after:
        return decision
    totals = _totals(snap)
    if totals:
        quiet = None if last_active_at is None else max(0.0, snap.now - last_active_at)
        if quiet is None or quiet < params.idle_after:
            return decision
        idle = min(idle, quiet)
        names = ", ".join(m.name for m in totals)
        reason = (
            f"idle: no request and {names} at or below activation for {idle:.0f}s "
            f"(idle_after {params.idle_after:g}s)"
        )
        return replace(decision, desired=0, limits=(*decision.limits, "idle_after"), reason=reason)
    reason = f"idle: no request for {idle:.0f}s (idle_after {params.idle_after:g}s)"
    return replace(decision, desired=0, limits=(*decision.limits, "idle_after"), reason=reason)
