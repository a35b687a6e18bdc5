"""A process-tier group that scales on a real Prometheus: the replicas' own request counter, scraped
through the file_sd file tierscale keeps (<state_dir>/prometheus/<group>.json), with Prometheus running
examples/prometheus/prometheus.yml and rules.yml as a user would (placeholders filled in)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers.e2e import (
    events,
    failed_message,
    free_port,
    nginx_processes,
    process_group_config,
    wait_for,
    work_url,
    workload_processes,
)
from helpers.prometheus import EXAMPLES, Prometheus, example_config, running_prometheus
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

JOB = "tierscale-replicas"  # examples/prometheus/prometheus.yml's job for the replicas
# The group's request rate at its replicas, as a user would write it: /work only, so the balancer's
# health checks (and Prometheus' own scrapes) are not load.
QUERY = f'sum(rate(tierscale_demo_requests_total{{job="{JOB}",group="web",path="/work"}}[10s]))'
TARGET = 10  # req/s per replica
PEAK_RPS = 40.0  # → 4 replicas
QUIET_RPS = 2.0  # → 1; a trickle, so that the scale-in is served too and must lose nothing


def _targets(prom: Prometheus) -> list[dict[str, Any]]:
    return [t for t in prom.targets() if t["labels"].get("job") == JOB]


def _sd_file(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "prometheus" / "web.json"
    return json.loads(path.read_text()) if path.exists() else []


def _cleanup(cfg: Any) -> None:
    down(cfg)
    ports = tuple(cfg.groups[0].template.port_range)
    for p in workload_processes(ports):  # a failed test must not leak replicas
        p.kill()
    assert not nginx_processes(Path(cfg.state_dir))
    assert not (Path(cfg.state_dir) / "prometheus" / "web.json").exists(), "down left the file_sd file"


def test_a_group_scales_out_and_in_on_a_real_prometheus_query(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    api = f"127.0.0.1:{free_port()}"
    # Prometheus first: the group's metric needs its URL, and Prometheus only needs to know where the
    # API and the file_sd directory will be (it picks the file up once tierscale writes it).
    with running_prometheus(
        config_text=example_config(api, state_dir),
        files={"rules.yml": (EXAMPLES / "rules.yml").read_text()},
    ) as prom:
        metric = f"[{{type: prometheus, url: '{prom.url}', query: '{QUERY}', target_per_replica: {TARGET}}}]"
        cfg, _ = process_group_config(
            state_dir, min_=1, max_=4, metrics=metric, extra=f'api: {{listen: "{api}"}}\n'
        )
        quiet = threading.Event()
        runner = LoadRunner(work_url(cfg, 5), lambda t: QUIET_RPS if quiet.is_set() else PEAK_RPS, 120)
        try:
            with BackgroundController(cfg) as bg:
                wait_for(lambda: bg.status("web")["ready"] >= 1, 20, what="first replica ready")
                # The file tierscale writes is what Prometheus scrapes: one target, with its labels.
                first = wait_for(lambda: _targets(prom), 20, what="the replica discovered through file_sd")
                (replica,) = bg.status("web")["replicas"]
                assert first[0]["labels"]["replica"] == replica["id"]
                assert first[0]["labels"]["tier"] == "process" and first[0]["labels"]["group"] == "web"
                assert first[0]["labels"]["instance"] == replica["address"]
                wait_for(lambda: prom.value(f'up{{job="{JOB}"}}') == 1, 20, what="the replica scraped")

                runner.start()
                wait_for(lambda: bg.status("web")["ready"] >= 3, 40, what="≥3 ready replicas under load")
                # Each new replica joined the file, and Prometheus followed.
                wait_for(
                    lambda: len([t for t in _targets(prom) if t["health"] == "up"]) >= 3,
                    20,
                    what="≥3 replicas scraped",
                )
                assert len(_sd_file(state_dir)) >= 3
                seen = prom.value(QUERY)
                assert seen is not None and seen > 2 * TARGET, seen
                # The controller, scraped through the example's own job, read its metric fine.
                up = prom.value('tierscale_metric_up{job="tierscale",group="web",metric="prometheus"}')
                assert up == 1, up
                assert prom.value('up{job="tierscale"}') == 1
                peak = {r["id"] for r in bg.status("web")["replicas"] if r["state"] == "ready"}
                assert len(peak) >= 3, peak

                quiet.set()
                wait_for(
                    lambda: bg.status("web")["desired"] == 1,
                    60,
                    interval=0.5,
                    what="scale back to 1 once the load is a trickle",
                )
                wait_for(lambda: len(bg.status("web")["replicas"]) == 1, 30, what="drained replicas removed")
                # Removed replicas leave the file, and Prometheus stops scraping them.
                wait_for(lambda: len(_sd_file(state_dir)) == 1, 10, what="one target left in the file")
                wait_for(lambda: len(_targets(prom)) == 1, 20, what="Prometheus down to one target")

                rules = prom.get("/api/v1/rules")["data"]["groups"]
                health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
                assert len(health) == 5 and set(health.values()) == {"ok"}, health
        finally:
            runner.stop()
            _cleanup(cfg)
    result = runner.result(timeout=30)
    assert result.failed == 0, failed_message(result)
    scaled = events(state_dir, "web", "scaled")
    ups = [e for e in scaled if e.data["desired"] > e.data["current"]]
    downs = [e for e in scaled if e.data["desired"] < e.data["current"]]
    assert ups and max(e.data["desired"] for e in ups) >= 3, [e.message for e in scaled]
    assert "prometheus" in ups[0].data["reason"], ups[0].data["reason"]
    assert downs and downs[-1].data["desired"] == 1, [e.message for e in scaled]
    # Every replica ready at the peak got traffic: nginx followed the scale-out as Prometheus did.
    assert peak <= set(result.instances), f"replicas that never got traffic: {peak - set(result.instances)}"
