"""A group's runtime settings: the validated config as the plain values the controller and simulator use.

Built here, in `config/`, so that `simulate/` needs `policy/` and `config/` only, never the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from tierscale.config.models import GroupBase
from tierscale.config.revision import template_revision
from tierscale.config.rollout import RolloutSpec
from tierscale.config.to_policy import hpa_params, predictive_params, schedule_entries, threshold_params
from tierscale.policy.placement import PlacementParams
from tierscale.policy.predictive import PredictiveParams
from tierscale.policy.scale_to_zero import ScaleToZeroParams
from tierscale.policy.schedule import ScheduleEntry
from tierscale.policy.strategy import PolicyPlan, make_strategy
from tierscale.policy.types import HpaParams, ThresholdParams

__all__ = ["GroupSettings", "HoldSpec", "MetricSpec", "placement_params", "settings_for"]


@dataclass(frozen=True)
class MetricSpec:
    """One entry of a group's `metrics:`; `type` keys the metric source registry (tierscale.metrics)."""

    type: str
    target: float
    url: str | None = None
    query: str | None = None


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
    health_type: str = "http"  # http | console
    console_marker: str | None = None
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


def settings_for(group: GroupBase) -> GroupSettings:
    h, r, z = group.health, group.rollout, group.scale_to_zero
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
        policy=group.policy,
        metrics=tuple(
            MetricSpec(
                type=m.type,
                target=float(m.target if m.type != "prometheus" else m.target_per_replica),  # type: ignore[union-attr]
                url=getattr(m, "url", None),
                query=getattr(m, "query", None),
            )
            for m in group.metrics
        ),
        hpa=hpa_params(group),
        threshold=threshold_params(group),
        forecast=predictive_params(group),
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


def placement_params(group: GroupBase) -> PlacementParams:
    p = group.placement
    return PlacementParams(
        strategy=p.strategy,
        max_per_host=p.max_per_host,
        ram_allocation_ratio=p.ram_allocation_ratio,
        cpu_allocation_ratio=p.cpu_allocation_ratio,
        reserved_memory=p.reserved_host_memory,
    )
