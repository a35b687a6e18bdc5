"""One policy evaluation, exactly as `GroupController.decide` + `reconcile` make it.

The controller (controller/group.py) applies the schedule, dispatches on the policy, records the new
policy state, and after a change calls `record_scale`. The simulator goes through this function, and
tests/test_simulate_parity.py checks that it and the controller return the same decisions on the same
snapshots, so the two cannot drift apart silently.
"""

from __future__ import annotations

from tierscale.controller.group import GroupSettings
from tierscale.policy import decide_hpa, decide_threshold, record_scale
from tierscale.policy.predictive import decide_predictive
from tierscale.policy.schedule import apply_schedule, note_schedule
from tierscale.policy.types import Decision, GroupSnapshot, PolicyState

__all__ = ["policy_step"]


def policy_step(s: GroupSettings, snap: GroupSnapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
    scheduled_snap, scheduled = apply_schedule(s.schedule, snap)
    if s.policy == "threshold":
        decision, state = decide_threshold(s.threshold, scheduled_snap, state)
    elif s.policy == "predictive":
        decision, state = decide_predictive(s.hpa, s.forecast, scheduled_snap, state)
    else:
        decision, state = decide_hpa(s.hpa, scheduled_snap, state)
    decision = note_schedule(decision, scheduled)
    if decision.desired != decision.current:
        state = record_scale(s.hpa, state, decision.current, decision.desired, snap.now)
    return decision, state
