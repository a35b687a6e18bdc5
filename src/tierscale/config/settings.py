"""A group's runtime settings: the validated config as the plain values the controller and simulator use.

Built here, in `config/`, so that `simulate/` needs `policy/` and `config/` only, never the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from tierscale.config.models import EXTERNAL_METRICS, ExternalMetric, FallbackReplicas, GroupBase
from tierscale.config.revision import template_revision
from tierscale.config.rollout import RolloutSpec
from tierscale.config.to_policy import hpa_params, predictive_params, schedule_entries, threshold_params
from tierscale.policy.placement import PlacementParams
from tierscale.policy.predictive import PredictiveParams
from tierscale.policy.scale_to_zero import ScaleToZeroParams
from tierscale.policy.schedule import ScheduleEntry
from tierscale.policy.strategy import PolicyPlan, make_strategy
from tierscale.policy.types import HpaParams, ThresholdParams

__all__ = ["GroupSettings", "HoldSpec", "MetricSpec", "metric_specs", "placement_params", "settings_for"]


@dataclass(frozen=True)
class MetricSpec:
    """One entry of a group's `metrics:`; `type` keys the metric source registry (tierscale.metrics)."""

    type: str
    target: float
    url: str | None = None
    query: str | None = None
    name: str = ""  # its label in status, events and metrics: the config's `name`, or the type
    # External metrics (prometheus, redis, rabbitmq) only:
    activation: float | None = None
    max_staleness: float = 10.0
    fallback_replicas: int | None = None  # None: hold
    kind: str | None = None  # redis: list | stream
    key: str | None = None
    consumer_group: str | None = None
    vhost: str | None = None  # rabbitmq
    queue: str | None = None
    count: str | None = None
    login_env: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.type

    @property
    def external(self) -> bool:
        return self.type in EXTERNAL_METRICS


@dataclass(frozen=True)
class HoldSpec:
    """`scale_to_zero:`: when to go to zero, and how requests that arrive there are held."""

    idle_after: float = 300.0
    hold_timeout: float = 30.0
    max_pending: int = 1000
    replica_concurrency: int = 10


@dataclass(frozen=True)
class GroupSettings:
    """Everything the loop needs from the group's config, as plain values."""

    name: str
    tier: str
    min: int
    max: int
    sync_period: float
    health_path: str
    health_interval: float
    health_timeout: float
    healthy_after: int
    unhealthy_after: int
    startup_grace: float
    policy: str
    metrics: tuple[MetricSpec, ...]
    hpa: HpaParams
    threshold: ThresholdParams
    scale_in_order: str
    drain_timeout: float
    stop_grace: float = 5.0
    metric_window: float = 10.0
    health_type: str = "http"  # http | console | running | tcp | exec
    console_marker: str | None = None
    health_command: tuple[str, ...] = ()  # exec
    forecast: PredictiveParams = field(default_factory=PredictiveParams)  # policy: predictive
    schedule: tuple[ScheduleEntry, ...] = ()
    revision: str = ""  # the template revision new replicas are made from
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    scale_to_zero: HoldSpec | None = None
    placement: PlacementParams = field(default_factory=PlacementParams)
    host_timeout: float = 30.0  # a host unreachable this long has its replicas replaced elsewhere

    @cached_property
    def plan(self) -> PolicyPlan:
        """The policy step's inputs; `dataclasses.replace` builds a new settings object, and a new plan."""
        strategy = make_strategy(self.policy, self.hpa, self.threshold, self.forecast)
        stz = self.scale_to_zero
        params = None if stz is None else ScaleToZeroParams(stz.idle_after, stz.replica_concurrency)
        return PolicyPlan(strategy, self.hpa, self.schedule, params)


def _by_type(specs: tuple[MetricSpec, ...], wanted: str | None) -> str | None:
    """`threshold.metric` and `forecast.metric` name a type; the policy sees labels (redis → jobs)."""
    return next((m.label for m in specs if m.type == wanted), wanted)


def settings_for(group: GroupBase) -> GroupSettings:
    h, r, z = group.health, group.rollout, group.scale_to_zero
    metrics = metric_specs(group)
    threshold = threshold_params(group)
    forecast = predictive_params(group)
    return GroupSettings(
        name=group.name,
        tier=group.tier,
        min=group.min,
        max=group.max,
        sync_period=group.sync_period,
        health_path=h.path,
        health_interval=h.interval,
        health_timeout=h.timeout,
        healthy_after=h.healthy_after,
        unhealthy_after=h.unhealthy_after,
        startup_grace=h.startup_grace,
        health_type=h.type,
        console_marker=h.console_marker,
        health_command=tuple(h.command or ()),
        policy=group.policy,
        metrics=metrics,
        hpa=hpa_params(group),
        threshold=replace(threshold, metric=_by_type(metrics, threshold.metric) or threshold.metric),
        forecast=replace(forecast, metric=_by_type(metrics, forecast.metric)),
        schedule=schedule_entries(group),
        scale_in_order=group.scale_in_order,
        drain_timeout=group.drain_timeout,
        # Balancer metrics are averaged over a few sync periods: long enough to be stable, short enough
        # that a load step shows within seconds.
        metric_window=min(30.0, max(5.0, 3 * group.sync_period)),
        revision=template_revision(group.template),  # type: ignore[attr-defined]
        rollout=RolloutSpec(
            max_surge=r.max_surge,
            max_unavailable=r.max_unavailable,
            min_healthy_time=r.min_healthy_time,
            healthy_deadline=r.healthy_deadline,
            canary=r.canary,
            auto_rollback=r.auto_rollback,
        ),
        scale_to_zero=None
        if z is None
        else HoldSpec(z.idle_after, z.hold_timeout, z.max_pending, z.replica_concurrency),
        placement=placement_params(group),
        host_timeout=group.host_timeout,
    )


def metric_specs(group: GroupBase) -> tuple[MetricSpec, ...]:
    out: list[MetricSpec] = []
    taken: set[str] = set()
    for i, m in enumerate(group.metrics):
        if not isinstance(m, ExternalMetric):
            out.append(MetricSpec(type=m.type, target=float(m.target), name=m.type))
            taken.add(m.type)
            continue
        # Several queries or queues of one type each get their own label: metrics[2] unnamed → redis-2.
        name = m.name or (m.type if m.type not in taken else f"{m.type}-{i}")
        taken.add(name)
        fb = m.fallback
        out.append(
            MetricSpec(
                type=m.type,
                target=float(m.target_per_replica),
                url=m.url,  # type: ignore[attr-defined]
                query=getattr(m, "query", None),
                name=name,
                activation=None if m.activation is None else float(m.activation),
                max_staleness=m.max_staleness if m.max_staleness is not None else 2 * group.sync_period,
                fallback_replicas=fb.replicas if isinstance(fb, FallbackReplicas) else None,
                kind=getattr(m, "kind", None),
                key=getattr(m, "key", None),
                consumer_group=getattr(m, "consumer_group", None),
                vhost=getattr(m, "vhost", None),
                queue=getattr(m, "queue", None),
                count=getattr(m, "count", None),
                login_env=m.login_env,
            )
        )
    return tuple(out)


def placement_params(group: GroupBase) -> PlacementParams:
    p = group.placement
    return PlacementParams(
        strategy=p.strategy,
        max_per_host=p.max_per_host,
        ram_allocation_ratio=p.ram_allocation_ratio,
        cpu_allocation_ratio=p.cpu_allocation_ratio,
        reserved_memory=p.reserved_host_memory,
    )
