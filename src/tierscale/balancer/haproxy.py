"""tierscale's own HAProxy per group: membership changes through the Runtime API, without a reload.

nginx applies a new backend set by reloading (new workers, the old ones draining); with scaling every
few seconds plus rollouts that is a reload storm. HAProxy 2.6 changes servers at run time: the backend
is a row of `server-template` slots, parked in maintenance; a replica takes a free slot (`set server …
addr … port …`, `state ready`), leaves it by `state drain` (in-flight requests finish, no new ones) and
the slot is parked again once its sessions are gone. A reload happens only when the slots run out (the
row doubles), and the server-state file carries every slot's address and state across it.

The per-request log (JSON lines on HAProxy's stdout, into `access.log`) feeds the same AccessLogReader
as nginx's, so `requests_per_replica` and `latency_p95_ms` work unchanged. A running HAProxy of ours is
adopted after a controller restart: its slots are read back from the Runtime API.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from tierscale.balancer.accesslog import AccessLogReader
from tierscale.balancer.base import ApplyResult, BalancerError
from tierscale.balancer.haproxy_runtime import HAProxyRuntimeError, RuntimeAPI, ServerRow
from tierscale.balancer.nginx import parse_address
from tierscale.private_dirs import make_private_dir

# tierscale's names → HAProxy's `balance` keywords. ip_hash is nginx's name for what HAProxy calls source.
HAPROXY_ALGORITHMS = {
    "round_robin": "roundrobin",
    "least_conn": "leastconn",
    "ip_hash": "source",
    "random": "random",
    "first": "first",
}
BACKEND = "replicas"
HOLD_BACKEND, HOLD = "holding", "hold"
MIN_SLOTS = 16
PACKAGE_HINT = "install Debian's haproxy package (apt-get install haproxy)"
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin")

# Fields named as nginx's where they mean the same (AccessLogReader reads both); times in ms as numbers.
_LOG_FORMAT = (
    '{"msec":"%Ts.%ms","status":%ST,"server_ip":"%si","server_port":"%sp",'
    '"upstream_response_ms":%Tr,"request_ms":%Ta,"retries":"%rc"}'
)


class HAProxyBalancer:
    """Lifecycle, slots and drains of the HAProxy master of one group."""

    def __init__(
        self,
        group: str,
        listen: str,
        algorithm: str,
        prefix: Path,
        haproxy_bin: str = "haproxy",
        *,
        shutdown_timeout: float = 120.0,
        start_timeout: float = 15.0,
    ) -> None:
        if algorithm not in HAPROXY_ALGORITHMS:
            raise ValueError(f"haproxy supports {', '.join(HAPROXY_ALGORITHMS)} (got {algorithm!r})")
        self.group = group
        self.listen = listen
        self._listen_host, self._listen_port = parse_address(listen)
        self.algorithm = algorithm
        self.prefix = Path(os.path.abspath(prefix))
        self.haproxy_bin = haproxy_bin
        self.shutdown_timeout = shutdown_timeout
        self.start_timeout = start_timeout
        self.runtime = RuntimeAPI(_socket_path(self.prefix))
        self.slots = MIN_SLOTS
        self.hold_address: str | None = None
        self.hold_timeout = 30.0
        self._proc: subprocess.Popen[bytes] | None = None  # when we started it: reaped by poll()
        self._lock = threading.RLock()

    # ---- paths and properties -------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.prefix / "haproxy.cfg"

    @property
    def pid_path(self) -> Path:
        return self.prefix / "haproxy.pid"

    @property
    def access_log_path(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "haproxy.log"

    @property
    def state_path(self) -> Path:
        return self.prefix / "server-state"

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def traffic_log(self) -> AccessLogReader:
        return AccessLogReader(self.access_log_path)

    def hold_at(self, address: str | None, timeout: float = 30.0) -> None:
        """The holder is the one server of a backend of its own, which the frontend uses only while no
        replica slot is in service: exactly "no ready replica". Takes effect with the next
        ensure_running/apply."""
        if address is not None:
            parse_address(address)
        self.hold_address, self.hold_timeout = address, timeout

    # ---- rendering ------------------------------------------------------------------------------
    def render(self, slots: int) -> str:
        hold_timeout = max(60, round(self.hold_timeout + 60))
        return f"""\
