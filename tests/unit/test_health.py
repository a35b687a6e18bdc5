"""Readiness rules of the health tracker, table-driven: (ok?, time) sequences and the transitions seen."""

from __future__ import annotations

import pytest

from tierscale.controller.health import HealthTracker

CASES = [
    # name, healthy_after, unhealthy_after, grace, [(ok, t)], transitions seen, ready, unhealthy
    ("ready after one success", 1, 3, 10, [(True, 1)], ["ready"], True, False),
    (
        "needs two successes in a row",
        2,
        3,
        10,
        [(True, 1), (False, 2), (True, 3), (True, 4)],
        ["ready"],
        True,
        False,
    ),
    (
        "boot failures inside grace do not count",
        1,
        2,
        10,
        [(False, 1), (False, 2), (False, 9)],
        [],
        False,
        False,
    ),
    (
        "failures after grace condemn a never-ready replica",
        1,
        2,
        10,
        [(False, 11), (False, 12)],
        ["unhealthy"],
        False,
        True,
    ),
    (
        "ready replica goes unhealthy after N failures",
        1,
        3,
        10,
        [(True, 1), (False, 2), (False, 3), (False, 4)],
        ["ready", "unhealthy"],
        False,
        True,
    ),
    (
        "a success resets the failure count",
        1,
        3,
        10,
        [(True, 1), (False, 2), (False, 3), (True, 4), (False, 5), (False, 6)],
        ["ready"],
        True,
        False,
    ),
    (
        "grace does not protect a replica that was ready once",
        1,
        2,
        100,
        [(True, 1), (False, 2), (False, 3)],
        ["ready", "unhealthy"],
        False,
        True,
    ),
    ("unhealthy is terminal", 1, 1, 0, [(False, 1), (True, 2), (True, 3)], ["unhealthy"], False, True),
]


@pytest.mark.parametrize(
    ("name", "ha", "ua", "grace", "obs", "want", "ready", "unhealthy"), CASES, ids=[c[0] for c in CASES]
)
def test_health_rules(name, ha, ua, grace, obs, want, ready, unhealthy) -> None:
    tr = HealthTracker(ha, ua, grace)
    seen = [t for ok, now in obs if (t := tr.observe("r1", 0.0, ok, float(now), None if ok else "HTTP 500"))]
    assert seen == want
    assert tr.is_ready("r1") is ready
    assert tr.is_unhealthy("r1") is unhealthy


def test_ready_changed_at_and_first_ready_are_recorded() -> None:
    tr = HealthTracker(1, 1, 0)
    tr.observe("r", 0.0, True, 5.0)
    st = tr.states["r"]
    assert st.ready_changed_at == 5.0 and st.first_ready_at == 5.0
    tr.observe("r", 0.0, False, 7.0, "timeout")
    assert st.ready_changed_at == 7.0 and st.last_error == "timeout"


@pytest.mark.parametrize(("readmit", "back"), [(False, False), (True, True)])
def test_an_unhealthy_replica_comes_back_only_where_nothing_replaces_it(readmit: bool, back: bool) -> None:
    h = HealthTracker(healthy_after=2, unhealthy_after=2, startup_grace=0.0)
    h.readmit = readmit  # a standby (ha) replaces nothing, so what it lost sight of may return
    for t, ok in enumerate([True, True, False, False]):
        h.observe("r1", 0.0, ok, float(t))
    assert h.is_unhealthy("r1") and not h.is_ready("r1")
    h.observe("r1", 0.0, True, 5.0)
    assert not h.is_ready("r1")  # one answer is not enough: healthy_after, as for a new replica
    h.observe("r1", 0.0, True, 6.0)
    assert h.is_ready("r1") is back and h.is_unhealthy("r1") is not back
