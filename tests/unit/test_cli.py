"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA
from tierscale.eventstore import EventStore
from tierscale.policy.types import Decision, MetricProposal


def tierscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierscale", *args], capture_output=True, text=True, timeout=60
    )


GOOD = """\
state_dir: {sd}
groups:
  - name: web
    tier: process
    min: 1
    max: 3
    template: {{command: ["python3", "-m", "tierscale.workload", "--port", "{{port}}"]}}
"""


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.format(sd=tmp_path / "s"))
    r = tierscale("validate", str(good))
    assert r.returncode == 0 and r.stdout.strip() == "ok"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD.format(sd=tmp_path / "s").replace("min: 1", "min: 5").replace("tier: process", "tier: procss")
    )
    r = tierscale("validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:4: groups[0].tier: must be one of: process, docker, libvirt, openstack" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("verb", ["run", "down"])
def test_bad_config_stops_run_and_down_with_exit_2(tmp_path: Path, verb: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.format(sd=tmp_path / "s").replace("max: 3", "max: 0"))
    r = tierscale(verb, str(bad))
    assert r.returncode == 2 and "groups[0].max" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()  # nothing half-applied


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    r = tierscale("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr


def test_status_and_events_read_the_store(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    store.record_event("web", "replica_created", "created replica r-1 at 127.0.0.1:20000", "r-1")
    store.record_decision(
        "web",
        Decision(
            "hpa", 1e9, 1, 3, (MetricProposal("cpu", 50, 150.0, 3),), 3, (), "cpu 150% vs target 50% → 3"
        ),
    )
    store.write_status(
        "web",
        {
            "group": "web",
            "tier": "process",
            "policy": "hpa",
            "min": 1,
            "max": 3,
            "desired": 3,
            "current": 1,
            "ready": 1,
            "paused": False,
            "balancer": None,
            "rps": 2.0,
            "p95_ms": 20.0,
            "replicas": [
                {
                    "id": "r-1",
                    "address": "127.0.0.1:20000",
                    "state": "ready",
                    "health": "ok",
                    "cpu": 150.0,
                    "rps": 2.0,
                    "p95_ms": 20.0,
                    "age": 5.0,
                }
            ],
            "last_decision": {"current": 1, "desired": 3, "reason": "cpu 150% vs target 50% → 3"},
        },
    )
    store.close()
    r = tierscale("status", "--state-dir", str(tmp_path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["desired"] == 3
    r = tierscale("status", "--state-dir", str(tmp_path))
    assert "r-1" in r.stdout and "cpu 150% vs target 50% → 3" in r.stdout
    r = tierscale("events", "--state-dir", str(tmp_path))
    assert "created replica r-1" in r.stdout and "1 → 3" in r.stdout
    r = tierscale("events", "--state-dir", str(tmp_path), "--json", "--group", "web")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["type"] for row in rows} == {"event", "decision"}
    r = tierscale("events", "--state-dir", str(tmp_path), "--since", "soon")
    assert r.returncode == 2 and "--since" in r.stderr


def test_decide_explains_a_conformance_row(tmp_path: Path) -> None:
    cases = json.loads((DATA / "conformance" / "hpa_replica_cases.json").read_text())
    row = next(c for c in cases if c["name"] == "TestReplicaCalcScaleUpUnreadyNoScale")
    f = tmp_path / "case.json"
    f.write_text(json.dumps([row]))
    r = tierscale("decide", str(f))
    assert r.returncode == 0
    assert "keep current 3" in r.stdout and "matches expected" in r.stdout


def test_load_rejects_bad_rate() -> None:
    r = tierscale("load", "http://127.0.0.1:9", "--rps", "0", "--duration", "1s")
    assert r.returncode == 2 and "rps" in r.stderr and "Traceback" not in r.stderr
