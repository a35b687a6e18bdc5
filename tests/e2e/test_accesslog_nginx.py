"""AccessLogReader against a real nginx: the format it really writes, and a logrotate-style rotation.

The edge cases, on synthetic log files, are in tests/unit/test_accesslog.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tierscale.balancer import AccessLogReader, NginxBalancer


@pytest.fixture
def backends() -> Iterator[list[str]]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"instance": str(self.server.server_address[1])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def balancer(nginx_bin: str, tmp_path: Path) -> Iterator[NginxBalancer]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lb = NginxBalancer("web", f"127.0.0.1:{port}", "round_robin", tmp_path / "lb", nginx_bin)
    try:
        yield lb
    finally:
        lb.stop(timeout=5)


def poll_until(reader: AccessLogReader, want: int, timeout: float = 5.0) -> int:
    """nginx writes a log line after the response went out, so the last lines can trail the client."""
    read = 0
    deadline = time.monotonic() + timeout
    while read < want and time.monotonic() < deadline:
        read += reader.poll()
        time.sleep(0.02)
    time.sleep(0.1)
    return read + reader.poll()


def test_stats_from_real_nginx_and_rotation(balancer: NginxBalancer, backends: list[str]) -> None:
    balancer.ensure_running(backends)
    for _ in range(40):
        with urllib.request.urlopen(balancer.url + "/x", timeout=5) as r:
            assert r.status == 200
    urllib.request.urlopen(balancer.url + "/_tierscale/healthz", timeout=5).read()  # not logged
    with AccessLogReader(balancer.access_log_path) as reader:
        assert poll_until(reader, 40) == 40
        now = time.time()
        stats = reader.stats(window=60, now=now)
        assert set(stats) == set(backends)
        for addr in backends:
            assert stats[addr].requests == 20
            assert stats[addr].rps == pytest.approx(20 / 60)
            assert stats[addr].p95_ms is not None and 0 <= stats[addr].p95_ms < 1000
            assert stats[addr].errors == 0
        totals = reader.totals(window=60, now=now)
        assert totals.requests == 40 and totals.errors == 0 and totals.p95_ms is not None

        # Rotate like logrotate: rename, tell nginx to reopen, keep reading without losing lines.
        os.rename(balancer.access_log_path, str(balancer.access_log_path) + ".1")
        urllib.request.urlopen(balancer.url + "/before-reopen", timeout=5).read()
        balancer.reopen_logs()
        deadline = time.monotonic() + 5
        while not balancer.access_log_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(5):
            urllib.request.urlopen(balancer.url + "/after-reopen", timeout=5).read()
        assert poll_until(reader, 6) == 6
        assert reader.totals(window=60).requests == 46
