"""One `Strategy` per policy, and the one policy step the controller and the simulator both take.

A strategy is a pure function of (snapshot, state): no I/O, no clock. `policy_step` wraps it with what
every policy shares — the schedule's min/max overrides before, and recording a scale after — so that
`controller/` and `simulate/` cannot diverge: there is no second copy to keep equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tierscale.policy.engine import decide_hpa, decide_threshold, record_scale
from tierscale.policy.predictive import PredictiveParams, decide_predictive
from tierscale.policy.scale_to_zero import (
    ScaleToZeroParams,
    at_zero,
    floor_at_one,
    note_activity,
    remember_wake,
    to_zero_when_idle,
)
from tierscale.policy.schedule import ScheduleEntry, apply_schedule, note_schedule
from tierscale.policy.types import Decision, GroupSnapshot, HpaParams, PolicyState, ThresholdParams


class Strategy(Protocol):
    name: str

    def decide(self, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]: ...


@dataclass(frozen=True)
class HpaStrategy:
    params: HpaParams
    name: str = "hpa"

    def decide(self, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
        return decide_hpa(self.params, snap, state)


@dataclass(frozen=True)
class ThresholdStrategy:
    params: ThresholdParams
    name: str = "threshold"

    def decide(self, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
        return decide_threshold(self.params, snap, state)


@dataclass(frozen=True)
class PredictiveStrategy:
    hpa: HpaParams
    forecast: PredictiveParams
    name: str = "predictive"

    def decide(self, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
        return decide_predictive(self.hpa, self.forecast, snap, state)


def make_strategy(
    policy: str, hpa: HpaParams, threshold: ThresholdParams, forecast: PredictiveParams
) -> Strategy:
    """The strategy for a group's `policy` key (validated by config: hpa | threshold | predictive)."""
    if policy == "threshold":
        return ThresholdStrategy(threshold)
    if policy == "predictive":
        return PredictiveStrategy(hpa, forecast)
    if policy == "hpa":
        return HpaStrategy(hpa)
    raise ValueError(f"unknown policy {policy!r}")


@dataclass(frozen=True)
class PolicyPlan:
    """A group's policy as the step needs it: the strategy, the schedule, and the HPA scale history rules."""

    strategy: Strategy
    hpa: HpaParams
    schedule: tuple[ScheduleEntry, ...] = ()
    scale_to_zero: ScaleToZeroParams | None = None


def policy_step(plan: PolicyPlan, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
    """Schedule, decide, and — when the count changes — record the scale in the policy's history."""
    scheduled_snap, note = apply_schedule(plan.schedule, snap)
    stz = plan.scale_to_zero
    if stz is None:
        decision, state = plan.strategy.decide(scheduled_snap, state)
    elif snap.current_replicas == 0:
        state = note_activity(state, snap)
        decision = at_zero(stz, scheduled_snap)
        state = remember_wake(state, decision)
    else:
        state = note_activity(state, snap)
        decision, state = plan.strategy.decide(floor_at_one(scheduled_snap), state)
        decision = to_zero_when_idle(stz, scheduled_snap, decision, state.last_active_at)
    decision = note_schedule(decision, note)
    if decision.desired != decision.current:
        state = record_scale(plan.hpa, state, decision.current, decision.desired, snap.now)
    return decision, state