# Written by tierscale for group {self.group}; membership changes go through the Runtime API.
global
    stats socket {self.runtime.path} mode 600 level admin
    server-state-file {self.state_path}
    log stdout format raw local0 info
    hard-stop-after {max(1, round(self.shutdown_timeout))}s

defaults
    mode http
    log global
    log-format '{_LOG_FORMAT}'
    load-server-state-from-file global
    option forwardfor
    option redispatch 1
    # A replica that is gone or refusing is skipped fast, and a request is tried on another one.
    retries 2
    retry-on conn-failure empty-response
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 30s

frontend tierscale_{self.group}
    bind {self.listen}
    http-request set-header X-Forwarded-Proto http
    use_backend {HOLD_BACKEND} if {{ nbsrv({BACKEND}) eq 0 }} {{ nbsrv({HOLD_BACKEND}) gt 0 }}
    default_backend {BACKEND}

backend {BACKEND}
    # Traffic is logged by the frontend; the backend would log every slot's state change in between.
    no log
    balance {HAPROXY_ALGORITHMS[self.algorithm]}
    http-error status 503 content-type application/json string "{_empty_body(self.group)}" hdr Retry-After 1
    server-template s 1-{slots} 127.0.0.1:1 disabled

# scale_to_zero: the controller's holder relays each request to a replica once one is ready and reads
# its answer to the end, so it gets one request per connection, closed after the answer.
backend {HOLD_BACKEND}
    no log
    option http-server-close
    http-request set-header Connection close
    timeout server {hold_timeout}s
    server {HOLD} 127.0.0.1:1 disabled
