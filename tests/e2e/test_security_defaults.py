"""Security defaults (issue G.4) on a running controller: loopback listeners, a token that is never
written down, private state files.

One `tierscale run` (a process-tier group behind nginx, verbose JSON logs) serves the module: while it
runs, its listening sockets and the modes of its state files are recorded and authenticated requests are
made; then it is stopped, and everything it printed or wrote is searched for the token.
(The defaults and the config's refusal of credentials are checked in tests/unit/test_security_config.py,
the events.db mode on its own in test_eventstore.py, the credential hint for an OpenStack `password:` in
test_config.py.)
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from helpers.api import cleanup, http
from helpers.e2e import free_port, is_loopback, nginx_processes, process_group_config, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "sec-token-" + os.urandom(12).hex()
TOKEN_ENV = f"TIERSCALE_SEC_TOKEN_{os.getpid()}"


@dataclass
class Run:
    state_dir: Path
    api: str
    balancer: str
    output: dict[str, bytes] = field(default_factory=dict)  # stream or file name -> what it holds
    listening: set[tuple[str, int]] = field(default_factory=set)  # (ip, port) of every LISTEN socket
    modes: dict[Path, int] = field(default_factory=dict)  # every file and directory under the state dir
    statuses: list[int] = field(default_factory=list)
    # processes started by the controller (replicas, nginx) -> their environment holds the token
    child_env_has_token: dict[str, bool] = field(default_factory=dict)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("security")
    state_dir = base / "state"
    api_port = free_port()
    cfg, path = process_group_config(
        state_dir, min_=1, max_=2, extra=f"api: {{listen: '127.0.0.1:{api_port}', token_env: {TOKEN_ENV}}}\n"
    )
    rec = Run(state_dir, f"http://127.0.0.1:{api_port}", cfg.groups[0].balancer.listen)
    out, err = base / "run.stdout", base / "run.stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierscale", "run", "-v", "--log-format", "json", path],
            stdout=fo,
            stderr=fe,
            env={**os.environ, TOKEN_ENV: TOKEN},
        )
    try:

        def ready() -> bool:
            try:
                return http(rec.api, "GET", "/api/groups/web").json["ready"] >= 1
            except (OSError, ValueError, KeyError):
                return False

        wait_for(ready, 40, what="the first replica ready")
        procs = _tree(proc.pid) + [p for m in nginx_processes(state_dir) for p in _tree(m.pid)]
        for p in procs[1:]:
            rec.child_env_has_token[f"{p.pid} {p.name()}"] = TOKEN in p.environ().values()
        for p in procs:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    rec.listening.add((c.laddr.ip, c.laddr.port))
        for p in [*sorted(state_dir.rglob("*")), state_dir]:
            rec.modes[p] = stat.S_IMODE(p.lstat().st_mode)
        # Every kind of request that carries the token, right or wrong, and a change made with the CLI.
        for verb, body in (("scale", {"replicas": 2}), ("pause", None), ("resume", None)):
            rec.statuses.append(http(rec.api, "POST", f"/api/groups/web/{verb}", body, token=TOKEN).status)
            rec.statuses.append(
                http(rec.api, "POST", f"/api/groups/web/{verb}", body, token=TOKEN[:-1]).status
            )
        cli = subprocess.run(
            [sys.executable, "-m", "tierscale", "pause", "web", "--config", path],
            capture_output=True,
            env={**os.environ, TOKEN_ENV: TOKEN},
            timeout=60,
        )
        rec.statuses.append(cli.returncode)
        rec.output["cli stdout"], rec.output["cli stderr"] = cli.stdout, cli.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    rec.output["run stdout"], rec.output["run stderr"] = out.read_bytes(), err.read_bytes()
    for p in state_dir.rglob("*"):
        if p.is_file():
            rec.output[str(p.relative_to(state_dir))] = p.read_bytes()
    try:
        yield rec
    finally:
        cleanup(cfg)


def test_replicas_and_nginx_do_not_inherit_the_token(run: Run) -> None:
    assert any("nginx" in name for name in run.child_env_has_token)
    assert any("python" in name for name in run.child_env_has_token)  # a process-tier replica
    assert not [name for name, has in run.child_env_has_token.items() if has]


# ---------------------------------------------------------------------------------------------- listen
def test_a_running_controller_listens_on_loopback_only(run: Run) -> None:
    api_port = int(run.api.rpartition(":")[2])
    lb_port = int(run.balancer.rpartition(":")[2])
    ports = {port for _, port in run.listening}
    assert {api_port, lb_port} <= ports, run.listening  # the controller, nginx and a replica were seen
    assert len(ports) >= 3
    assert all(is_loopback(ip) for ip, _ in run.listening), run.listening


# ---------------------------------------------------------------------------------------------- token
def test_the_token_is_never_printed_logged_or_stored(run: Run) -> None:
    assert run.statuses == [200, 401, 200, 401, 200, 401, 0], run.statuses  # the requests did happen
    assert b"events.db" in {k.encode() for k in run.output}
    assert b'"manual"' in run.output["run stdout"] + run.output["run stderr"]  # the changes were logged
    for where, data in run.output.items():
        assert TOKEN.encode() not in data, f"the API token appears in {where}"
        assert TOKEN[:-1].encode() not in data, f"a presented token appears in {where}"


# ---------------------------------------------------------------------------------------------- files
def test_state_files_are_private(run: Run) -> None:
    sd_dir = run.state_dir / "prometheus"
    # Prometheus' file_sd targets are for another user to read (addresses and labels only), behind the
    # 0700 state dir: 0755 and 0644, checked here, the rest must be private.
    shared = {p: m for p, m in run.modes.items() if p == sd_dir or p.parent == sd_dir}
    assert shared.get(sd_dir) == 0o755 and any(m == 0o644 for m in shared.values()), shared
    assert all(m in (0o755, 0o644) for m in shared.values()), shared
    modes = {p: m for p, m in run.modes.items() if p not in shared}
    assert modes[run.state_dir] == 0o700
    private = {
        p: m for p, m in modes.items() if p.name.startswith("events.db") or p.suffix in (".json", ".lock")
    }
    assert any(p.name == "events.db" for p in private) and any(p.suffix == ".json" for p in private), modes
    assert any(p.name == "controller.lock" for p in private), modes
    assert all(m == 0o600 for m in private.values()), {str(p): oct(m) for p, m in private.items()}
    # Nothing anyone else could read or change, nginx's config, logs and pid file included (its logs hold
    # client addresses and paths): the 0700 state dir is not the only guard.
    assert any(p.name == "access.log" for p in modes) and any(p.suffix == ".conf" for p in modes), modes
    assert not [p for p, m in modes.items() if m & 0o077], {str(p): oct(m) for p, m in modes.items()}
