"""The simulator replays scale_to_zero as the controller runs it: idle → 0, the first load wakes it."""

from __future__ import annotations

import numpy as np

from tierscale.config.loader import load_config_text
from tierscale.config.settings import settings_for
from tierscale.simulate.model import CapacityModel, DelayModel, Grid
from tierscale.simulate.run import simulate

CONFIG = """
groups:
  - name: w
    tier: process
    min: 0
    max: 5
    sync_period: 5s
    template: {command: ["x", "{port}"], port_range: [20000, 20010]}
    metrics: [{type: requests_per_replica, target: 5}]
%s
"""


def _run(extra: str, rate: list[float]) -> list[tuple[float, int, int, str]]:
    s = settings_for(load_config_text(CONFIG % extra, "x.yaml").groups[0])
    r = np.array(rate)
    grid = Grid(1.0, r, np.concatenate(([0.0], np.cumsum(r))))
    run = simulate(s, grid, CapacityModel(10.0), DelayModel("fixed", 2.0), initial=1)
    return [(e.t, e.current, e.desired, e.reason) for e in run.events]


LOAD = [0.0] * 300 + [10.0] * 120 + [0.0] * 300


def test_idle_from_the_start_goes_to_zero_wakes_on_load_and_returns_after_idle_after() -> None:
    events = _run("    scale_to_zero: {idle_after: 60s}", LOAD)
    assert events[0][:3] == (60.0, 1, 0)  # the idle timer starts with the run
    woke = events[1]
    assert woke[1:3] == (0, 1) and 300 <= woke[0] <= 306  # the first sync pass after the load starts
    assert woke[3].startswith("woke")
    assert max(e[2] for e in events) == 2  # then the policy sizes it: 10 req/s at 5 per replica
    t, _, desired, _ = events[-1]
    assert desired == 0 and t >= 420 + 60  # idle_after counted from the last request, not the scale-up


def test_without_scale_to_zero_the_policy_alone_decides() -> None:
    events = _run("", LOAD)
    assert events  # the load step still scales the group
    assert not [e for e in events if e[3].startswith(("idle", "woke"))], events
