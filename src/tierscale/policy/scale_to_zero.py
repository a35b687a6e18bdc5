"""Scale to zero and back (SPEC §7 `scale_to_zero`): the rules around whatever strategy the group runs.

- At zero, requests held by the balancer are the demand: the group wakes to enough replicas for them
  (`replica_concurrency` each) at once, without waiting for a metric that cannot exist yet.
- Above zero, the strategy decides as usual but never below one replica: a metric reading alone (a
  quiet CPU, a gap in the access log) must not empty a group that still gets requests.
- The group goes to zero only once no request arrived for `idle_after`, counted from the last request
  (not from the last scale-up), and never while a request is held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tierscale.policy.types import Decision, GroupSnapshot, PolicyState, Recommendation


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


def at_zero(params: ScaleToZeroParams, snap: GroupSnapshot) -> Decision:
    """The decision for a group at zero replicas (`snap` carries the scheduled bounds)."""
    lo, hi, held = snap.min_replicas, snap.max_replicas, snap.held_requests
    if held > 0:
        want = max(lo, min(hi, max(1, math.ceil(held / params.replica_concurrency))))
        reason = f"woke: {held} request(s) held at zero → {want} replica(s)"
        return Decision("scale_to_zero", snap.now, 0, want, (), want, ("held_requests",), reason)
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


def to_zero_when_idle(params: ScaleToZeroParams, snap: GroupSnapshot, decision: Decision) -> Decision:
    """`decision` (the strategy's, floored at one), or 0 when the group has been idle for `idle_after`."""
    if snap.min_replicas > 0 or snap.held_requests > 0 or decision.desired == 0:
        return decision
    idle = idle_for(snap)
    if idle is None or idle < params.idle_after:
        return decision
    reason = f"idle: no request for {idle:.0f}s (idle_after {params.idle_after:g}s)"
    return replace(decision, desired=0, limits=(*decision.limits, "idle_after"), reason=reason)
