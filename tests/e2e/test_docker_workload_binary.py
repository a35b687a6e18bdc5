"""The static C workload (images/workload) over real HTTP on 127.0.0.1: same contract as workload.py."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helpers import REPO
from helpers.ci import require

BUILD_SH = REPO / "images" / "workload" / "build.sh"
BINARY = REPO / "build" / "images" / "tierscale-workload"


@pytest.fixture(scope="session")
def workload_binary() -> Path:
    require(shutil.which("gcc") is not None or os.geteuid() == 0, "gcc (to build the static workload)")
    subprocess.run(["bash", str(BUILD_SH)], check=True, timeout=300)
    assert BINARY.is_file() and os.access(BINARY, os.X_OK)
    return BINARY


class Running:
    def __init__(self, proc: subprocess.Popen[str], port: int, banner: str) -> None:
        self.proc = proc
        self.port = port
        self.banner = banner


def start(binary: Path, *args: str, env: dict[str, str] | None = None) -> Running:
    proc = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    banner = proc.stderr.readline()  # printed once the socket listens
    m = re.search(r"http://127\.0\.0\.1:(\d+) instance=(.*)$", banner.strip())
    assert m, banner
    return Running(proc, int(m.group(1)), m.group(2))


def stop(r: Running) -> None:
    if r.proc.poll() is None:
        r.proc.kill()
    r.proc.wait(10)
    if r.proc.stderr:
        r.proc.stderr.close()


@pytest.fixture
def server(workload_binary: Path) -> Iterator[Running]:
    r = start(workload_binary, "--instance", "inst-c")
    yield r
    stop(r)


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def test_work_burns_cpu_in_the_server(server: Running) -> None:
    proc = psutil.Process(server.proc.pid)
    cpu0 = sum(proc.cpu_times()[:2])
    status, body, headers = get(server.port, "/work?ms=300")
    used = sum(proc.cpu_times()[:2]) - cpu0
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"instance": "inst-c", "ms": 300}
    # CPU time, not a sleep: the server's own CPU clock advanced by about the asked amount.
    assert 0.28 <= used <= 0.6, used

    cpu0 = sum(proc.cpu_times()[:2])
    assert get(server.port, "/work?ms=0")[0] == 200
    assert sum(proc.cpu_times()[:2]) - cpu0 < 0.05


def test_routes_and_errors(server: Running) -> None:
    assert get(server.port, "/healthz")[:2] == (200, b"ok")
    status, body, _ = get(server.port, "/nope")
    assert status == 404
    assert json.loads(body) == {"error": "not found", "path": "/nope"}
    for bad in ("abc", "-3", "", "1.5"):
        status, body, _ = get(server.port, f"/work?ms={bad}")
        assert status == 400, bad
        assert json.loads(body)["ms"] == bad
    # parse_qs semantics, like the Python workload: missing ms is 0, the last value wins, %-escapes decode.
    assert json.loads(get(server.port, "/work")[1])["ms"] == 0
    assert json.loads(get(server.port, "/work?ms=9&ms=2")[1])["ms"] == 2
    assert json.loads(get(server.port, "/work?m%73=3")[1])["ms"] == 3
    # POST /work (scale-to-zero tests send bodies through the holder): the body's length and FNV-1a.
    status, body, _ = get(server.port, "/work?ms=1", method="POST", body=b"hello")
    assert status == 200
    answer = json.loads(body)
    assert (answer["method"], answer["bytes"], answer["fnv1a"]) == ("POST", 5, "a430d84680aabd0b")
    assert get(server.port, "/work", method="PUT", body=b"x")[0] == 501


def test_keep_alive_and_pipelining(server: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.read() == b"ok"
        sock = conn.sock
        for i in range(5):
            conn.request("GET", f"/work?ms={i}")
            resp = conn.getresponse()
            assert json.loads(resp.read())["ms"] == i
            assert conn.sock is sock  # same TCP connection: keep-alive works
    finally:
        conn.close()

    # Two requests in one segment, the first with a body that must not be parsed as a request.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"GET /work?ms=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
    assert data.endswith(b"ok")


def test_concurrent_requests_run_in_parallel_threads(server: Running) -> None:
    results: list[int] = []

    def one() -> None:
        results.append(get(server.port, "/work?ms=100")[0])

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 8
    assert psutil.Process(server.proc.pid).num_threads() >= 1


def test_sigterm_finishes_in_flight_then_exits_zero(server: Running) -> None:
    out: dict[str, object] = {}

    def slow() -> None:
        status, body, headers = get(server.port, "/work?ms=1500")
        out.update(status=status, body=body, headers=headers)

    # An idle keep-alive connection must not hold up the stop.
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/healthz")
    idle.getresponse().read()

    t = threading.Thread(target=slow)
    t.start()
    proc = psutil.Process(server.proc.pid)
    # Wait until the slow request is really burning CPU before signalling.
    deadline = time.monotonic() + 20
    while proc.cpu_times().user + proc.cpu_times().system < 0.2 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    # The listener closes right away: new connections are refused while the request finishes.
    refused = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not refused:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            time.sleep(0.02)
        except OSError:
            refused = True
    t.join(30)
    idle.close()
    assert refused
    assert out["status"] == 200
    assert json.loads(out["body"]) == {"instance": "inst-c", "ms": 1500}  # type: ignore[arg-type]
    assert out["headers"]["Connection"] == "close"  # type: ignore[index]
    assert server.proc.wait(15) == 0


def test_instance_id_sources(workload_binary: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIERSCALE_REPLICA"}
    r = start(workload_binary, env={**env, "TIERSCALE_REPLICA": "from-env"})
    try:
        assert json.loads(get(r.port, "/work?ms=0")[1])["instance"] == "from-env"
    finally:
        stop(r)
    r = start(workload_binary, "--instance", "from-flag", env={**env, "TIERSCALE_REPLICA": "from-env"})
    try:
        assert json.loads(get(r.port, "/work?ms=0")[1])["instance"] == "from-flag"
    finally:
        stop(r)
    # Without flag or env: the kernel command line, else the SMBIOS serial, else the hostname.
    expected = socket.gethostname()
    cmdline = Path("/proc/cmdline").read_text().split()
    serial = Path("/sys/class/dmi/id/product_serial")
    tagged = [a.split("=", 1)[1] for a in cmdline if a.startswith("tierscale.replica=")]
    if tagged:
        expected = tagged[0]
    elif serial.exists() and os.access(serial, os.R_OK) and serial.read_text().strip() not in ("", "None"):
        expected = serial.read_text().strip()
    r = start(workload_binary, env=env)
    try:
        assert json.loads(get(r.port, "/work?ms=0")[1])["instance"] == expected
    finally:
        stop(r)


def test_build_is_idempotent(workload_binary: Path) -> None:
    before = workload_binary.stat().st_mtime_ns
    subprocess.run(["bash", str(BUILD_SH)], check=True, timeout=60)
    assert workload_binary.stat().st_mtime_ns == before
