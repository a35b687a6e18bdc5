"""Helpers for end-to-end tests: configs with unique ports, waiting, and leak checks."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tierscale.config import load_config_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_port_block = [22000 + (os.getpid() % 40) * 200]


def port_block(size: int = 20) -> tuple[int, int]:
    """A replica port range no other test in this run uses."""
    lo = _port_block[0]
    _port_block[0] += size
    return lo, lo + size - 1


def process_group_config(
    state_dir: Path,
    name: str = "web",
    min_: int = 1,
    max_: int = 5,
    cpus: float = 0.25,
    target: int = 50,
    down_window: str = "5s",
    extra: str = "",
    listen_port: int | None = None,
    metrics: str = "[{type: cpu, target: %(target)d}]",
) -> tuple[Any, str]:
    lo, hi = port_block()
    listen = listen_port or free_port()
    # Each test gets its own API port unless it configures the API itself.
    api_line = "" if "api:" in extra else f'api: {{listen: "127.0.0.1:{free_port()}"}}\n'
    text = f"""\
state_dir: {state_dir}
{api_line}groups:
  - name: {name}
    tier: process
    min: {min_}
    max: {max_}
    sync_period: 1s
    template:
      command: ["python3", "-m", "tierscale.workload", "--port", "{{port}}"]
      port_range: [{lo}, {hi}]
      cpus: {cpus}
    health: {{path: /healthz, interval: 300ms, timeout: 1s, healthy_after: 1, unhealthy_after: 2,
             startup_grace: 15s}}
    metrics: {metrics % {"target": target}}
    cpu_initialization_period: 3s
    initial_readiness_delay: 1s
    behavior:
      scale_down:
        stabilization_window: {down_window}
        policies: [{{type: Percent, value: 100, period: 3s}}]
    drain_timeout: 5s
    balancer: {{type: nginx, listen: "127.0.0.1:{listen}"}}
{extra}"""
    path = Path(state_dir).parent / f"{name}.yaml"
    path.write_text(text)
    return load_config_text(text, str(path)), str(path)


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def workload_processes(port_range: tuple[int, int]) -> list[psutil.Process]:
    """Live demo-workload processes listening on a port of `port_range` (one test's replicas)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info.get("cmdline") or []
            if "tierscale.workload" not in cmd or "--port" not in cmd or p.status() == psutil.STATUS_ZOMBIE:
                continue
            port = int(cmd[cmd.index("--port") + 1])
        except (psutil.Error, ValueError, IndexError):
            continue
        if port_range[0] <= port <= port_range[1]:
            out.append(p)
    return out


def nginx_processes(state_dir: Path) -> list[psutil.Process]:
    """nginx masters started under `state_dir` (their command line names the prefix; workers' does not)."""
    needle = str(state_dir)
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "nginx" and needle in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out
