"""The open-loop load generator against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tierscale.loadgen import (
    OVERLOAD,
    LoadResult,
    LoadRunner,
    format_result,
    main_load,
    parse_duration,
    percentile,
    run_load_sync,
)
from tierscale.workload import make_server


def _serve(srv: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def workload() -> Iterator[str]:
    yield from _serve(make_server("127.0.0.1", 0, "w-1"))


class _SlowHandler(BaseHTTPRequestHandler):
    """Answers every request after 500 ms of sleep: slow, but with unlimited concurrency."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(0.5)
        body = b'{"instance": "slow"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def slow() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    srv.daemon_threads = True
    yield from _serve(srv)


@pytest.fixture
def refused_url() -> Iterator[str]:
    # Bound but never listening: connects are refused, and holding the port stops anyone else
    # from taking it during the test.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/work"
    finally:
        sock.close()


def test_constant_rate_against_workload(workload: str) -> None:
    r = run_load_sync(workload + "/work?ms=1", 50, 2.0)
    assert r.sent == 100  # arrivals at 0, 20 ms, … 1980 ms
    assert r.ok == 100
    assert r.status == {200: 100}
    assert r.errors == {}
    assert r.failed == 0
    assert r.instances == {"w-1": 100}
    assert 48 <= r.achieved_rps <= 52
    assert 0 < r.latencies["p50"] <= r.latencies["p95"] <= r.latencies["p99"] <= r.latencies["max"]
    assert len(r.timeline) == 100
    offsets = [t for t, _, _ in r.timeline]
    assert offsets == sorted(offsets) and offsets[-1] < 2.0
    # Evenly spaced sends, not bursts: the gap between consecutive sends stays near 20 ms on average.
    assert 0.015 < (offsets[-1] - offsets[0]) / 99 < 0.025


def test_open_loop_keeps_rate_against_slow_server(slow: str) -> None:
    t0 = time.monotonic()
    r = run_load_sync(slow, 20, 2.0)
    # A closed-loop client would send one request per 500 ms per worker; open loop keeps 20/s.
    assert r.sent == 40
    assert r.ok == 40
    assert 19 <= r.achieved_rps <= 21
    assert r.latencies["p50"] >= 480
    assert r.instances == {"slow": 40}
    # Arrivals in the second half of the run were not delayed by the slow responses.
    assert sum(1 for t, _, _ in r.timeline if t >= 1.0) == 20
    assert time.monotonic() - t0 < 4.0  # ran ≈ 2 s + one response time, then stopped by itself


def test_over_max_in_flight_counts_overload(slow: str) -> None:
    r = run_load_sync(slow, 20, 1.0, max_in_flight=2)
    assert r.sent == 20
    assert r.errors.get(OVERLOAD, 0) >= 10
    assert r.ok >= 2
    assert r.ok + r.errors[OVERLOAD] == r.sent  # nothing silently dropped
    assert r.failed == r.errors[OVERLOAD]


def test_connection_refused_counts_errors(refused_url: str) -> None:
    r = run_load_sync(refused_url, 20, 0.5, timeout=2.0)
    assert r.sent == 10
    assert r.ok == 0
    assert r.status == {}
    assert sum(r.errors.values()) == 10
    assert all("Connect" in name for name in r.errors), r.errors
    # Both spellings callers use: the count as an attribute and as a call.
    assert r.failed == 10 and r.failed() == 10 and f"{r.failed}" == "10"
    assert [s for _, s, _ in r.timeline] == [0] * 10
    assert r.latencies["max"] == 0.0  # no responses, no latency samples


def test_http_errors_are_failures(workload: str) -> None:
    r = run_load_sync(workload + "/work?ms=oops", 20, 0.5)
    assert r.sent == 10
    assert r.status == {400: 10}
    assert r.ok == 0
    assert r.failed == 10
    assert r.instances == {}  # only 2xx bodies name instances


def test_rate_function_step(workload: str) -> None:
    r = run_load_sync(workload + "/work?ms=1", lambda t: 20.0 if t < 1.0 else 60.0, 2.0)
    first = sum(1 for t, _, _ in r.timeline if t < 1.0)
    second = sum(1 for t, _, _ in r.timeline if t >= 1.0)
    assert 19 <= first <= 21
    assert 58 <= second <= 62
    assert r.sent == first + second == r.ok


def test_rate_zero_phase_sends_nothing(workload: str) -> None:
    r = run_load_sync(workload + "/healthz", lambda t: 0.0 if t < 0.5 else 20.0, 1.0)
    assert 9 <= r.sent <= 11
    assert min(t for t, _, _ in r.timeline) >= 0.45
    assert r.failed == 0


