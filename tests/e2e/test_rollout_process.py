"""Rolling out a new version on the process tier: under load, killed midway, a bad version, load rising."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helpers.e2e import (
    CliControllers,
    events,
    process_group_config,
    wait_for,
    wait_passes,
    work_url,
    workload_processes,
)
from helpers.rollouts import (
    Case,
    api_token,
    bad_rollout_rolls_back,
    good_rollout_killed_midway,
    load_doubles_midway,
)
from tierscale.controller.down import down

pytestmark = pytest.mark.e2e

ROLLOUT = "    rollout: {max_surge: 1, max_unavailable: 0, min_healthy_time: 1s}\n"
METRIC = "[{type: requests_per_replica, target: 5}]"


def _case(tmp_path: Path, change: str, n: int = 4, max_: int = 4, **knobs: object) -> Case:
    cfg, path = process_group_config(
        tmp_path / "state", min_=n, max_=max_, metrics=METRIC, extra=ROLLOUT, **knobs
    )
    text = Path(path).read_text()
    template = text.split("template: ", 1)[1].split("\n", 1)[0]
    assert template.endswith("cpus: 0.25}"), template
    new = text.replace(template, template[:-1] + change + "}")
    return Case(path, new, work_url(cfg, 2), replicas=n)


def _cleanup(case: Case) -> None:
    down(case.cfg)
    lo, hi = case.cfg.groups[0].template.port_range
    assert workload_processes((lo, hi)) == []


def test_good_rollout_under_load_survives_a_sigkill_and_fails_nothing(
    tmp_path: Path, balancer_type: str
) -> None:
    case = _case(tmp_path, ", env: {RELEASE: '2'}", balancer_type=balancer_type)
    try:
        good_rollout_killed_midway(case, rate=20, timeout=60)
    finally:
        _cleanup(case)


def test_a_version_that_never_turns_healthy_is_rolled_back_without_a_failed_request(tmp_path: Path) -> None:
    case = _case(tmp_path, "", startup_grace="4s")
    # Same placeholders, but the process never listens: it never passes a health check.
    case.new_text = case.new_text.replace(
        '["python3", "-m", "tierscale.workload", "--port", "{port}"]',
        '["python3", "-c", "import time, sys; time.sleep(3600)", "{port}"]',
    )
    try:
        bad_rollout_rolls_back(case, rate=20, timeout=60)
    finally:
        _cleanup(case)


def test_load_doubling_mid_rollout_scales_out_on_the_new_revision(tmp_path: Path) -> None:
    case = _case(tmp_path, ", env: {RELEASE: '2'}", n=2, max_=6)
    try:
        desired = load_doubles_midway(case, base=10, timeout=60)
        assert max(desired) >= 3, desired
    finally:
        _cleanup(case)


def test_sighup_rereads_the_file_and_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    """The first thing a new user tried: `kill -HUP` on `tierscale run`. It must reload, never kill."""
    case = _case(tmp_path, "", n=1, max_=3)
    path = Path(case.path)
    text = path.read_text()
    try:
        with api_token(), CliControllers(case.path, stop_timeout=60) as ctl:
            proc = ctl.start()
            wait_for(lambda: case.status().get("ready") == 1, 60, what="one ready")
            path.write_text(text.replace("    min: 1\n", "    min: 2\n"))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: case.status().get("ready") == 2, 60, what="min 2 applied by SIGHUP")
            assert case.status()["min"] == 2
            ids = {r["id"] for r in case.status()["replicas"]}
            path.write_text(text.replace("    min: 1\n", "    min: many\n"))
            proc.send_signal(signal.SIGHUP)
            wait_passes(Path(case.cfg.state_dir), case.group, 3)
            assert proc.poll() is None, "SIGHUP with a bad file ended the controller"
            st = case.status()
            assert st["min"] == 2 and {r["id"] for r in st["replicas"]} == ids  # the last good config
            applied = events(Path(case.cfg.state_dir), case.group, "config_applied")
            assert len(applied) == 1 and "min" in applied[0].message, [e.message for e in applied]
    finally:
        _cleanup(case)
