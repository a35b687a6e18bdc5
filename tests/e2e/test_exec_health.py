"""Health type exec on the real tiers: a command run beside a process replica, and `docker exec` in a
container. A replica whose command starts failing is taken out and replaced, the event names the exit
code and the command's words; the healthy one is left alone."""

from __future__ import annotations

import contextlib
import secrets
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.ci import require
from helpers.e2e import events, free_port, port_block, wait_for, workload_processes
from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.providers.docker import LABEL_GROUP, LABEL_REPLICA
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e


def _config(state_dir: Path, name: str, tier: str, template: str, command: str) -> Any:
    text = f"""\
state_dir: {state_dir}
api: {{listen: "127.0.0.1:{free_port()}"}}
groups:
  - name: {name}
    tier: {tier}
    min: 2
    max: 2
    sync_period: 1s
    template: {template}
    balancer: {{type: none}}
    health: {{type: exec, command: {command}, interval: 300ms, timeout: 5s, unhealthy_after: 2,
             startup_grace: 0s}}
    drain_timeout: 1s
"""
    return load_config_text(text, str(state_dir.parent / f"{name}.yaml"))


def _ready(bg: BackgroundController, name: str) -> list[str]:
    return sorted(r["id"] for r in bg.status(name)["replicas"] if r["state"] == "ready")


def _sick_one_is_replaced(bg: BackgroundController, name: str, make_sick: Any, state_dir: Path) -> None:
    before = wait_for(lambda: (ids := _ready(bg, name)) and len(ids) == 2 and ids, 60, what="two ready")
    sick, healthy = before
    make_sick(sick)
    wait_for(
        lambda: sick not in {r["id"] for r in bg.status(name)["replicas"]} and len(_ready(bg, name)) == 2,
        60,
        what="the sick replica replaced by a ready one",
    )
    assert healthy in _ready(bg, name)  # its command kept exiting 0: never touched
    (event,) = [e for e in events(state_dir, name, "replica_unhealthy") if sick in e.message]
    assert "health command exited 1: sick" in event.message, event.message


def test_a_process_replica_whose_exec_check_fails_is_replaced(tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    lo, hi = port_block()
    command = f'["{sys.executable}", -m, tierscale.workload, --port, "{{port}}"]'
    template = f"{{command: {command}, port_range: [{lo}, {hi}]}}"
    # The replica's own port and id reach the command; no shell string is built from them.
    check = (
        '["sh", "-c", "test ! -e \\"$1\\" || { echo sick; exit 1; }", check, "' + str(flags) + '/{replica}"]'
    )
    state_dir = tmp_path / "state"
    cfg = _config(state_dir, "ex", "process", template, check)
    try:
        with BackgroundController(cfg) as bg:
            _sick_one_is_replaced(bg, "ex", lambda rid: (flags / rid).write_text("x"), state_dir)
    finally:
        down(cfg)
    assert workload_processes((lo, hi)) == []


def test_a_docker_replica_whose_exec_check_fails_is_replaced(tmp_path: Path) -> None:
    try:
        client = docker.from_env(version="auto", timeout=30)
        client.ping()
    except Exception as exc:
        require(False, f"Docker engine (scripts/setup/docker.sh): {exc}")
    build_demo_image(client)
    name = "dx-" + secrets.token_hex(3)
    template = f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 64m}}"
    check = '["sh", "-c", "test ! -e /tmp/sick || { echo sick; exit 1; }"]'
    state_dir = tmp_path / "state"
    cfg = _config(state_dir, name, "docker", template, check)

    def make_sick(rid: str) -> None:
        (c,) = client.containers.list(filters={"label": f"{LABEL_REPLICA}={rid}"})
        assert c.exec_run(["sh", "-c", ": > /tmp/sick"]).exit_code == 0

    try:
        with BackgroundController(cfg) as bg:
            _sick_one_is_replaced(bg, name, make_sick, state_dir)
    finally:
        with contextlib.suppress(Exception):
            down(cfg)
        leaked = client.containers.list(all=True, filters={"label": f"{LABEL_GROUP}={name}"})
        for c in leaked:
            c.remove(force=True)
        client.close()
    assert not leaked, [c.name for c in leaked]
