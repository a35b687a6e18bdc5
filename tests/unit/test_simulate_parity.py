"""The simulator's decisions are the controller's: the same snapshots through `GroupController.decide` (plus
the `record_scale` that `reconcile` does) give identical decisions, for every policy and with a schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierscale.config import load_config_text
from tierscale.controller.clock import WallClock
from tierscale.controller.group import GroupController
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.policy import record_scale
from tierscale.providers import make_provider
from tierscale.simulate import CapacityModel, build_grid, parse_delay, simulate
from tierscale.simulate.command import _settings
from tierscale.simulate.trace import Trace

BODIES = {
    "hpa-cpu": "    metrics: [{type: cpu, target: 60}]\n",
    "hpa-two-metrics": (
        "    metrics: [{type: cpu, target: 60}, {type: latency_p95_ms, target: 40}]\n"
        "    behavior: {scale_down: {stabilization_window: 30s}}\n"
    ),
    "threshold": (
        "    policy: threshold\n    metrics: [{type: cpu, target: 70}]\n"
        "    threshold: {metric: cpu, upper: 70, lower: 20, cooldown: 15s}\n"
    ),
    "predictive": "    policy: predictive\n    metrics: [{type: requests_per_replica, target: 10}]\n",
    "scheduled": (
        "    metrics: [{type: requests_per_replica, target: 10}]\n"
        "    schedule: [{cron: '*/5 * * * *', duration: 2m, min: 6}]\n"
    ),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_simulator_and_controller_decide_alike(tmp_path: Path, name: str) -> None:
    text = (
        f"state_dir: {tmp_path / 'state'}\ngroups:\n  - name: web\n    tier: process\n    min: 1\n"
        "    max: 20\n    sync_period: 5s\n    balancer: {type: none}\n"
        "    template: {command: [python3, -m, tierscale.workload, --port, '{port}']}\n" + BODIES[name]
    )
    group = load_config_text(text, "p.yaml").groups[0]
    rng = np.random.default_rng(3)
    rates = np.concatenate([np.full(120, 8.0), np.full(300, 90.0), np.full(300, 20.0)]) * rng.uniform(
        0.8, 1.2, 720
    )
    grid = build_grid(Trace("t", 1.0, 0.0, rates))
    delay = parse_delay("2s..6s")
    settings = _settings(group, delay)
    run = simulate(settings, grid, CapacityModel(15.0, 0.6), delay, initial=1, keep_decisions=True)
    assert len(run.events) >= 2  # the trace makes every policy act
    reasons = " ".join(d.reason for d in run.decisions)
    if name == "scheduled":
        assert "schedule */5 * * * *: bounds [6, 20]" in reasons
    if name == "predictive":
        assert "raises" in reasons  # the forecast did lift some decisions

    store = EventStore(tmp_path / "events.db")
    try:
        ctrl = GroupController(
            settings, make_provider(group, tmp_path / "state"), None, store, WallClock(), Telemetry()
        )
        for snap, expected in zip(run.snapshots, run.decisions, strict=True):
            got = ctrl.decide(snap)
            # What `reconcile` does after deciding:
            if got.desired != got.current and got.policy != "manual":
                ctrl.rt.policy_state = record_scale(
                    settings.hpa, ctrl.rt.policy_state, got.current, got.desired, snap.now
                )
            assert got == expected
    finally:
        store.close()