def test_load_runner_stops_early(workload: str) -> None:
    runner = LoadRunner(workload + "/work?ms=1", 50, 30.0).start()
    time.sleep(0.6)
    assert runner.running()
    t0 = time.monotonic()
    runner.stop()
    r = runner.result(timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert not runner.running()
    assert 20 <= r.sent <= 50  # ≈ 0.6 s x 50/s, nowhere near 30 s worth
    assert r.ok == r.sent
    assert r.send_duration < 2.0
    assert 40 <= r.achieved_rps <= 60


def test_load_runner_context_manager(workload: str) -> None:
    with LoadRunner(workload + "/healthz", 40, 30.0) as runner:
        time.sleep(0.3)
    r = runner.result(timeout=1)
    assert 5 <= r.sent <= 30
    assert r.failed == 0


def test_to_json_round_trip(workload: str) -> None:
    r = run_load_sync(workload + "/work?ms=1", 20, 0.5)
    assert r.sent == 10
    back = LoadResult.from_json(r.to_json())
    assert back == r
    assert isinstance(back.timeline[0], tuple)
    assert set(back.status) == {200}  # int keys again, not "200"
    data = json.loads(r.to_json(timeline=False))
    assert "timeline" not in data
    assert data["sent"] == 10 and data["failed"] == 0 and data["instances"] == {"w-1": 10}


def test_format_result(workload: str) -> None:
    r = run_load_sync(workload + "/work?ms=1", 20, 0.5)
    text = format_result(r)
    assert "sent        10" in text
    assert "failed      0" in text
    assert "200: 10" in text
    assert "w-1: 10" in text
    assert "p95" in text and "p99" in text


def test_main_load_ok(workload: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_load(workload, 20, "500ms", "/work?ms=1", False, 5.0) == 0
    out = capsys.readouterr()
    assert "sent        10" in out.out
    assert "w-1: 10" in out.out
    assert out.err == ""


def test_main_load_json(workload: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_load(workload, "20", "0.5", "/work?ms=1", True, "5s") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sent"] == 10 and data["ok"] == 10
    assert data["url"].endswith("/work?ms=1")


def test_main_load_failures_exit_1(refused_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_load(refused_url, 20, "0.3s", None, False, 2.0) == 1
    assert "failed      6" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "rps", "duration", "path", "timeout", "names"),
    [
        ("http://127.0.0.1:1", 0, "1s", None, 10.0, "--rps"),
        ("http://127.0.0.1:1", -5, "1s", None, 10.0, "--rps"),
        ("http://127.0.0.1:1", "abc", "1s", None, 10.0, "--rps"),
        ("http://127.0.0.1:1", float("nan"), "1s", None, 10.0, "--rps"),
        ("http://127.0.0.1:1", 10, "abc", None, 10.0, "--duration"),
        ("http://127.0.0.1:1", 10, "5x", None, 10.0, "--duration"),
        ("http://127.0.0.1:1", 10, "0s", None, 10.0, "--duration"),
        ("http://127.0.0.1:1", 10, "1s", None, 0, "--timeout"),
        ("http://127.0.0.1:1", 10, "1s", "work", 10.0, "--path"),
        ("ftp://127.0.0.1/x", 10, "1s", None, 10.0, "URL"),
        ("127.0.0.1:8080", 10, "1s", None, 10.0, "URL"),
        ("http://127.0.0.1:99999", 10, "1s", None, 10.0, "URL"),
    ],
)
def test_bad_input_exit_2(
    url: str,
    rps: object,
    duration: str,
    path: str | None,
    timeout: float,
    names: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = time.monotonic()
    assert main_load(url, rps, duration, path, False, timeout) == 2  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert names in lines[0]
    assert "Traceback" not in out.err
    assert time.monotonic() - t0 < 0.5  # rejected up front, nothing was sent


def test_path_is_appended_to_url(workload: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_load(workload + "/", 20, "0.1", "/work?ms=1", True, 5.0) == 0
    assert json.loads(capsys.readouterr().out)["url"] == workload + "/work?ms=1"


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1.5") == 1.5
    assert parse_duration(" 7 ") == 7.0
    assert parse_duration(3) == 3.0
    for bad in ("", "abc", "5x", "-1", "s", "1s2", "inf", "nan", "1 m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_percentile() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    assert percentile([], 99) == 0.0
