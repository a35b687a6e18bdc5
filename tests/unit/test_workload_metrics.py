"""The demo workload's /metrics over real HTTP on 127.0.0.1: what a user's Prometheus scrapes from it."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierscale.workload import METRICS_CONTENT_TYPE, WorkloadServer, make_server


@pytest.fixture
def server() -> Iterator[WorkloadServer]:
    srv = make_server("127.0.0.1", 0, "m-1", max_ms=5000)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(srv: WorkloadServer, path: str, method: str = "GET") -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def scrape(srv: WorkloadServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, parsed by prometheus_client's own parser, so a
    malformed exposition fails here the way it would fail a real scrape."""
    status, body, ctype = request(srv, "/metrics")
    assert status == 200
    assert ctype == METRICS_CONTENT_TYPE
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests_total(samples: dict, code: str, path: str) -> float | None:
    return samples.get(("tierscale_demo_requests_total", (("code", code), ("path", path))))


def test_the_work_counter_exists_at_zero_and_counts_each_request(server: WorkloadServer) -> None:
    first = scrape(server)
    # Present before the first request: rate() in Prometheus needs the 0 to see the first increment.
    assert requests_total(first, "200", "/work") == 0
    for _ in range(5):
        assert request(server, "/work?ms=1")[0] == 200
    after = scrape(server)
    assert requests_total(after, "200", "/work") == 5
    # The first scrape itself is counted, under its own route, not as work.
    assert requests_total(after, "200", "/metrics") == 1


def test_codes_and_routes_are_labelled_and_unknown_paths_share_one_series(server: WorkloadServer) -> None:
    assert request(server, "/healthz")[0] == 200
    assert request(server, "/work?ms=bad")[0] == 400
    for path in ("/nope", "/a/b", "/metrics/x", "/x?y=1"):
        assert request(server, path)[0] == 404
    assert request(server, "/metrics", method="POST")[0] == 405
    assert request(server, "/work?ms=1", method="DELETE")[0] == 501  # the library's own error
    samples = scrape(server)
    assert requests_total(samples, "200", "/healthz") == 1
    assert requests_total(samples, "400", "/work") == 1
    assert requests_total(samples, "404", "other") == 4
    assert requests_total(samples, "405", "/metrics") == 1
    assert requests_total(samples, "501", "/work") == 1
    paths = {dict(labels)["path"] for name, labels in samples if name == "tierscale_demo_requests_total"}
    assert paths <= {"/work", "/healthz", "/metrics", "other"}, paths


def test_a_malformed_request_line_is_counted_as_other_not_as_the_previous_path(
    server: WorkloadServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        # One keep-alive connection: a good /work request, then garbage on the same handler.
        sock.sendall(b"GET /work?ms=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b'"ms": 0}' not in got:
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        # Four words: rejected (400) after the version is parsed, before the path is taken from it.
        sock.sendall(b"GET /healthz extra HTTP/1.1\r\n\r\n")
        rest = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 400"), rest
    samples = scrape(server)
    assert requests_total(samples, "400", "other") == 1
    assert requests_total(samples, "400", "/work") is None
    assert requests_total(samples, "400", "/healthz") is None


def test_in_flight_gauge_counts_a_running_request(server: WorkloadServer) -> None:
    assert scrape(server)[("tierscale_demo_requests_in_flight", ())] == 1  # the scrape itself
    done = threading.Event()

    def slow() -> None:
        request(server, "/work?ms=1500")
        done.set()

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    seen = 0.0
    while not done.is_set() and time.monotonic() < deadline:
        seen = scrape(server)[("tierscale_demo_requests_in_flight", ())]
        if seen == 2:
            break
        time.sleep(0.02)
    assert seen == 2, "the slow request never showed as in flight"
    thread.join(15)
    assert done.is_set()
    assert scrape(server)[("tierscale_demo_requests_in_flight", ())] == 1


def test_work_cpu_seconds_add_up_the_ms_asked_for(server: WorkloadServer) -> None:
    for ms in (30, 20):
        assert request(server, f"/work?ms={ms}")[0] == 200
    cpu = scrape(server)[("tierscale_demo_work_cpu_seconds_total", ())]
    assert cpu == pytest.approx(0.05)
