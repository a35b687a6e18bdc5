"""The typed status of a group: what `status`, the API, the dashboard and the event store all read.

The OpenAPI schemas of the API are generated from these models (api/openapi.py), so the document and
the bodies cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tierscale.controller.state import ReplicaState


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class ReplicaView(_View):
    id: str
    address: str | None = Field(description="host:port the balancer sends to")
    state: ReplicaState = Field(description="ready means in the balancer and passing health checks")
    health: str = Field(description="ok, pending, or the last probe error")
    cpu: float | None = Field(description="% of the replica's CPU allotment")
    memory_bytes: int | None = None
    rps: float = Field(description="requests/s through the balancer")
    p95_ms: float | None = Field(description="p95 upstream response time at the balancer")
    age: float = Field(description="seconds since created")
    revision: str = Field("", description="template revision it was made from ('' if it predates them)")
    host: str = Field("", description="the engine, hypervisor or compute host it runs on")


class ProposalView(_View):
    metric: str
    value: float | None = Field(description="measured value; for totals, the group's total")
    target: float
    replicas: int | None = Field(description="the count this metric alone asks for")
    error: str | None = None


class DecisionView(_View):
    ts: float = Field(description="unix time")
    policy: str = Field(description="hpa, threshold, predictive or manual")
    current: int
    desired: int
    recommended: int
    limits: list[str] = Field(
        description="what held the count back: tolerance, stabilization, ScaleUpLimit, max, ..."
    )
    reason: str = Field(description="one line: why this count")
    proposals: list[ProposalView]


class BalancerView(_View):
    url: str
    backends: list[str]


class RolloutView(_View):
    group: str
    state: str = Field(
        description="complete, progressing, rolling_back, awaiting_promotion (canaries healthy), paused "
        "or failed"
    )
    target: str = Field(description="the revision being rolled out (new replicas are made from it)")
    previous: str | None = Field(description="the last revision fully rolled out before it")
    declared: str = Field(description="the revision the config names (another than target after a rollback)")
    rejected: str | None = Field(None, description="a revision that failed or was undone")
    reason: str = ""
    started_at: float = Field(0.0, description="unix time")
    canary: int = 0
    promoted: bool = False
    max_surge: int = Field(0, description="extra replicas allowed now")
    max_unavailable: int = Field(0, description="replicas that may be missing now")
    replicas: dict[str, int] = Field(description="replicas per revision (not counting leaving ones)")
    updated: int = Field(0, description="replicas of the target revision")
    healthy: int = Field(0, description="of those, healthy for min_healthy_time")


class ScaleToZeroView(_View):
    idle_after: float = Field(description="seconds without a request before the group goes to zero")
    hold_timeout: float
    max_pending: int
    held: int = Field(0, description="requests waiting for a replica now")
    last_request_at: float | None = Field(None, description="unix time of the last request seen")
    idle_for: float | None = Field(None, description="seconds since then")


class HaMemberView(_View):
    name: str
    api: str
    role: str = Field(description="leader or standby, as the member last wrote it")
    renewed_at: float = Field(description="unix time of its last lease renew")


class HaView(_View):
    name: str = Field(description="this controller")
    role: str = Field(description="leader or standby")
    acting: bool = Field(False, description="a leader whose last renew landed (after a failed one it waits)")
    leader: str | None = Field(None, description="the controller holding the leader key")
    leader_api: str | None = Field(None, description="its API address: manual commands go there")
    lease_ttl: float
    last_renew: float | None = Field(None, description="unix time of this controller's last renew")
    error: str | None = Field(None, description="why the last renew failed (etcd unreachable, ...)")
    members: list[HaMemberView] = Field(default_factory=list)


class MetricSourceView(_View):
    metric: str = Field(description="the metric's name (its type unless named)")
    type: str = Field(description="prometheus, redis or rabbitmq")
    state: str = Field(
        description="ok; stale (source failing, last value in use); fallback (fixed count); hold"
    )
    last_value: float | None = Field(None, description="the last value read successfully")
    age: float | None = Field(None, description="seconds since that read")
    failing_for: float | None = Field(None, description="seconds since the source started failing")
    error: str | None = None
    max_staleness: float
    fallback: str = Field(description="hold, or replicas: N")


class GroupStatus(_View):
    group: str
    tier: str
    policy: str
    min: int
    max: int
    desired: int | None = Field(description="null until the first pass")
    current: int = Field(description="replicas that count (not draining, not failed)")
    ready: int = Field(description="replicas the balancer sends to")
    paused: bool
    manual_replicas: int | None = Field(None, description="the count held while paused")
    dry_run: bool = False
    sync_period: float = 0.0
    provider_ok: bool = True
    last_error: str | None = None
    revision: str = Field("", description="the template revision new replicas are made from")
    balancer: BalancerView | None = None
    rps: float | None = None
    p95_ms: float | None = None
    replicas: list[ReplicaView]
    last_decision: DecisionView | None
    rollout: RolloutView | None = None
    scale_to_zero: ScaleToZeroView | None = None
    ha: HaView | None = Field(None, description="with `ha:`: the election as this controller sees it")
    metric_sources: list[MetricSourceView] = Field(
        default_factory=list, description="external metrics (prometheus, redis, rabbitmq): source state"
    )
