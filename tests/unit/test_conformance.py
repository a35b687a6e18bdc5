"""Every row of the shared Kubernetes HPA conformance tables must pass through the policy engine.

The tables are read from tests/data/conformance, a copy of ../shared/conformance (next to the checkout)
so the suite runs without it; a test checks that the copy is still byte for byte the shared one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import DATA, REPO
from helpers.ci import require
from tierscale.policy.behavior import rate_limit, stabilize
from tierscale.policy.conformance import decode_events, decode_rules, explain_case, load_cases, run_case


def _shared_dir() -> Path:
    env = os.environ.get("TIERSCALE_SHARED")
    base = Path(env) if env else REPO.parent / "shared"
    return base / "conformance"


CONFORMANCE = DATA / "conformance"  # the copy the tests run
SHARED = _shared_dir()  # where it comes from ($TIERSCALE_SHARED/conformance when that is set)
FILES = sorted(CONFORMANCE.glob("*.json"))
ROWS: list[tuple[str, dict[str, Any]]] = [(f.name, c) for f in FILES for c in load_cases(f)]


def test_tables_are_present() -> None:
    assert {f.name for f in FILES} >= {"hpa_replica_cases.json", "hpa_behavior_cases.json"}, CONFORMANCE
    assert len(ROWS) >= 130


def _table_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [*d.glob("*.json"), d / "README.md"] if p.is_file()}


def test_the_copy_is_byte_for_byte_the_shared_tables() -> None:
    require(SHARED.is_dir(), f"the shared conformance tables ({SHARED})")
    shared, copy = _table_files(SHARED), _table_files(CONFORMANCE)
    assert "README.md" in shared and {n for n in shared if n.endswith(".json")}, SHARED
    assert sorted(copy) == sorted(shared), f"tests/data/conformance and {SHARED} hold different files"
    stale = sorted(name for name in shared if copy[name] != shared[name])
    assert not stale, f"tests/data/conformance: {stale} differ from {SHARED}: copy them again"


@pytest.mark.parametrize(("file", "case"), ROWS, ids=[f"{f}::{c['name']}" for f, c in ROWS])
def test_row(file: str, case: dict[str, Any]) -> None:
    result = run_case(case)
    # Rows Go never asserts (skipped_in_go) must still agree with the algorithm.
    assert result.ok, result.explanation


RATE_ROWS = [c for _, c in ROWS if c["kind"] == "rate_limit"]


@pytest.mark.parametrize("case", RATE_ROWS, ids=[c["name"] for c in RATE_ROWS])
def test_rate_rows_through_stabilize_with_empty_history(case: dict[str, Any]) -> None:
    # README: with no recommendation history, stabilize returns desired, so the pipeline agrees.
    i = case["inputs"]
    up, down = decode_rules(i["scale_up_rules"]), decode_rules(i["scale_down_rules"])
    stab = stabilize(i["current_replicas"], i["desired_replicas"], (), 0.0, 300.0, 0.0)
    got = rate_limit(
        i["current_replicas"],
        stab.replicas,
        i["min_replicas"],
        i["max_replicas"],
        up,
        down,
        decode_events(i["scale_up_events"]),
        decode_events(i["scale_down_events"]),
        0.0,
    )
    assert (got.replicas, got.reason) == (case["expected"]["replicas"], case["expected"]["condition_reason"])


def test_explain_mentions_the_outcome() -> None:
    rows = [c for _, c in ROWS][:3]
    text = explain_case(rows)
    assert all(c["name"] in text for c in rows)
    assert "matches expected" in text


def test_runner_cli() -> None:
    skipped = sum(1 for _, c in ROWS if c.get("skipped_in_go"))
    proc = subprocess.run(
        [sys.executable, "-m", "tierscale.policy.conformance", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = proc.stdout.strip().splitlines()[-1]
    expected = f"{len(ROWS) - skipped} passed, 0 failed" + (f", {skipped} skipped" if skipped else "")
    assert last == expected, proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_runner_cli_reports_failures(tmp_path: Path) -> None:
    case = dict(next(c for _, c in ROWS if c["kind"] == "legacy_normalize"))
    case["expected"] = {**case["expected"], "replicas": case["expected"]["replicas"] + 1}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([case]))
    proc = subprocess.run(
        [sys.executable, "-m", "tierscale.policy.conformance", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "0 passed, 1 failed"
    assert case["name"] in proc.stdout
    assert proc.returncode == 1
