"""AccessLogReader: synthetic log files for the edge cases, a real nginx for the format it really writes."""

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

NOW = 1_800_000_000.0


def line(
    ts: float,
    upstream: str = "127.0.0.1:9001",
    status: int = 200,
    upstream_status: str = "200",
    upstream_time: str = "0.010",
    request_time: str = "0.011",
) -> str:
    return (
        json.dumps(
            {
                "msec": f"{ts:.3f}",
                "status": str(status),
                "request_time": request_time,
                "upstream_addr": upstream,
                "upstream_status": upstream_status,
                "upstream_response_time": upstream_time,
                "request_uri": "/",
            }
        )
        + "\n"
    )


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_per_upstream_rps_p95_errors(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    # 100 requests to 9001 with 1..100 ms, 10 to 9002 of which 2 failed, 1 answered by nginx itself.
    text = "".join(line(NOW - 5 + i / 100, upstream_time=f"{(i + 1) / 1000:.3f}") for i in range(100))
    text += "".join(
        line(NOW - 1, "127.0.0.1:9002", 502 if i < 2 else 200, "502" if i < 2 else "200") for i in range(10)
    )
    text += line(NOW - 1, "", 503, "", "", "0.000")
    append(log, text)
    with AccessLogReader(log) as reader:
        assert reader.poll(now=NOW) == 111
        stats = reader.stats(window=10, now=NOW)
        assert set(stats) == {"127.0.0.1:9001", "127.0.0.1:9002"}
        s1 = stats["127.0.0.1:9001"]
        assert (s1.requests, s1.rps, s1.p95_ms, s1.errors, s1.retries) == (100, 10.0, 95.0, 0, 0)
        s2 = stats["127.0.0.1:9002"]
        assert (s2.requests, s2.errors) == (10, 2)
        totals = reader.totals(window=10, now=NOW)
        assert (totals.requests, totals.errors) == (111, 3)
        assert totals.rps == pytest.approx(11.1)
        # A narrower window only sees the last second.
        assert reader.totals(window=2, now=NOW).requests == 11


def test_retry_is_attributed_to_last_upstream(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(
        log,
        line(
            NOW,
            "127.0.0.1:9001, 127.0.0.1:9002",
            200,
            "502, 200",
            "0.001, 0.020",
        ),
    )
    # All servers down: nginx names the upstream group; no replica gets the request.
    append(log, line(NOW, "127.0.0.1:9001, tierscale_backends", 502, "502, 502", "0.001, 0.000"))
    with AccessLogReader(log) as reader:
        reader.poll(now=NOW)
        stats = reader.stats(window=10, now=NOW)
    assert stats["127.0.0.1:9002"].requests == 1
    assert stats["127.0.0.1:9002"].retries == 1
    assert stats["127.0.0.1:9002"].p95_ms == pytest.approx(20.0)
    assert stats["127.0.0.1:9001"].requests == 1  # the second request's last real attempt
    assert stats["127.0.0.1:9001"].errors == 2  # failed attempts count against the replica that failed
    assert "tierscale_backends" not in stats


def test_partial_and_garbage_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    full = line(NOW)
    append(log, "not json\n" + "\x00\xff{\n" + '{"msec": "x"}\n' + full + full[:20])
    with AccessLogReader(log) as reader:
        assert reader.poll(now=NOW) == 1
        assert reader.skipped == 3
        append(log, full[20:])  # nginx finishes the line
        assert reader.poll(now=NOW) == 1
        assert reader.poll(now=NOW) == 0
        assert reader.totals(60, now=NOW).requests == 2


def test_truncation_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(log, line(NOW) * 5)
    with AccessLogReader(log) as reader:
        assert reader.poll(now=NOW) == 5
        # Truncated in place, then new lines: read from the start.
        with open(log, "w") as f:
            f.write(line(NOW) * 2)
        assert reader.poll(now=NOW) == 2
        # Rotation: lines written to the old file before the rename are still read, then the new file.
        append(log, line(NOW) * 3)
        os.rename(log, tmp_path / "access.log.1")
        assert reader.poll(now=NOW) == 3  # path missing: drain the old file, keep it open
        append(tmp_path / "access.log.1", line(NOW))  # writer not reopened yet
        append(log, line(NOW) * 4)
        assert reader.poll(now=NOW) == 5
        assert reader.totals(60, now=NOW).requests == 5 + 2 + 3 + 1 + 4


def test_memory_is_bounded_by_window(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(log, "".join(line(NOW - 299 + i) for i in range(300)))  # one request a second
    with AccessLogReader(log, retention=120) as reader:
        reader.poll(now=NOW)
        assert reader.sample_count == 121  # NOW-120 .. NOW
        assert reader.totals(60, now=NOW).requests == 60
        # Asking for a larger window raises retention; older samples still go.
        reader.stats(200, now=NOW)
        append(log, "".join(line(NOW + 1 + i) for i in range(100)))
        reader.poll(now=NOW + 100)
        assert reader.sample_count == 201  # NOW-100 .. NOW+100
    with AccessLogReader(log, max_samples=50) as capped:
        capped.poll(now=NOW + 100)
        assert capped.sample_count == 50


# ---- the real thing ------------------------------------------------------------------------------------


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
