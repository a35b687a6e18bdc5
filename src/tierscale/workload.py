"""The demo workload (SPEC §6): one tiny HTTP service used by every tier.

    python -m tierscale.workload --port 8080 [--host 127.0.0.1] [--instance ID]

``GET /work?ms=N`` burns N ms of CPU and answers ``{"instance": "...", "ms": N}``; ``GET /healthz``
answers 200 ``ok``; any other path is 404, a bad ``ms`` is 400.

``POST /work?ms=N`` reads the body (Content-Length required, else 411; at most 1 MiB, else 413), burns
the same N ms and answers the GET fields plus ``"method": "POST"``, ``"bytes"`` (the body's length) and
``"fnv1a"`` (its 64-bit FNV-1a hash, 16 lowercase hex digits), so a client can check that its upload
arrived intact. POST on ``/healthz`` is 405. images/workload/workload.c answers byte for byte the same.

``GET /metrics`` answers the Prometheus text format (0.0.4), so a Prometheus has something real to scrape
and to scale on: ``tierscale_demo_requests_total{code,path}`` (every response, ``path`` one of
``/work``, ``/healthz``, ``/metrics``, ``other``), ``tierscale_demo_requests_in_flight`` and
``tierscale_demo_work_cpu_seconds_total`` (the CPU ``/work`` was asked to burn). POST on it is 405.
The C workload has no ``/metrics`` yet (404).

Standard library only and no syntax newer than Python 3.7 (with the ``__future__`` import), because this
single file is also copied as-is into the demo container and VM images, whose Python may be old.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_MS = 10_000  # one request can never pin a core for more than 10 s
MAX_BODY = 1 << 20  # POST bodies are demo payloads; a bigger one is refused (413) before it is read
LINGER_SECONDS = 1.0  # how long a refused request's unread body is drained before the close
FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_READ_CHUNK = 65536
# `path` label values: a fixed set, so a client cannot grow the series without bound with made-up paths.
ROUTES = ("/work", "/healthz", "/metrics")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DRAIN_SECONDS = 5.0  # how long SIGTERM waits for in-flight requests
_POLL_INTERVAL = 0.1  # serve_forever's shutdown latency; the default 0.5 s delays SIGTERM handling


def burn_cpu(ms: float) -> None:
    """Spin until this thread has consumed `ms` of CPU time.

    Measured with the thread's CPU clock, not wall time: under contention (other replicas, the GIL, a
    busy host) the request takes longer instead of costing less, so N ms of work really is N ms of CPU
    and the autoscaler's CPU metric tracks the offered load.
    """
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        # A little arithmetic per clock read so the loop is mostly work, not clock syscalls.
        for i in range(200):
            x += i


def fnv1a_64(data: bytes, h: int = FNV64_OFFSET) -> int:
    """64-bit FNV-1a of `data`, continuing from `h` (so a body can be hashed chunk by chunk).

    Pure Python costs ~60 ms per MiB; that is extra CPU on top of ``ms``, but bodies are capped at 1 MiB
    and the standard library has no FNV (hashlib's digests would not match the C workload's).
    """
    for byte in data:
        h = ((h ^ byte) * FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


class WorkloadServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must never keep the process alive
    request_queue_size = 1024  # listen backlog; the default 5 drops SYNs under a load burst

    def __init__(self, addr: tuple[str, int], instance: str | None, max_ms: int = MAX_MS) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6  # --host :: or ::1 (images with IPv6-only networks)
        super().__init__(addr, WorkloadHandler)
        self.instance = instance or default_instance(self.server_address[1])
        self.max_ms = max_ms
        self.draining = False
        # In-flight requests, counted per request (not per connection) so idle keep-alive
        # connections do not hold up a graceful stop.
        self._inflight = 0
        self._cond = threading.Condition()
        self._stats_lock = threading.Lock()
        # Present at 0 from the start: Prometheus' rate() cannot see a counter's first increment, so
        # a series born at 1 would lose the first request of a scale-out signal.
        self._requests: dict[tuple[str, str], int] = {("200", "/work"): 0}
        self._work_cpu_seconds = 0.0

    def count_response(self, code: int, path: str) -> None:
        route = path if path in ROUTES else "other"
        with self._stats_lock:
            key = (str(code), route)
            self._requests[key] = self._requests.get(key, 0) + 1

    def count_work(self, ms: int) -> None:
        with self._stats_lock:
            self._work_cpu_seconds += ms / 1000.0

    def metrics_text(self) -> str:
        """The exposition, in the Prometheus text format; series sorted so scrapes are stable."""
        with self._stats_lock:
            requests = sorted(self._requests.items())
            cpu = self._work_cpu_seconds
        lines = [
            "# HELP tierscale_demo_requests_total Responses sent, by status code and route.",
            "# TYPE tierscale_demo_requests_total counter",
        ]
        # Label values are a status code and one of ROUTES or "other": nothing that needs escaping.
        lines += [f'tierscale_demo_requests_total{{code="{c}",path="{p}"}} {n}' for (c, p), n in requests]
        lines += [
            "# HELP tierscale_demo_requests_in_flight Requests being served, this scrape included.",
            "# TYPE tierscale_demo_requests_in_flight gauge",
            f"tierscale_demo_requests_in_flight {self.inflight()}",
            "# HELP tierscale_demo_work_cpu_seconds_total CPU time /work requests asked to burn.",
            "# TYPE tierscale_demo_work_cpu_seconds_total counter",
            f"tierscale_demo_work_cpu_seconds_total {cpu!r}",
        ]
        return "\n".join(lines) + "\n"

    def request_started(self) -> None:
        with self._cond:
            self._inflight += 1

    def request_finished(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def inflight(self) -> int:
        with self._cond:
            return self._inflight

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-response (load generator timeout, curl ^C) is normal here;
        # anything else still deserves the default traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class WorkloadHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length
    server: WorkloadServer
    server_version = "tierscale-workload/1"
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's delayed
    # ACK and every response gains ~40 ms, which would swamp the latencies the autoscaler watches.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would dominate the cost of a 1 ms request

    _counted = False

    def handle_one_request(self) -> None:
        self._counted = False
        # The handler lives as long as the connection: a request line too long or malformed to parse
        # must not be counted under the previous request's path.
        self.path = ""
        try:
            super().handle_one_request()
        finally:
            if self._counted:
                self.server.request_finished()

    def parse_request(self) -> bool:
        # Count the request as in flight from the moment its request line arrived (not from
        # do_GET), so a SIGTERM landing while headers are parsed still waits for it.
        self.server.request_started()
        self._counted = True
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        # Every final response passes here, the library's own errors (400, 414, 501) included; the
        # 100 Continue interim answer does not (send_response_only), so it is not a request of its own.
        self.server.count_response(int(code), urlsplit(self.path).path)
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._discard_body()
        self._route()

    def do_POST(self) -> None:
        length = self._post_length()
        if length is None:
            return  # refused, and the connection is closing
        size, digest = 0, FNV64_OFFSET
        # Hashed chunk by chunk as it arrives; the whole body is consumed whatever the path, so the
        # next request on this keep-alive connection starts at the right byte.
        while size < length:
            chunk = self.rfile.read(min(_READ_CHUNK, length - size))
            if not chunk:
                self.close_connection = True  # the client hung up mid-body: nobody to answer
                return
            size += len(chunk)
            digest = fnv1a_64(chunk, digest)
        parts = urlsplit(self.path)
        if parts.path == "/work":
            self._work(parts.query, {"method": "POST", "bytes": size, "fnv1a": f"{digest:016x}"})
        elif parts.path in ("/healthz", "/metrics"):
            self._send_json(405, {"error": "method not allowed", "method": "POST"}, headers={"Allow": "GET"})
        else:
            self._send_json(404, {"error": "not found", "path": parts.path})

    def handle_expect_100(self) -> bool:
        # Refuse a bad POST before the client uploads its body, instead of inviting it with 100 Continue.
        if self.command == "POST" and self._post_length() is None:
            return False
        return super().handle_expect_100()

    def _post_length(self) -> int | None:
        """The POST body's length, or None after refusing the request with 411/400/413.

        A refusal closes the connection: the body's framing is unknown (no or a bad Content-Length,
        chunked) or the body is not going to be read, so the stream cannot be resynchronised.
        """
        values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if not values or self.headers.get("Transfer-Encoding") is not None:
            self._refuse(411, {"error": "Content-Length required"})
            return None
        raw = values[0]
        # ASCII digits only: int() would also take "+5", " 5" or "٥", which a proxy would frame differently.
        if not (raw.isascii() and raw.isdigit()) or any(v != raw for v in values[1:]):
            self._refuse(400, {"error": "bad Content-Length"})
            return None
        digits = raw.lstrip("0")
        # More than 8 digits is over 1 MiB anyway, and int() of a huge digit string is itself costly.
        if len(digits) > 8 or int(digits or "0") > MAX_BODY:
            self._refuse(413, {"error": "body too large", "max_bytes": MAX_BODY})
            return None
        return int(digits or "0")

    def _refuse(self, status: int, obj: dict[str, object]) -> None:
        self._send_json(status, obj, close=True)
        self._linger()

    def _linger(self) -> None:
        # Closing a socket with unread bytes makes the kernel send RST, which can destroy the error
        # response before the client reads it; so half-close and drain what the client still sends.
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                if not self.connection.recv(_READ_CHUNK):
                    break
        except OSError:  # includes the timeout
            pass

    def _discard_body(self) -> None:
        # A GET with a body would otherwise leave bytes that get parsed as the next request.
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(int(length))

    def _route(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/healthz":
            self._send(200, b"ok", "text/plain; charset=utf-8")
        elif parts.path == "/work":
            self._work(parts.query)
        elif parts.path == "/metrics":
            self._send(200, self.server.metrics_text().encode(), METRICS_CONTENT_TYPE)
        else:
            self._send_json(404, {"error": "not found", "path": parts.path})

    def _work(self, query: str, extra: dict[str, object] | None = None) -> None:
        values = parse_qs(query, keep_blank_values=True).get("ms", ["0"])
        raw = values[-1]
        try:
            ms = int(raw)
        except ValueError:
            ms = -1
        if ms < 0:
            self._send_json(400, {"error": "ms must be a non-negative integer", "ms": raw})
            return
        ms = min(ms, self.server.max_ms)
        burn_cpu(ms)
        self.server.count_work(ms)
        self._send_json(200, {"instance": self.server.instance, "ms": ms, **(extra or {})})

    def _send_json(
        self,
        status: int,
        obj: dict[str, object],
        *,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send(status, json.dumps(obj).encode() + b"\n", "application/json", close=close, headers=headers)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close or self.server.draining:
            # A stopping replica tells keep-alive clients to go elsewhere; a refused POST (`close`)
            # leaves the stream at an unknown position, so nothing more can be read from it.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def default_instance(port: int) -> str:
    return os.environ.get("TIERSCALE_REPLICA") or f"{socket.gethostname()}:{port}"


def make_server(host: str, port: int, instance: str | None = None, *, max_ms: int = MAX_MS) -> WorkloadServer:
    """Bind (port 0 picks a free port; read it from `server.server_address`) without serving yet."""
    return WorkloadServer((host, port), instance, max_ms=max_ms)


def serve(server: WorkloadServer, drain_seconds: float = DRAIN_SECONDS) -> int:
    """Serve until SIGTERM/SIGINT, then stop accepting, let in-flight requests finish, return 0."""

    def on_signal(signum: int, frame: object) -> None:
        if server.draining:
            return
        server.draining = True
        # shutdown() blocks until serve_forever returns, and serve_forever runs in this very
        # thread (the handler interrupts it), so it has to be called from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever(poll_interval=_POLL_INTERVAL)
    # Closing the listening socket makes new connections fail fast (refused) so the balancer
    # retries another replica, while accepted requests keep running in their threads.
    server.server_close()
    server.wait_idle(drain_seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierscale.workload", description="demo workload")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--instance", default=None, help="id in responses (default: $TIERSCALE_REPLICA, else host:port)"
    )
    args = parser.parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.instance)
    except OSError as exc:
        print(f"tierscale-workload: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    # One startup line; the actual port matters when --port 0 was asked for.
    print(
        f"tierscale-workload listening on http://{host}:{port} instance={server.instance}",
        file=sys.stderr,
        flush=True,
    )
    return serve(server)


if __name__ == "__main__":
    sys.exit(main())
