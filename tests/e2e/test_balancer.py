"""NginxBalancer against a real nginx and real HTTP backends on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psutil
import pytest

from helpers.e2e import wait_for
from tierscale.balancer import BalancerError, NginxBalancer

# ---- tiny JSON backends ------------------------------------------------------------------------------


@dataclass
class Backend:
    server: ThreadingHTTPServer
    thread: threading.Thread
    started: threading.Event = field(default_factory=threading.Event)  # a /slow request began
    finished_at: list[float] = field(default_factory=list)  # monotonic end of each /slow request

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start_backend() -> Backend:
    holder: dict[str, Backend] = {}

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so that nginx's upstream keepalive really keeps connections open, as with real apps.
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            backend = holder["b"]
            url = urlparse(self.path)
            slow = url.path == "/slow"
            if slow:
                backend.started.set()
                time.sleep(float(parse_qs(url.query).get("sleep", ["1"])[0]))
            body = json.dumps({"instance": str(backend.port)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if slow:
                backend.finished_at.append(time.monotonic())

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    holder["b"] = backend = Backend(server, thread)
    thread.start()
    return backend


@pytest.fixture
def backend_factory() -> Iterator[Callable[[], Backend]]:
    started: list[Backend] = []

    def make() -> Backend:
        b = _start_backend()
        started.append(b)
        return b

    try:
        yield make
    finally:
        for b in started:
            b.server.shutdown()
            b.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def balancer_factory(nginx_bin: str, tmp_path: Path) -> Iterator[Callable[..., NginxBalancer]]:
    made: list[NginxBalancer] = []

    def make(
        algorithm: str = "round_robin", *, listen: str | None = None, prefix: Path | None = None
    ) -> NginxBalancer:
        b = NginxBalancer(
            group="web",
            listen=listen or f"127.0.0.1:{free_port()}",
            algorithm=algorithm,
            prefix=prefix or tmp_path / f"lb{len(made)}",
            nginx_bin=nginx_bin,
            shutdown_timeout=10,
        )
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            b.stop(timeout=5)


def get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def answers(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] == 200
    except OSError:  # refused, or no answer yet
        return False


def instances(url: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        status, _, body = get(url)
        assert status == 200
        seen[str(body["instance"])] += 1
    return seen


# ---- tests -----------------------------------------------------------------------------------------


def test_round_robin_reaches_every_backend(balancer_factory, backend_factory) -> None:
    backends = [backend_factory() for _ in range(3)]
    lb = balancer_factory()
    lb.ensure_running([b.address for b in backends])
    assert lb.is_running() and lb.pid is not None
    seen = instances(lb.url + "/", 30)
    assert seen == {str(b.port): 10 for b in backends}

    status, _, body = get(lb.url + "/_tierscale/healthz")
    assert status == 200 and body["status"] == "ok" and body["backends"] == 3


def test_render_is_canonical_and_least_conn_serves(balancer_factory, backend_factory) -> None:
    a, b = backend_factory(), backend_factory()
    lb = balancer_factory("least_conn")
    text = lb.render([b.address, a.address, a.address])
    assert text == lb.render([a.address, b.address])
    assert "least_conn;" in text
    assert "least_conn" not in balancer_factory("round_robin").render([a.address])
    with pytest.raises(ValueError):
        lb.render(["127.0.0.1:80; include /etc/passwd"])
    lb.ensure_running([a.address, b.address])
    assert set(instances(lb.url + "/", 10)) == {str(a.port), str(b.port)}


def test_zero_backends_answer_503_json_with_retry_after(balancer_factory) -> None:
    lb = balancer_factory()
    lb.ensure_running([])
    status, headers, body = get(lb.url + "/anything")
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert headers["Content-Type"] == "application/json"
    assert body["error"] == "no ready replicas"
    assert get(lb.url + "/_tierscale/healthz")[0] == 200


def test_apply_same_set_is_a_noop(balancer_factory, backend_factory) -> None:
    a, b = backend_factory(), backend_factory()
    lb = balancer_factory()
    lb.ensure_running([a.address, b.address])
    workers = {c.pid for c in psutil.Process(lb.pid).children()}
    result = lb.apply([b.address, a.address])
    assert (result.changed, result.ok, result.error) == (False, True, None)
    assert {c.pid for c in psutil.Process(lb.pid).children()} == workers


def test_added_backend_gets_traffic_after_reload(balancer_factory, backend_factory) -> None:
    a, b = backend_factory(), backend_factory()
    lb = balancer_factory()
    lb.ensure_running([a.address])
    pid = lb.pid
    assert set(instances(lb.url + "/", 4)) == {str(a.port)}
    result = lb.apply([a.address, b.address])
    assert result.changed and result.ok and result.old_workers
    assert lb.pid == pid  # reloaded, not restarted
    assert set(instances(lb.url + "/", 10)) == {str(a.port), str(b.port)}


def test_ten_reloads_under_continuous_traffic_lose_nothing(balancer_factory, backend_factory) -> None:
    a, b, c = backend_factory(), backend_factory(), backend_factory()
    lb = balancer_factory()
    lb.ensure_running([a.address, b.address])
    stop = threading.Event()
    results: list[int | str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                results.append(get(lb.url + "/", timeout=5)[0])
            except Exception as e:  # every kind of failure counts
                results.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            wanted = [a.address, b.address, c.address] if i % 2 == 0 else [a.address, c.address]
            result = lb.apply(wanted)
            assert result.changed and result.ok, result.error
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [r for r in results if r != 200]
    assert len(results) > 50
    assert failures == []


def test_rejected_configs_keep_the_last_good_one_serving(balancer_factory, backend_factory, tmp_path) -> None:
    a = backend_factory()
    lb = balancer_factory()
    lb.ensure_running([a.address])
    good = lb.conf_path.read_text()

    # A second balancer on a port another listener holds cannot start, and says why.
    other = balancer_factory(listen=lb.listen)
    with pytest.raises(BalancerError, match="Address already in use"):
        other.ensure_running([a.address])
    assert not other.is_running()

    # nginx -t rejects the config (unresolvable upstream host): nothing changes.
    result = lb.apply(["nonexistent.invalid:80"])
    assert (result.changed, result.ok) == (False, False)
    assert result.error and "host not found" in result.error
    assert lb.conf_path.read_text() == good
    assert set(instances(lb.url + "/", 3)) == {str(a.port)}

    # Same master, new listen port taken by a foreign listener: nginx -t would pass (it ignores
    # EADDRINUSE), the reload would fail inside nginx; apply reports it and nothing changes.
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        moved = balancer_factory(listen=f"127.0.0.1:{foreign.getsockname()[1]}", prefix=lb.prefix)
        result = moved.apply([a.address])
        assert (result.changed, result.ok) == (False, False)
        assert result.error and "Address already in use" in result.error
    assert lb.conf_path.read_text() == good
    assert set(instances(lb.url + "/", 3)) == {str(a.port)}
    # A later valid change still goes through.
    b = backend_factory()
    assert lb.apply([a.address, b.address]).ok


def test_master_survives_controller_sigkill_and_is_adopted(
    balancer_factory, backend_factory, nginx_bin
) -> None:
    a, b = backend_factory(), backend_factory()
    lb = balancer_factory()  # for its fixture cleanup (stop) and its settings
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tierscale.balancer import NginxBalancer\n"
        "lb = NginxBalancer('web', sys.argv[1], 'round_robin', Path(sys.argv[2]), sys.argv[3])\n"
        "lb.ensure_running([sys.argv[4]])\n"
        "print(lb.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    controller = subprocess.Popen(
        [sys.executable, "-c", script, lb.listen, str(lb.prefix), nginx_bin, a.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert controller.stdout is not None
        pid = int(controller.stdout.readline())
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait()
    assert psutil.pid_exists(pid)
    assert set(instances(lb.url + "/", 2)) == {str(a.port)}

    restarted = NginxBalancer("web", lb.listen, "round_robin", lb.prefix, nginx_bin)
    assert restarted.is_running() and restarted.pid == pid
    restarted.ensure_running([a.address, b.address])  # adopts and applies, no second master
    assert restarted.pid == pid
    assert set(instances(lb.url + "/", 10)) == {str(a.port), str(b.port)}

    # Even with the pid file gone, the master is found by its title and prefix, never started twice.
    lb.pid_path.unlink()
    again = NginxBalancer("web", lb.listen, "round_robin", lb.prefix, nginx_bin)
    again.ensure_running([a.address, b.address])
    assert again.pid == pid and lb.pid_path.read_text().strip() == str(pid)


def test_wait_drained_returns_after_in_flight_request_completes(balancer_factory, backend_factory) -> None:
    slow, fast = backend_factory(), backend_factory()
    lb = balancer_factory()
    lb.ensure_running([slow.address])
    response: list[tuple[int, dict[str, object]]] = []

    def client() -> None:
        # Slow enough that the reload below is done well before it ends, on a busy machine too.
        status, _, body = get(lb.url + "/slow?sleep=4", timeout=30)
        response.append((status, body))

    t = threading.Thread(target=client)
    t.start()
    try:
        assert slow.started.wait(20)
        result = lb.apply([fast.address])
        assert result.changed and result.ok
        assert lb.wait_drained(slow.address, timeout=0.1) is False  # still serving the slow request
        assert lb.wait_drained(slow.address, timeout=20) is True
        drained_at = time.monotonic()
        assert slow.finished_at and slow.finished_at[0] <= drained_at
    finally:
        t.join()
    assert response == [(200, {"instance": str(slow.port)})]
    assert set(instances(lb.url + "/", 3)) == {str(fast.port)}
    # The new worker keeps an idle keepalive connection to the remaining backend: not drained.
    assert lb.wait_drained(fast.address, timeout=0.2) is False


def test_stop_leaves_no_nginx_process(balancer_factory, backend_factory) -> None:
    a = backend_factory()
    lb = balancer_factory()
    lb.ensure_running([a.address])
    master = psutil.Process(lb.pid)
    procs = [master, *master.children()]
    lb.stop()
    assert not lb.is_running() and lb.pid is None
    assert not lb.pid_path.exists()
    for p in procs:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    ours = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(lb.prefix) in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert ours == []
    with pytest.raises(OSError):
        urllib.request.urlopen(lb.url + "/_tierscale/healthz", timeout=2)


def test_a_killed_master_is_replaced_beside_its_orphans_and_stop_reaps_every_worker(
    balancer_factory, backend_factory
) -> None:
    a = backend_factory()
    lb = balancer_factory()
    lb.ensure_running([a.address])
    master = psutil.Process(lb.pid)
    # ensure_running returns once the master is up; its worker may not be forked yet (on a busy machine
    # a master killed before then leaves no orphan to serve). Wait until a worker answers.
    wait_for(lambda: bool(master.children()) and answers(lb.url + "/"), 20, what="a worker serving")
    orphans = master.children()
    master.kill()
    master.wait(5)
    # The dead master's workers keep the port and keep serving the last config.
    assert {p.pid for p in lb.orphan_workers()} == {p.pid for p in orphans}
    assert get(lb.url + "/")[0] == 200
    lb.ensure_running([a.address])  # a new master binds beside them (reuseport); they are told to quit
    assert lb.is_running() and lb.pid != master.pid
    assert get(lb.url + "/")[0] == 200
    # And if the new master dies too, `stop` still leaves no worker of ours behind.
    psutil.Process(lb.pid).kill()
    lb.stop()
    assert lb.orphan_workers() == []
    with pytest.raises(OSError):
        urllib.request.urlopen(lb.url + "/_tierscale/healthz", timeout=2)
