"""Convert a validated group config into the policy engine's parameter types."""

from __future__ import annotations

from tierscale.config.models import GroupBase, ScalingRulesConfig
from tierscale.policy.types import Behavior, HpaParams, RatePolicy, ScalingRules, ThresholdParams

__all__ = ["hpa_params", "scaling_rules", "threshold_params"]


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
