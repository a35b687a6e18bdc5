"""Talking to a running controller's HTTP API, and the configs the API tests run it with."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from helpers.e2e import port_block, process_group_config, wait_for, workload_processes
from tierscale.config import load_config_text
from tierscale.controller.down import down

TOKEN = "test-token-" + os.urandom(6).hex()
TOKEN_ENV = f"TIERSCALE_TEST_TOKEN_{os.getpid()}"


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if method == "POST" and data is None:
        data = b""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def api_config(state_dir: Path, port: int, **kw: Any) -> Any:
    """A process-tier group behind nginx whose API listens on `port`, its token in $TOKEN_ENV."""
    extra = f"api: {{listen: '127.0.0.1:{port}', token_env: {TOKEN_ENV}}}\n"
    cfg, _ = process_group_config(state_dir, extra=extra, **kw)
    return cfg


def wait_api(base: str) -> None:
    """BackgroundController returns before the server listens: wait until it answers."""

    def up() -> bool:
        try:
            return http(base, "GET", "/healthz").status == 200
        except OSError:
            return False

    wait_for(up, 20, what=f"API at {base}")


def idle_config(state_dir: Path, api: str | None) -> Any:
    """A group without replicas unless asked (min 0, no balancer): a controller that costs nothing to run.

    The config is also written to `idle.yaml` next to `state_dir`, for commands that take a file.
    """
    lo, hi = port_block(2)
    command = '["python3", "-m", "tierscale.workload", "--port", "{port}"]'
    text = f"""\
state_dir: {state_dir}
{"" if api is None else f"api: {api}"}
groups:
  - name: solo
    tier: process
    min: 0
    max: 1
    sync_period: 1s
    template: {{command: {command}, port_range: [{lo}, {hi}]}}
    balancer: {{type: none}}
"""
    path = Path(state_dir).parent / "idle.yaml"
    path.write_text(text)
    return load_config_text(text, str(path))


def cleanup(cfg: Any) -> None:
    down(cfg)
    for p in workload_processes(tuple(cfg.groups[0].template.port_range)):
        p.kill()
