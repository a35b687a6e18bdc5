"""The demo workload over real HTTP on 127.0.0.1: CPU burn, routes, keep-alive, graceful SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tierscale.workload import WorkloadServer, make_server


@pytest.fixture
def server() -> Iterator[WorkloadServer]:
    srv = make_server("127.0.0.1", 0, "inst-1", max_ms=1000)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def get(srv: WorkloadServer, path: str) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


def test_work_burns_cpu_for_ms(server: WorkloadServer) -> None:
    get(server, "/work?ms=0")  # warm up imports/threads outside the measurement
    cpu0, wall0 = time.process_time(), time.monotonic()
    status, body, resp = get(server, "/work?ms=200")
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    assert status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"instance": "inst-1", "ms": 200}
    # Server and client share this process, so its CPU clock sees the burn: ≈ 200 ms, plus a little
    # HTTP overhead. Sleeping or timing on the wall clock would fail the lower bound.
    assert 0.19 <= cpu <= 0.30, cpu
    assert wall >= 0.19

    cpu0 = time.process_time()
    assert get(server, "/work?ms=0")[0] == 200
    assert time.process_time() - cpu0 < 0.05  # ms=0 is cheap: the cost above really came from ms


def test_ms_is_capped() -> None:
    capped = make_server("127.0.0.1", 0, "cap", max_ms=50)
    thread = threading.Thread(target=capped.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        status, body, _ = get(capped, "/work?ms=5000")
        assert status == 200
        assert json.loads(body) == {"instance": "cap", "ms": 50}
        assert time.monotonic() - t0 < 2.0
    finally:
        capped.shutdown()
        capped.server_close()
        thread.join(5)


def test_healthz(server: WorkloadServer) -> None:
    status, body, _ = get(server, "/healthz")
    assert (status, body) == (200, b"ok")


@pytest.mark.parametrize("path", ["/", "/nope", "/work/x", "/healthz/x"])
def test_unknown_path_is_404(server: WorkloadServer, path: str) -> None:
    status, body, _ = get(server, path)
    assert status == 404
    assert json.loads(body)["error"] == "not found"


@pytest.mark.parametrize("ms", ["abc", "-5", "1.5", "", "1e3"])
def test_bad_ms_is_400(server: WorkloadServer, ms: str) -> None:
    status, body, _ = get(server, f"/work?ms={ms}")
    assert status == 400
    assert "ms" in json.loads(body)["error"]


def test_missing_ms_means_zero(server: WorkloadServer) -> None:
    status, body, _ = get(server, "/work")
    assert status == 200
    assert json.loads(body) == {"instance": "inst-1", "ms": 0}


def test_keep_alive_reuses_the_connection(server: WorkloadServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        bodies = []
        for path in ("/healthz", "/work?ms=1", "/nope", "/work?ms=bad", "/work?ms=2"):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.version == 11
            assert resp.getheader("Content-Length") == str(len(body))
            assert not resp.will_close
            if path == "/healthz":
                first_sock = conn.sock
            bodies.append(body)
        # http.client drops the socket when a response closes the connection; same object = one
        # TCP connection served all five requests, errors included.
        assert conn.sock is first_sock
        assert json.loads(bodies[-1]) == {"instance": "inst-1", "ms": 2}
    finally:
        conn.close()


def test_default_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERSCALE_REPLICA", "r-7")
    srv = make_server("127.0.0.1", 0)
    srv.server_close()
    assert srv.instance == "r-7"
    monkeypatch.delenv("TIERSCALE_REPLICA")
    srv = make_server("127.0.0.1", 0)
    srv.server_close()
    assert srv.instance == f"{socket.gethostname()}:{srv.server_address[1]}"


def _read_line(stream: object, timeout: float) -> str:
    assert hasattr(stream, "fileno") and hasattr(stream, "readline")
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no startup line from the workload"
    return str(stream.readline())


def test_sigterm_finishes_in_flight_request_then_exits_0() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierscale.workload", "--port", "0", "--instance", "sub-1"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    idle = busy = None
    try:
        line = _read_line(proc.stderr, 15)
        m = re.search(r"http://127\.0\.0\.1:(\d+) instance=sub-1", line)
        assert m, line
        port = int(m.group(1))

        # An idle keep-alive connection must not hold up the exit.
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() == b"ok"

        # A request on an already-accepted connection, so it is surely the server's when SIGTERM lands.
        busy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        busy.request("GET", "/healthz")
        busy.getresponse().read()
        outcome: dict[str, object] = {}

        def slow_request() -> None:
            assert busy is not None
            try:
                busy.request("GET", "/work?ms=300")
                resp = busy.getresponse()
                outcome.update(status=resp.status, body=resp.read(), conn=resp.getheader("Connection"))
            except Exception as exc:
                outcome["error"] = repr(exc)

        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        thread.join(10)
        assert outcome.get("status") == 200, outcome
        assert json.loads(outcome["body"]) == {"instance": "sub-1", "ms": 300}  # type: ignore[arg-type]
        assert outcome["conn"] == "close"  # a stopping replica tells keep-alive clients to leave
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 4.0  # drained, not stuck on the idle connection

        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for c in (idle, busy):
            if c is not None:
                c.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
