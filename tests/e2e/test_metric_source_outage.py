"""A metric source stopped mid-run, for real: the count holds on the last value, the fallback applies
after max_staleness, and the policy resumes when the source is back (issue M: "unavailable" is never 0).

The source is a real Prometheus answering a query whose value the test knows (`vector(30)`: 3 replicas
at 10 each), so every count below follows from the rules alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.e2e import events, process_group_config, wait_for, workload_processes
from helpers.prometheus import running_prometheus
from tierscale.controller.down import down
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e


def _source(bg: BackgroundController) -> dict[str, object]:
    (src,) = bg.status("web")["metric_sources"]
    return src


def test_a_prometheus_outage_holds_then_falls_back_then_resumes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with running_prometheus([]) as prom:
        metric = (
            f"[{{type: prometheus, url: '{prom.url}', query: 'vector(30)', target_per_replica: 10,"
            " max_staleness: 4s, fallback: {replicas: 2}}]"
        )
        cfg, _ = process_group_config(state_dir, min_=1, max_=4, metrics=metric, down_window="0s")
        try:
            with BackgroundController(cfg) as bg:
                wait_for(lambda: bg.status("web")["desired"] == 3, 30, what="3 replicas for 30 at 10 each")
                assert _source(bg)["state"] == "ok"

                prom.stop()
                # Within max_staleness the last value (30) stands in: still 3, never 1 (a failed read
                # taken as 0 would have scaled in at once, the scale-down window being 0 s).
                stale = wait_for(lambda: _source(bg)["state"] == "stale" and _source(bg), 10, what="stale")
                assert bg.status("web")["desired"] == 3
                assert "prometheus" in str(stale["error"]) and stale["last_value"] == 30.0, stale
                # After max_staleness: the fallback's 2.
                wait_for(lambda: _source(bg)["state"] == "fallback", 15, what="fallback after 4 s")
                wait_for(lambda: bg.status("web")["desired"] == 2, 15, what="the fallback count, 2")

                prom.restart()
                wait_for(lambda: _source(bg)["state"] == "ok", 20, what="the source answers again")
                wait_for(lambda: bg.status("web")["desired"] == 3, 20, what="the policy resumes: 3")
        finally:
            down(cfg)
            for p in workload_processes(tuple(cfg.groups[0].template.port_range)):
                p.kill()
    said = [e.kind for e in events(state_dir, "web", "metric_failed", "metric_fallback", "metric_recovered")]
    # One event per change of state, not one per failed pass.
    assert said == ["metric_failed", "metric_fallback", "metric_recovered"], said
    desired = [e.data["desired"] for e in events(state_dir, "web", "scaled")]
    assert 1 not in desired[desired.index(3) :], desired  # never read as 0 → never down to min
