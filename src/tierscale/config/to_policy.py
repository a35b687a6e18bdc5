"""Convert a validated group config into the policy engine's parameter types."""

from __future__ import annotations

import zoneinfo

from tierscale.config.models import GroupBase, ScalingRulesConfig
from tierscale.policy.predictive import PredictiveParams
from tierscale.policy.schedule import ScheduleEntry, parse_cron
from tierscale.policy.types import Behavior, HpaParams, RatePolicy, ScalingRules, ThresholdParams

__all__ = [
    "TIER_PROVISIONING_DELAY",
    "hpa_params",
    "predictive_params",
    "scaling_rules",
    "schedule_entries",
    "threshold_params",
]

# Typical create-to-healthy seconds per tier (what `tierscale_provision_seconds` shows on the lab's
# machines): the predictive policy's default horizon, and the simulator's default delay.
TIER_PROVISIONING_DELAY = {"process": 1.0, "docker": 1.0, "swarm": 2.0, "libvirt": 3.0, "openstack": 60.0}


def scaling_rules(rules: ScalingRulesConfig) -> ScalingRules:
    return ScalingRules(
        stabilization_window=rules.stabilization_window,
        select_policy=rules.select_policy,
        policies=tuple(RatePolicy(type=p.type, value=p.value, period=p.period) for p in rules.policies),
    )


def hpa_params(group: GroupBase) -> HpaParams:
    return HpaParams(
        tolerance=group.tolerance,
        cpu_initialization_period=group.cpu_initialization_period,
        initial_readiness_delay=group.initial_readiness_delay,
        behavior=Behavior(
            scale_up=scaling_rules(group.behavior.scale_up),
            scale_down=scaling_rules(group.behavior.scale_down),
        ),
    )


def threshold_params(group: GroupBase) -> ThresholdParams:
    t = group.threshold
    return ThresholdParams(metric=t.metric, upper=t.upper, lower=t.lower, step=t.step, cooldown=t.cooldown)


def predictive_params(group: GroupBase, provisioning_delay: float | None = None) -> PredictiveParams:
    """`horizon: auto` is the provisioning delay (given, or the tier's typical one) plus one sync period:
    a replica asked for now serves from then, and the next decision comes a sync period later."""
    f = group.forecast
    if f is not None and f.horizon is not None:
        horizon = f.horizon
    else:
        delay = provisioning_delay if provisioning_delay is not None else TIER_PROVISIONING_DELAY[group.tier]
        horizon = delay + group.sync_period
    if f is None:
        return PredictiveParams(horizon=horizon)
    return PredictiveParams(
        method=f.method,
        horizon=horizon,
        alpha=f.alpha,
        beta=f.beta,
        season=f.season,
        bucket=f.bucket,
        metric=f.metric,
        damping=f.damping,
        confirm=f.confirm,
    )


def schedule_entries(group: GroupBase) -> tuple[ScheduleEntry, ...]:
    return tuple(
        ScheduleEntry(
            cron=parse_cron(e.cron),
            duration=e.duration,
            min=e.min,
            max=e.max,
            name=e.name,
            tz=zoneinfo.ZoneInfo(e.timezone),
        )
        for e in group.schedule
    )
