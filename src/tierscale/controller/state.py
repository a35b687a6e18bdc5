"""What a group loop remembers between passes, and the one state every replica is in.

All of it can be rebuilt from the infrastructure: a restarted controller lists the marks, adopts what it
finds and probes it; only the policy's short history starts empty (as the HPA's does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tierscale.controller.health import HealthTracker
from tierscale.policy.metric_freshness import Freshness
from tierscale.policy.types import Decision, Phase, PolicyState
from tierscale.providers.base import Replica, ReplicaStats


class ReplicaState(StrEnum):
    """The controller's view of a replica: status, health, the policy and the dashboard all use this."""

    PROVISIONING = "provisioning"  # the tier is still making it
    STARTING = "starting"  # running, not (yet) passing health checks, or not yet in the balancer
    READY = "ready"  # healthy and receiving traffic
    DRAINING = "draining"  # leaving: out of the balancer, finishing its requests, then deleted
    UNHEALTHY = "unhealthy"  # condemned by health checks: taken out and replaced, never readmitted
    FAILED = "failed"  # the tier reports it exited or broke
    STOPPED = "stopped"  # the tier reports it stopped (not by us)
    UNREACHABLE = "unreachable"  # its host does not answer: out of the balancer, replaced after host_timeout


STATES: tuple[str, ...] = tuple(s.value for s in ReplicaState)


def replica_state(
    r: Replica,
    health: HealthTracker,
    draining: bool,
    serving: frozenset[str] | None,
    unreachable: bool = False,
) -> ReplicaState:
    """`serving`: the addresses the balancer was last told; None when the group has no balancer (then
    healthy is ready: a console-checked server may have no address at all). `unreachable`: its host
    did not answer the last listing."""
    if draining:
        return ReplicaState.DRAINING
    if unreachable:
        return ReplicaState.UNREACHABLE
    if health.is_unhealthy(r.id):
        return ReplicaState.UNHEALTHY
    if r.state == "running":
        if health.is_ready(r.id) and (serving is None or r.address in serving):
            return ReplicaState.READY
        return ReplicaState.STARTING
    return ReplicaState(r.state)


def policy_phase(state: ReplicaState, r: Replica) -> Phase:
    """The HPA's pod phase for a replica: provisioning = Pending, leaving = deleted."""
    if state is ReplicaState.DRAINING:
        return "deleted"
    if state in (ReplicaState.FAILED, ReplicaState.UNHEALTHY, ReplicaState.UNREACHABLE):
        return "failed"
    if state is ReplicaState.PROVISIONING or r.address is None:
        return "pending"
    return "running"


@dataclass
class Backoff:
    """Exponential backoff so a failing create never becomes a tight loop that burns quota."""

    base: float = 1.0
    cap: float = 60.0
    failures: int = 0
    not_before: float = 0.0

    def fail(self, now: float) -> float:
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        self.not_before = now + delay
        return delay

    def ok(self) -> None:
        self.failures = 0
        self.not_before = 0.0


@dataclass
class GroupRuntime:
    """The loop's memory between passes."""

    desired: int | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)
    creating: int = 0
    policy_state: PolicyState = field(default_factory=PolicyState)
    freshness: dict[str, Freshness] = field(default_factory=dict)  # external metrics, by label
    last_decision: Decision | None = None
    paused: bool = False
    manual_desired: int | None = None
    stats: dict[str, ReplicaStats] = field(default_factory=dict)
    backends: tuple[str, ...] | None = None  # what the balancer was last told (None: not started)
    provider_ok: bool = True
    last_error: str | None = None
    unreachable_hosts: frozenset[str] = frozenset()  # hosts the last listing could not see
    unreachable_since: dict[str, float] = field(default_factory=dict)  # host -> first listing it missed
    lost_hosts: frozenset[str] = frozenset()  # unreachable for host_timeout: their replicas are replaced
    returned: set[str] = field(default_factory=set)  # replicas back from a lost host: surplus, leave first
    deleted: set[str] = field(default_factory=set)  # deleted by us; a listing in flight may still show them
    adopted: set[str] = field(default_factory=set)  # found at start: their age is not a provision time
    create_backoff: Backoff = field(default_factory=Backoff)
    list_backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0))
