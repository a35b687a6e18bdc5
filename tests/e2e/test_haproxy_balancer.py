"""The HAProxy balancer on a real HAProxy: membership through the Runtime API with no reload, drains, the
slot row growing by a reload that keeps every server, adoption by a new controller, the bad inputs
(binary missing, listen taken), and its master killed under a running controller."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helpers.ci import require
from helpers.e2e import (
    events,
    free_port,
    haproxy_processes,
    process_group_config,
    wait_for,
    work_url,
    workload_processes,
)
from tierscale.balancer.base import BalancerError
from tierscale.balancer.haproxy import HAProxyBalancer
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner, run_load_sync
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:  # refused, reset: not listening (yet)
        return 0, str(e)


@pytest.fixture
def backends() -> Iterator[list[str]]:
    """Three demo workloads on loopback ports of their own."""
    ports = [free_port() for _ in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tierscale.workload", "--port", str(p), "--instance", f"w{p}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    try:
        for a in addrs:
            wait_for(lambda a=a: _get(f"http://{a}/healthz")[0] == 200, 20, what=f"workload {a}")
        yield addrs
    finally:
        for p in procs:
            p.kill()
            p.wait(5)


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[HAProxyBalancer]:
    require(HAProxyBalancer("t", "127.0.0.1:1", "round_robin", tmp_path)._haproxy() != "", "haproxy")
    b = HAProxyBalancer("t", f"127.0.0.1:{free_port()}", "round_robin", tmp_path / "haproxy")
    try:
        yield b
    finally:
        b.stop()
        assert not haproxy_processes(tmp_path)


def _instances(b: HAProxyBalancer, n: int) -> set[str]:
    return {_get(f"{b.url}/work?ms=1")[1].split('"instance": "')[1].split('"')[0] for _ in range(n)}


def test_membership_changes_without_a_reload_and_a_drain_lets_requests_finish(
    balancer: HAProxyBalancer, backends: list[str]
) -> None:
    b = balancer
    b.ensure_running(backends[:1])
    master = b._master()
    assert master is not None
    worker = b._worker_pid()
    assert _instances(b, 4) == {f"w{backends[0].rsplit(':', 1)[1]}"}
    assert b.apply(backends).changed
    assert len(_instances(b, 12)) == 3
    # A slow request in flight on the replica being removed: the drain waits for it, and it succeeds.
    slow_victim = backends[0]
    answers: list[int] = []
    t = threading.Thread(target=lambda: answers.append(_get(f"{b.url}/work?ms=1500")[0]))
    t.start()
    wait_for(lambda: any(r.sessions for r in b._rows()), 10, what="the slow request in flight")
    busy = next(_row for _row in b._rows() if _row.sessions)
    slow_victim = busy.address
    rest = [a for a in backends if a != slow_victim]
    assert b.apply(rest).changed
    assert not b.wait_drained(slow_victim, 0.2)  # still in flight
    assert b.wait_drained(slow_victim, 10)
    t.join(10)
    assert answers == [200]
    assert {f"127.0.0.1:{i.removeprefix('w')}" for i in _instances(b, 12)} == set(rest)
    # Everything above went through the Runtime API: the same master and worker serve.
    assert b._master() is not None and b._master().pid == master.pid and b._worker_pid() == worker
    assert b.apply(rest) == b.apply(rest)  # idempotent: nothing left to change
    assert not b.apply(rest).changed
    # No replica: HAProxy answers like nginx does.
    b.apply([])
    status, body = _get(f"{b.url}/")
    assert status == 503 and '"no ready replicas"' in body


def test_more_replicas_than_slots_reload_once_and_keep_every_server(
    balancer: HAProxyBalancer, backends: list[str]
) -> None:
    b = balancer
    b.ensure_running(backends)
    worker = b._worker_pid()
    slots = {r.address: r.name for r in b._rows() if r.in_service}
    many = backends + [f"127.0.0.1:{free_port()}" for _ in range(17)]  # 20 > 16 slots
    assert b.apply(many).ok and b.slots == 64
    assert b._worker_pid() != worker  # the one reload
    live = {r.address: r.name for r in b._rows() if r.in_service}
    assert set(live) == set(many), set(live) ^ set(many)
    # The server-state file carried the three across the reload: same slots, still in service.
    assert {a: live[a] for a in backends} == slots
    # Back to the three real ones (the rest never listened): nothing fails.
    assert b.apply(backends).changed
    res = run_load_sync(f"{b.url}/work?ms=1", 40, 2)
    assert res.failed == 0, res.status


def test_a_new_controller_adopts_the_running_haproxy_and_its_servers(
    balancer: HAProxyBalancer, backends: list[str], tmp_path: Path
) -> None:
    balancer.ensure_running(backends[:2])
    pid = balancer._master().pid  # type: ignore[union-attr]
    again = HAProxyBalancer("t", balancer.listen, "round_robin", tmp_path / "haproxy")
    assert again.is_running()
    again.ensure_running(backends)
    assert again._master().pid == pid  # type: ignore[union-attr]
    assert {r.address for r in again._rows() if r.in_service} == set(backends)


def test_bad_inputs_are_one_clear_line(tmp_path: Path) -> None:
    missing = HAProxyBalancer(
        "t", f"127.0.0.1:{free_port()}", "round_robin", tmp_path, "/nonexistent/haproxy"
    )
    with pytest.raises(BalancerError, match=r"not found: install Debian's haproxy package"):
        missing.ensure_running([])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        b = HAProxyBalancer("t", f"127.0.0.1:{port}", "round_robin", tmp_path / "h")
        with pytest.raises(BalancerError, match=rf"balancer.listen 127.0.0.1:{port}: Address already in use"):
            b.ensure_running([])
        assert not b.is_running()
    finally:
        taken.close()
    with pytest.raises(ValueError, match="haproxy supports round_robin"):
        HAProxyBalancer("t", "127.0.0.1:1", "uri", tmp_path)


def test_haproxy_killed_under_load_is_restarted_and_keeps_the_replicas(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    cfg, _ = process_group_config(state_dir, min_=2, max_=2, balancer_type="haproxy")
    ports = tuple(cfg.groups[0].template.port_range)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status("web")["ready"] == 2, 30, what="two ready")
            before = {r["id"] for r in bg.status("web")["replicas"]}
            procs = haproxy_processes(state_dir)
            old = {p.pid for p in procs}
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    os.kill(p.pid, signal.SIGKILL)
            wait_for(
                lambda: any(e.kind == "balancer_restarted" for e in events(state_dir, "web")),
                20,
                what="the controller noticed",
            )
            wait_for(lambda: _get(work_url(cfg, 1))[0] == 200, 20, what="a new haproxy serving")
            assert not old & {p.pid for p in haproxy_processes(state_dir)}
            runner = LoadRunner(work_url(cfg, 2), lambda _t: 20.0, 5)
            runner.start()
            result = runner.result(timeout=30)
            assert result.failed == 0, result.status
            assert {r["id"] for r in bg.status("web")["replicas"]} == before  # replicas untouched
    finally:
        down(cfg)
    assert workload_processes(ports) == [] and haproxy_processes(state_dir) == []


def test_requests_per_replica_and_p95_come_from_haproxys_log(tmp_path: Path) -> None:
    """The request metrics read HAProxy's log as they read nginx's: 20 req/s at 5 per replica asks for 4."""
    state_dir = tmp_path / "state"
    metrics = "[{type: requests_per_replica, target: 5}, {type: latency_p95_ms, target: 5000}]"
    cfg, _ = process_group_config(state_dir, min_=1, max_=4, metrics=metrics, balancer_type="haproxy")
    runner = LoadRunner(work_url(cfg, 2), lambda _t: 20.0, 60)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status("web")["ready"] == 1, 30, what="one ready")
            runner.start()
            wait_for(lambda: bg.status("web")["desired"] == 4, 40, what="scaled to 4 on req/s")
            proposals = {p["metric"]: p for p in bg.status("web")["last_decision"]["proposals"]}
            assert proposals["requests_per_replica"]["value"] > 0, proposals
            p95 = proposals["latency_p95_ms"]["value"]
            assert p95 is not None and 0 < p95 < 5000, proposals
            runner.stop()
        result = runner.result(timeout=30)
        assert result.failed == 0, result.status
    finally:
        runner.stop()
        down(cfg)


def test_a_config_haproxy_rejects_keeps_the_last_good_one_serving(
    balancer: HAProxyBalancer, backends: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one reload there is (the slot row growing) checks the new file with `haproxy -c` first."""
    b = balancer
    b.ensure_running(backends)
    live = b.conf_path.read_text()
    monkeypatch.setattr(b, "render", lambda slots: live.replace("balance roundrobin", "balance sideways"))
    many = backends + [f"127.0.0.1:{free_port()}" for _ in range(17)]
    result = b.apply(many)
    assert not result.ok and "balance only supports 'roundrobin'" in (result.error or ""), result
    assert "\n" not in (result.error or "")
    assert b.conf_path.read_text() == live and b.slots == 16  # the running file was never replaced
    res = run_load_sync(f"{b.url}/work?ms=1", 40, 1)
    assert res.failed == 0 and len(res.instances) == 3, (res.status, res.instances)