"""

    # ---- lifecycle ------------------------------------------------------------------------------
    def ensure_running(self, backends: Sequence[str]) -> None:
        """Adopt our running HAProxy (and apply `backends`) or write the config and start one."""
        with self._lock:
            make_private_dir(self.prefix)
            if not self.is_running():
                self.slots = _slots_for(len(set(backends)))
                self._write_checked(self.render(self.slots))
                self._check_bindable()
                self._start()
            result = self.apply(backends)
            if not result.ok:
                raise BalancerError(result.error or "haproxy did not take the servers")

    def apply(self, backends: Sequence[str]) -> ApplyResult:
        """Give every wanted address a slot in service, drain the ones no longer wanted. A refused
        command leaves the rest as it was: HAProxy keeps serving the last good set."""
        with self._lock:
            if not self.is_running():
                try:
                    self.ensure_running(backends)
                except (BalancerError, OSError) as e:
                    return ApplyResult(changed=False, ok=False, error=str(e))
                return ApplyResult(changed=True, ok=True)
            try:
                wanted = {_resolved(b) for b in backends}
                rows = self._rows()
                if len(wanted) > len(rows):
                    self._grow(len(wanted))
                    rows = self._rows()
                changed = self._converge(rows, wanted)
                changed |= self._apply_hold()
            except (HAProxyRuntimeError, BalancerError, ValueError, OSError) as e:
                return ApplyResult(changed=False, ok=False, error=str(e))
            return ApplyResult(changed=changed, ok=True)

    def _converge(self, rows: list[ServerRow], wanted: set[tuple[str, int]]) -> bool:
        changed = False
        placed: set[tuple[str, int]] = set()
        free: list[ServerRow] = []
        for row in rows:
            addr = _row_address(row)
            if row.status == "MAINT":
                free.append(row)
            elif addr in wanted and addr not in placed:
                placed.add(addr)
                if row.status == "DRAIN":  # wanted again before it was parked
                    self.runtime.set_server(BACKEND, row.name, state="ready")
                    changed = True
            elif row.status != "DRAIN":
                self.runtime.set_server(BACKEND, row.name, state="drain")
                changed = True
            elif row.sessions == 0:
                self.runtime.set_server(BACKEND, row.name, state="maint")  # drained: the slot is free
                free.append(row)
                changed = True
        for addr in sorted(wanted - placed):
            slot = free.pop(0)
            self.runtime.set_server(BACKEND, slot.name, address=addr, state="ready")
            changed = True
        return changed

    def _apply_hold(self) -> bool:
        (row,) = self.runtime.servers(HOLD_BACKEND)
        if self.hold_address is None:
            if row.status == "MAINT":
                return False
            self.runtime.set_server(HOLD_BACKEND, HOLD, state="maint")
            return True
        addr = _resolved(self.hold_address)
        if row.status != "MAINT" and _row_address(row) == addr:
            return False
        self.runtime.set_server(HOLD_BACKEND, HOLD, address=addr, state="ready")
        return True

    def _rows(self) -> list[ServerRow]:
        return self.runtime.servers(BACKEND)

    def _grow(self, needed: int) -> None:
        """More replicas than slots: a reload with twice the slots; the state file keeps the live ones."""
        slots = _slots_for(needed)
        self._write_checked(self.render(slots))  # a rejected file changes nothing, self.slots included
        self.slots = slots
        self.runtime.save_server_state(self.state_path)
        master = self._master()
        if master is None:
            raise BalancerError("haproxy master is not running")
        before = self._worker_pid()
        master.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._worker_pid() not in (None, before) and len(self._rows()) >= self.slots:
                return
            time.sleep(0.05)
        raise BalancerError(f"haproxy reload to {self.slots} slots did not finish: {self._last_alert()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGUSR1 (soft stop: in-flight requests finish), then TERM, then KILL."""
        with self._lock:
            master = self._master()
            if master is not None:
                procs = [master]
                with contextlib.suppress(psutil.Error):
                    procs += master.children(recursive=True)
                for sig, wait in ((signal.SIGUSR1, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                    for p in procs:
                        with contextlib.suppress(psutil.Error):
                            p.send_signal(sig)
                    _, alive = psutil.wait_procs(procs, timeout=wait)
                    if not alive:
                        break
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(1)
                self._proc = None
            self.pid_path.unlink(missing_ok=True)
            self.runtime.path.unlink(missing_ok=True)

    def is_running(self) -> bool:
        return self._master() is not None and self.runtime.answers()

    # ---- draining -------------------------------------------------------------------------------
    def wait_drained(self, address: str, timeout: float) -> bool:
        """True once no slot holding `address` has a session left; the slot is then parked."""
        target = _resolved(address)
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = [r for r in self._rows() if _row_address(r) == target and r.status != "MAINT"]
            except HAProxyRuntimeError:
                return True  # nothing of ours is running: nothing is in flight through it
            busy = [r for r in rows if r.sessions > 0 or r.in_service]
            if not busy:
                for r in rows:
                    with contextlib.suppress(HAProxyRuntimeError):
                        self.runtime.set_server(BACKEND, r.name, state="maint")
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # ---- internals ------------------------------------------------------------------------------
    def _haproxy(self) -> str:
        search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
        path = self.haproxy_bin if os.sep in self.haproxy_bin else shutil.which(self.haproxy_bin, path=search)
        if path is None or not os.access(path, os.X_OK):
            raise BalancerError(f"haproxy binary {self.haproxy_bin!r} not found: {PACKAGE_HINT}")
        return path

    def _write_checked(self, text: str) -> None:
        """The new config goes live only if `haproxy -c` accepts it; otherwise the old file stays."""
        candidate = self.conf_path.with_name("haproxy.cfg.candidate")
        candidate.write_text(text)
        done = subprocess.run(
            [self._haproxy(), "-c", "-f", str(candidate)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise BalancerError(_alert_line(done.stdout.decode(errors="replace") + done.stderr.decode()))
        os.replace(candidate, self.conf_path)

    def _check_bindable(self) -> None:
        family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self._listen_host, self._listen_port))
            except OSError as exc:
                raise BalancerError(f"balancer.listen {self.listen}: {exc.strerror or exc}") from None

    def _start(self) -> None:
        self.runtime.path.unlink(missing_ok=True)
        log = os.open(self.access_log_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        err = os.open(self.error_log_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            # -W -db: master-worker in the foreground, so the workers' stdout is our access log.
            self._proc = subprocess.Popen(
                [self._haproxy(), "-W", "-db", "-f", str(self.conf_path), "-p", str(self.pid_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=err,
                start_new_session=True,  # outlives the controller; a Ctrl-C to it must not reach HAProxy
                umask=0o077,
            )
        finally:
            os.close(log)
            os.close(err)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            if self.runtime.answers():
                return
            time.sleep(0.05)
        self.stop(timeout=1.0)
        raise BalancerError(f"haproxy did not start: {self._last_alert()}")

    def _master(self) -> psutil.Process | None:
        if self._proc is not None:
            self._proc.poll()  # reap it if it exited, or it would linger as a zombie
        try:
            pid = int(self.pid_path.read_text().split()[0])
            proc = psutil.Process(pid)
            cmd = " ".join(proc.cmdline())
            if proc.status() != psutil.STATUS_ZOMBIE and f"-f {self.conf_path}" in cmd:
                return proc
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return None

    def _worker_pid(self) -> int | None:
        with contextlib.suppress(HAProxyRuntimeError):
            for line in self.runtime.command("show info").splitlines():
                if line.startswith("Pid:"):
                    return int(line.split(":", 1)[1])
        return None

    def _last_alert(self) -> str:
        try:
            return _alert_line(self.error_log_path.read_text(errors="replace"))
        except OSError:
            return "no message"


# AF_UNIX paths hold 107 bytes, and HAProxy binds `<path>.<pid>.tmp` first, then renames it.
_SOCKET_PATH_MAX = 90


def _socket_path(prefix: Path) -> Path:
    """The admin socket: in the group's directory when its path is short enough, else in a private
    runtime directory under a name derived from that directory (the same one after a restart, so a new
    controller finds the HAProxy it adopts)."""
    here = prefix / "admin.sock"
    if len(os.fsencode(here)) <= _SOCKET_PATH_MAX:
        return here
    runtime = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else tempfile.gettempdir())
    base = Path(runtime) / f"tierscale-{os.geteuid()}"
    make_private_dir(base)
    digest = hashlib.sha256(os.fsencode(prefix)).hexdigest()[:16]
    return base / f"haproxy-{digest}.sock"


def _empty_body(group: str) -> str:
    """The 503 body with no ready replica, as nginx's: JSON inside HAProxy's double-quoted string."""
    return '{\\"error\\":\\"no ready replicas\\",\\"group\\":\\"' + group + '\\"}\\n'


def _slots_for(n: int) -> int:
    slots = MIN_SLOTS
    while slots < 2 * n:
        slots *= 2
    return slots


def _resolved(address: str) -> tuple[str, int]:
    """HAProxy's `set server addr` takes an IP: a name is resolved once, here."""
    host, port = parse_address(address)
    host = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host, port
    except OSError:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return str(info[0][4][0]), port


def _row_address(row: ServerRow) -> tuple[str, int] | None:
    host, _, port = row.address.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


_ALERT_RE = re.compile(r"^\[(ALERT|WARNING)\]\s+\(\d+\)\s*:\s*(.*)$")


def _alert_line(output: str) -> str:
    """HAProxy's first alert (or warning), without its level and pid: the one line that says why."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for level in ("ALERT", "WARNING"):
        for ln in lines:
            m = _ALERT_RE.match(ln)
            if m and m.group(1) == level:
                return m.group(2)
    return lines[-1] if lines else "haproxy failed without a message"


__all__ = ["HAPROXY_ALGORITHMS", "HAProxyBalancer"]
