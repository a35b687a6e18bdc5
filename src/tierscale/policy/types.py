"""Values that flow into and out of the policy engine.

Everything here is immutable and free of I/O: the controller builds a `GroupSnapshot` from what it
observed, the engine returns a `Decision` and a new `PolicyState`. Times are plain floats in seconds
(any epoch: the engine only compares and subtracts them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["pending", "running", "failed", "deleted"]
"""pending: being provisioned; running: up (ready or not); failed: dead; deleted: draining/leaving."""

MetricKind = Literal["resource", "per_replica", "total"]
"""resource: utilization of each replica's CPU allotment (target = percent, values = usage millicores);
per_replica: a value per replica whose average is held at target (HPA Pods metric, AverageValue);
total: one value for the whole group, target is per replica (HPA External metric, AverageValue)."""

SelectPolicy = Literal["Max", "Min", "Disabled"]
RateKind = Literal["Pods", "Percent"]


@dataclass(frozen=True)
class ReplicaStatus:
    id: str
    phase: Phase
    ready: bool | None  # None: no readiness known yet
    ready_changed_at: float | None  # last transition of `ready`
    started_at: float | None  # None: not started
    cpu_allotment_milli: int | None = 1000  # CPU "request" in millicores; one core by default


@dataclass(frozen=True)
class MetricInput:
    name: str  # as in the config: cpu, requests_per_replica, latency_p95_ms, prometheus
    kind: MetricKind
    target: float
    # resource and per_replica: replica id -> value; a replica without a key (or with None) is "missing".
    per_replica: dict[str, float | None] = field(default_factory=dict)
    total: float | None = None  # kind == "total" only; None means the source failed
    sample_time: float | None = None  # when the per-replica samples were taken (CPU readiness rules)
    sample_window: float = 0.0
    # External totals (a query, a queue), with scale_to_zero: the total above which there is work (wake
    # from 0, stay above 0). None: not a signal of work (the balancer's own request rate is a total too,
    # but held requests and the request log already speak for it).
    activation: float | None = None
    error: str | None = None  # why `total` is None, in the source's words


@dataclass(frozen=True)
class RatePolicy:
    type: RateKind
    value: int
    period: float  # seconds


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window: float | None
    select_policy: SelectPolicy
    policies: tuple[RatePolicy, ...]


def default_scale_up() -> ScalingRules:
    return ScalingRules(0.0, "Max", (RatePolicy("Pods", 4, 15.0), RatePolicy("Percent", 100, 15.0)))


def default_scale_down() -> ScalingRules:
    return ScalingRules(300.0, "Max", (RatePolicy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = field(default_factory=default_scale_up)
    scale_down: ScalingRules = field(default_factory=default_scale_down)


@dataclass(frozen=True)
class HpaParams:
    tolerance: float = 0.1
    cpu_initialization_period: float = 300.0
    initial_readiness_delay: float = 30.0
    behavior: Behavior = field(default_factory=Behavior)


@dataclass(frozen=True)
class ThresholdParams:
    metric: str = "cpu"
    upper: float = 70.0
    lower: float = 20.0
    step: int = 1
    cooldown: float = 15.0


@dataclass(frozen=True)
class GroupSnapshot:
    now: float
    current_replicas: int  # replicas the group counts now (excludes those draining out)
    min_replicas: int
    max_replicas: int
    replicas: tuple[ReplicaStatus, ...] = ()
    metrics: tuple[MetricInput, ...] = ()
    # What the balancer saw (scale_to_zero): requests held at zero, and when the last request arrived.
    held_requests: int = 0
    last_request_at: float | None = None


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    t: float


@dataclass(frozen=True)
class ScaleEvent:
    replica_change: int
    t: float
    outdated: bool = False


@dataclass(frozen=True)
class ForecastState:
    """The predictive policy's memory of the load (see `policy/predictive.py`)."""

    level: float  # Holt's smoothed load
    trend: float  # Holt's smoothed slope, load units per second
    t: float  # when the last sample was folded in
    samples: int  # how many samples so far (the forecast waits for a few)
    # Seasonal history: means of closed `bucket`-second buckets, oldest first; `first_bucket` is the index
    # (floor(t / bucket)) of buckets[0]. The open bucket accumulates in open_sum / open_n.
    buckets: tuple[float, ...] = ()
    first_bucket: int = 0
    open_bucket: int = 0
    open_sum: float = 0.0
    open_n: int = 0
    recent: tuple[float, ...] = ()  # the last few samples, oldest first (Holt's rise must be confirmed)


@dataclass(frozen=True)
class PolicyState:
    """What the engine remembers between ticks (K8s keeps the same in the HPA controller)."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()
    last_scale_at: float | None = None  # threshold cooldown
    forecast: ForecastState | None = None  # policy: predictive only
    # scale_to_zero: the last time an external metric said there is work (or could not say: unknown is
    # never idle). Seeded with the first look, so a fresh controller waits idle_after before emptying.
    last_active_at: float | None = None


@dataclass(frozen=True)
class MetricProposal:
    metric: str
    target: float
    value: float | None  # what was measured: utilization %, average per replica, or total
    replicas: int | None  # what this metric alone asks for; None when invalid
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    policy: str  # hpa | threshold | predictive | manual
    now: float
    current: int
    desired: int
    proposals: tuple[MetricProposal, ...]
    recommended: int  # before behavior: the largest proposal (or current when none is valid)
    limits: tuple[str, ...]  # what held the count back: tolerance, stabilization, ScaleUpLimit, ...
    reason: str  # one human line

    @property
    def direction(self) -> Literal["up", "down", "none"]:
        if self.desired > self.current:
            return "up"
        if self.desired < self.current:
            return "down"
        return "none"
