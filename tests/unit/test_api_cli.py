"""The command line side of E: `scale`/`pause`/`resume` as API clients, `events`, `status --watch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console

from helpers.api import http, idle_config, wait_api
from helpers.e2e import free_port, wait_for
from tierscale.controller.down import down
from tierscale.eventstore import EventStore
from tierscale.policy.types import Decision, MetricProposal
from tierscale.service import BackgroundController
from tierscale.views import format_history, read_history, render_status_table

TOKEN = "cli-token-" + os.urandom(4).hex()
TOKEN_ENV = f"TIERSCALE_CLI_TOKEN_{os.getpid()}"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERSCALE_")}
    return subprocess.run(
        [sys.executable, "-m", "tierscale", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base_env, **(env or {})},
    )


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    api = f"{{listen: '127.0.0.1:{port}', token_env: {TOKEN_ENV}}}"
    cfg = idle_config(tmp / "state", api)
    path = tmp / "idle.yaml"  # written by idle_config: `-c` reads api.listen and api.token_env
    os.environ[TOKEN_ENV] = TOKEN
    try:
        with BackgroundController(cfg) as bg:
            base = f"http://127.0.0.1:{port}"
            wait_api(base)
            yield {"bg": bg, "base": base, "path": str(path), "state_dir": tmp / "state"}
    finally:
        os.environ.pop(TOKEN_ENV, None)
        down(cfg)


def test_scale_pause_resume_through_the_api(controller: dict[str, Any]) -> None:
    base, bg = controller["base"], controller["bg"]
    env = {TOKEN_ENV: TOKEN}
    # Token variable named by the config, address taken from its api.listen: no --api needed.
    out = cli("scale", "solo", "1", "-c", controller["path"], env=env)
    assert out.returncode == 0, out.stderr
    assert "scaling to 1" in out.stdout and "tierscale resume solo" in out.stdout
    st = http(base, "GET", "/api/groups/solo").json
    assert st["paused"] is True and st["manual_replicas"] == 1
    wait_for(lambda: bg.status("solo")["desired"] == 1, 10, what="manual count applied")
    out = cli("resume", "solo", "--api", base, env={"TIERSCALE_API_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    assert "policy resumed" in out.stdout
    assert http(base, "GET", "/api/groups/solo").json["paused"] is False
    out = cli("pause", "solo", env={"TIERSCALE_API": base, "TIERSCALE_API_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    assert "policy paused" in out.stdout
    assert http(base, "GET", "/api/groups/solo").json["paused"] is True
    out = cli("scale", "solo", "0", "--api", base, env={"TIERSCALE_API_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not bg.status("solo")["replicas"], 20, what="replica removed by hand")
    assert cli("resume", "solo", "--api", base, env={"TIERSCALE_API_TOKEN": TOKEN}).returncode == 0


@pytest.mark.parametrize(
    ("args", "env", "code", "words"),
    [
        (["scale", "solo", "1"], {"TIERSCALE_API_TOKEN": "wrong"}, 2, "invalid token"),
        (["scale", "solo", "1"], {}, 2, "$TIERSCALE_API_TOKEN"),
        (["scale", "solo", "5"], {"TIERSCALE_API_TOKEN": TOKEN}, 2, "between min 0 and max 1"),
        (["pause", "nope"], {"TIERSCALE_API_TOKEN": TOKEN}, 2, "no group named 'nope'"),
    ],
)
def test_refusals_are_one_line_with_exit_2(
    controller: dict[str, Any], args: list[str], env: dict[str, str], code: int, words: str
) -> None:
    out = cli(*args, "--api", controller["base"], env=env)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unreachable_api_is_exit_1_and_bad_url_exit_2() -> None:
    out = cli("resume", "web", "--api", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "cannot reach the API" in out.stderr and "Traceback" not in out.stderr
    out = cli("resume", "web", "--api", "127.0.0.1:9900")
    assert out.returncode == 2 and "--api" in out.stderr


def test_events_are_readable_by_default_and_json_on_request(controller: dict[str, Any]) -> None:
    sd = str(controller["state_dir"])
    out = cli("events", "--state-dir", sd)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("controller_started" in line for line in lines)
    # Aligned columns: the message starts at the same offset on every line.
    starts = {line.index(m) for line in lines for m in ("controller started",) if m in line}
    assert len(starts) == 1
    out = cli("events", "--state-dir", sd, "--json", "--group", "solo")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(r["group"] == "solo" and {"ts", "type", "kind", "message"} <= set(r) for r in rows)
    since = rows[-1]["ts"]
    out = cli("events", "--state-dir", sd, "--json", "--since", repr(since))  # exact: no rounding up
    later = [json.loads(line) for line in out.stdout.splitlines()]
    assert later and all(r["ts"] >= since for r in later) and len(later) <= len(rows)
    assert cli("events", "--state-dir", sd, "--since", "1m").returncode == 0
    bad = cli("events", "--state-dir", sd, "--since", "lately")
    assert bad.returncode == 2 and "--since" in bad.stderr


# ---------------------------------------------------------------------------------------------- views
def _recorded_state(state_dir: Path) -> None:
    """A store as a running controller leaves it: a status with replicas, a decision, a few events."""
    store = EventStore(state_dir / "events.db")
    now = time.time()
    reason = "cpu 140% of 60% → wants 3; scale up 1 → 3 (limited by ScaleUpLimit)"
    body = {
        "group": "shop",
        "tier": "process",
        "policy": "hpa",
        "min": 1,
        "max": 5,
        "desired": 3,
        "current": 3,
        "ready": 2,
        "paused": False,
        "provider_ok": True,
        "last_error": None,
        "balancer": {"url": "http://127.0.0.1:8080", "backends": []},
        "rps": 42.5,
        "p95_ms": 87.0,
        "replicas": [
            {
                "id": f"r-{i}",
                "address": f"127.0.0.1:2000{i}",
                "state": state,
                "health": "ok",
                "cpu": cpu,
                "rps": rps,
                "p95_ms": 80.0,
                "age": 30.0,
            }
            for i, (state, cpu, rps) in enumerate(
                [("ready", 93.0, 21.2), ("ready", 71.0, 21.3), ("starting", None, 0)]
            )
        ],
        "last_decision": {
            "ts": now,
            "policy": "hpa",
            "current": 1,
            "desired": 3,
            "recommended": 3,
            "limits": ["ScaleUpLimit"],
            "reason": reason,
            "proposals": [{"metric": "cpu", "value": 140.0, "target": 60.0, "replicas": 3, "error": None}],
        },
    }
    store.write_status("shop", body, ts=now)
    store.record_decision(
        "shop", Decision("hpa", now, 1, 3, (MetricProposal("cpu", 60, 140, 3),), 3, ("ScaleUpLimit",), reason)
    )
    store.record_event("shop", "replica_created", "created replica r-2 at 127.0.0.1:20002", "r-2", ts=now)
    store.close()


def test_status_table_shows_replicas_cpu_rps_and_the_reason(tmp_path: Path) -> None:
    _recorded_state(tmp_path)
    from tierscale.views import read_statuses

    console = Console(record=True, width=160, color_system=None)
    console.print(render_status_table(read_statuses(tmp_path)))
    text = console.export_text()
    assert "shop" in text and "desired=3" in text and "42.5 req/s" in text
    assert "r-0" in text and "93" in text and "21.2" in text and "starting" in text
    assert "why: 1 → 3: cpu 140% of 60%" in text and "ScaleUpLimit" in text
    assert "cpu 140% vs target 60%" in text
    history = format_history(read_history(tmp_path, None, None, 10))
    assert "decision" in history and "1 → 3" in history and "created replica r-2" in history


def test_status_watch_redraws_live_until_interrupted(tmp_path: Path) -> None:
    _recorded_state(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERSCALE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierscale", "status", "--watch", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "160", "TERM": "xterm-256color"},
    )
    try:
        # On a pipe the view is printed when it stops, so the output cannot say it is up: rich's refresh
        # thread can (it starts inside the `Live` block that handles Ctrl-C). A SIGINT sent while a busy
        # machine is still importing would be a traceback, not what this test is about.
        watching = psutil.Process(proc.pid)
        wait_for(lambda: proc.poll() is not None or watching.num_threads() >= 2, 60, what="status --watch up")
        time.sleep(2)  # a few refreshes (one a second)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    for words in ("shop", "r-0", "req/s", "why: 1 → 3", "ScaleUpLimit", "created replica r-2", "Ctrl-C"):
        assert words in out, (words, out)
