"""One nginx master per group, owned by tierscale, pointed at exactly the ready replicas.

The master runs with its own prefix directory (conf/, logs/, tmp/) under the state dir and never reads
or touches the system nginx configuration. It daemonizes, so it survives the controller; a restarted
controller adopts it through ``logs/nginx.pid`` after checking that the pid really is an nginx master
started with our prefix.

Why the extra checks around ``nginx -t`` (measured with nginx 1.22.1): in test mode nginx performs the
bind() of every listen address but silently ignores EADDRINUSE, so ``nginx -t`` passes both on our own
running master's port and on a port held by an unrelated process. A start on a taken port then fails
(after 5 bind attempts, 2.5 s) and a reload onto a taken port fails inside the master, which logs
``[emerg] bind() ... failed`` and keeps the old config. So we pre-check new listen addresses ourselves,
confirm every reload by watching for new worker pids, and scan the error log for the master's
``[emerg]`` lines.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import psutil

from tierscale.addresses import AddressError, format_address, split_address
from tierscale.balancer.accesslog import AccessLogReader
from tierscale.balancer.base import ApplyResult, BalancerError
from tierscale.private_dirs import make_private_dir

Algorithm = Literal["round_robin", "least_conn"]
ALGORITHMS: tuple[str, ...] = ("round_robin", "least_conn")

_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_PLACEHOLDER_RE = re.compile(r"\{\{(\w+)\}\}")
_UPSTREAM_NAME = "tierscale_backends"
# "2026/01/01 12:00:00 [emerg] 123#123: bind() to 127.0.0.1:80 failed (98: Address already in use)"
_ERROR_LINE_RE = re.compile(r"^\S+ \S+ \[(\w+)\] (\d+)#\d+: (.*)$")

# Searched when nginx_bin is a bare name: /usr/sbin is often missing from PATH of non-login shells.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")


def _nginx_host(host: str) -> bool:
    # Anything that is not an IPv4 literal must be a plain DNS name: this string is pasted into the nginx
    # config, so it must not be able to carry ';', '{', spaces or quotes. (IPv6 comes in brackets.)
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.fullmatch(host))


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" into (host, port); ValueError if it is not a usable address."""
    try:
        return split_address(address, host_ok=_nginx_host)
    except AddressError as exc:
        why = {"form": "expected host:port or [ipv6]:port", "host": "bad host", "port": "bad port"}[exc.part]
        raise ValueError(f"invalid address {address!r}: {why}") from None


def _nginx_error_line(output: str) -> str:
    """nginx's most relevant one-line message, without the "nginx: " prefix."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for level in ("[emerg]", "[alert]", "[crit]", "[error]"):
        for ln in lines:
            if level in ln:
                return ln.removeprefix("nginx: ")
    return lines[-1].removeprefix("nginx: ") if lines else "nginx failed without a message"


def _canonical_ip(ip: str) -> str:
    """One spelling per address: no IPv6 scope, IPv4-mapped IPv6 as plain IPv4."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _alive(proc: psutil.Process) -> bool:
    # An exited daemon stays a zombie until init reaps it (some container inits reap lazily); a zombie
    # serves nothing, so it counts as dead.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(proc: psutil.Process) -> str:
    # nginx rewrites its argv into one title ("nginx: master process /usr/sbin/nginx -p ..."); psutil
    # may return it as one element or split on spaces, so compare on the joined string.
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


class NginxBalancer:
    """Lifecycle and configuration of the nginx master of one group."""

    def __init__(
        self,
        group: str,
        listen: str,
        algorithm: str,
        prefix: Path,
        nginx_bin: str = "nginx",
        *,
        shutdown_timeout: float = 120.0,
        reload_timeout: float = 10.0,
    ) -> None:
        if not _GROUP_RE.fullmatch(group):
            raise ValueError(f"invalid group name {group!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
        self.group = group
        self.listen = listen
        self._listen_host, self._listen_port = parse_address(listen)
        self.algorithm = algorithm
        # Absolute but not symlink-resolved: the adoption check compares it textually against the
        # "-p" argument in the master's title, which is whatever we passed when starting it.
        self.prefix = Path(os.path.abspath(prefix))
        self.nginx_bin = nginx_bin
        self.shutdown_timeout = shutdown_timeout
        self.reload_timeout = reload_timeout
        self._lock = threading.RLock()
        # scale_to_zero: with no ready replica, requests go to the controller's holding endpoint.
        self.hold_address: str | None = None
        self.hold_timeout = 30.0

    def hold_at(self, address: str | None, timeout: float = 30.0) -> None:
        """While no replica is ready, proxy to `address` (the holder) instead of answering 503; takes effect
        with the next ensure_running/apply."""
        if address is not None:
            parse_address(address)
        self.hold_address, self.hold_timeout = address, timeout

    # ---- paths and properties -------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    @property
    def pid_path(self) -> Path:
        return self.prefix / "logs" / "nginx.pid"

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def traffic_log(self) -> AccessLogReader:
        return AccessLogReader(self.access_log_path)

    @property
    def pid(self) -> int | None:
        master = self._find_master()
        return master.pid if master else None

    def is_running(self) -> bool:
        return self._find_master() is not None

    @property
    def _prefix_arg(self) -> str:
        return str(self.prefix) + "/"

    # ---- rendering ------------------------------------------------------------------------------

    def render(self, backends: Sequence[str]) -> str:
        """The complete nginx.conf for this set of "host:port" backends (order and duplicates ignored)."""
        normalized = sorted({format_address(*parse_address(b)) for b in backends})
        if normalized:
            lines = [f"\n    upstream {_UPSTREAM_NAME} {{"]
            if self.algorithm == "least_conn":
                lines.append("        least_conn;")
            lines += [f"        server {b} max_fails=1 fail_timeout=5s;" for b in normalized]
            lines += [
                # Idle connections cached per worker: saves a TCP handshake per request to the replicas.
                "        keepalive 32;",
                "        keepalive_timeout 30s;",
                "    }",
                "",
            ]
            upstream_block = "\n".join(lines)
            root_location = _PROXY_LOCATION.replace("{{upstream}}", _UPSTREAM_NAME)
        elif self.hold_address is not None:
            upstream_block = ""
            # The holder answers 504 at hold_timeout; the replica it relays to then has a minute more.
            root_location = _HOLD_LOCATION.replace("{{hold}}", self.hold_address).replace(
                "{{hold_read_timeout}}", f"{max(1, round(self.hold_timeout + 60))}s"
            )
        else:
            # nginx refuses an upstream without servers, so with no ready replica the server answers
            # by itself: 503 + Retry-After tells clients (and retrying proxies) to come back shortly.
            upstream_block = ""
            root_location = _EMPTY_LOCATION
        values = {
            "group": self.group,
            "listen": self.listen,
            "user_directive": self._user_directive(),
            "shutdown_timeout": f"{max(1, round(self.shutdown_timeout))}s",
            "upstream_block": upstream_block,
            "root_location": root_location.replace("{{group}}", self.group).replace(
                "{{forward_headers}}", _FORWARD_HEADERS
            ),
            "backend_count": str(len(normalized)),
        }
        return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], _template())

    def _user_directive(self) -> str:
        if os.geteuid() != 0:
            # Unprivileged masters cannot switch user; nginx would only warn about the directive.
            return "# not root: workers run as the invoking user"
        # As root, nginx's default worker user (nobody) usually cannot even traverse a root-owned state
        # dir, so workers would fail to buffer to tmp/. Run them as the owner of the prefix: root for a
        # root-owned state dir, or a dedicated account if the operator chowned the prefix to one.
        try:
            st = self.prefix.stat()
            user = pwd.getpwuid(st.st_uid).pw_name
            group = grp.getgrgid(st.st_gid).gr_name
        except (OSError, KeyError):
            user, group = "root", "root"
        return f"user {user} {group};"

    # ---- lifecycle ------------------------------------------------------------------------------

    def ensure_running(self, backends: Sequence[str]) -> None:
        """Adopt our running master (and apply `backends` to it) or write the config and start one."""
        with self._lock:
            self._make_dirs()
            if self._find_master() is not None:
                result = self.apply(backends)
                if not result.ok:
                    raise BalancerError(result.error or "reload failed")
                return
            text = self.render(backends)
            self._write_atomic(self.conf_path, text)
            self._run_test(self.conf_path)
            orphans = self.orphan_workers()
            self._check_bindable(tolerate={p.pid for p in orphans})
            self._start()
            self._retire_orphans(orphans)

    def apply(self, backends: Sequence[str]) -> ApplyResult:
        """Point the running master at `backends`; a rejected config leaves the last good one serving."""
        with self._lock:
            text = self.render(backends)
            master = self._find_master()
            if master is None:
                # The master died (OOM kill, operator); bring it back with the wanted set.
                try:
                    self.ensure_running(backends)
                except BalancerError as e:
                    return ApplyResult(changed=False, ok=False, error=str(e))
                except OSError as e:
                    error = f"cannot start nginx: {e.strerror or e}"
                    return ApplyResult(changed=False, ok=False, error=error)
                return ApplyResult(changed=True, ok=True)
            try:
                live = self.conf_path.read_text()
            except FileNotFoundError:
                live = None
            if live == text:
                return ApplyResult(changed=False, ok=True)

            candidate = self.conf_path.with_name("nginx.conf.candidate")
            previous = self.conf_path.with_name("nginx.conf.previous")
            try:
                self._write_atomic(candidate, text)
            except OSError as e:  # disk full, read-only state dir: the running config stays as it is
                candidate.unlink(missing_ok=True)
                error = f"cannot write {candidate.name}: {e.strerror or e}"
                return ApplyResult(changed=False, ok=False, error=error)
            try:
                self._run_test(candidate)
                self._check_bindable(master)
            except BalancerError as e:
                candidate.unlink(missing_ok=True)
                return ApplyResult(changed=False, ok=False, error=str(e))

            old_workers = self._worker_pids(master)
            if live is not None:
                try:
                    self._write_atomic(previous, live)
                except OSError as e:
                    candidate.unlink(missing_ok=True)
                    error = f"cannot write {previous.name}: {e.strerror or e}"
                    return ApplyResult(changed=False, ok=False, error=error)
            log_offset = self._error_log_size()
            os.replace(candidate, self.conf_path)
            try:
                master.send_signal(signal.SIGHUP)
                error = self._await_reload(master, old_workers, log_offset)
            except psutil.Error as e:
                error = f"nginx master vanished during reload: {e}"
            if error is not None:
                # nginx kept the old configuration running; put the matching file back so that a later
                # restart or adoption starts from what is actually serving.
                if live is not None:
                    os.replace(previous, self.conf_path)
                return ApplyResult(changed=False, ok=False, error=error)
            previous.unlink(missing_ok=True)
            self._await_old_workers_stop_accepting(old_workers, timeout=2.0)
            return ApplyResult(changed=True, ok=True, old_workers=old_workers)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful QUIT (in-flight requests finish), then TERM, then KILL of master and workers, and of
        workers orphaned by a master that died earlier (they would otherwise serve on forever)."""
        with self._lock:
            master = self._find_master()
            procs: list[psutil.Process] = []
            if master is not None:
                try:
                    procs = [master, *master.children()]
                except psutil.Error:
                    procs = [master]
            orphans = self.orphan_workers()
            procs += orphans
            # QUIT goes to whoever leads a graceful shutdown: the master, or each orphan on its own. After
            # a SIGKILLed master its workers would keep serving, so later signals go to every process.
            leaders = [master] if master is not None else []
            for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                targets = [*leaders, *orphans] if sig == signal.SIGQUIT else procs
                for p in targets:
                    if _alive(p):
                        with contextlib.suppress(psutil.Error):
                            p.send_signal(sig)
                if self._wait_all_dead(procs, wait):
                    break
            self.pid_path.unlink(missing_ok=True)

    def reopen_logs(self) -> None:
        """SIGUSR1: nginx reopens its log files (after they were renamed by a rotation)."""
        master = self._find_master()
        if master is None:
            raise BalancerError("nginx master is not running")
        master.send_signal(signal.SIGUSR1)

    # ---- draining -------------------------------------------------------------------------------

    def wait_drained(self, address: str, timeout: float) -> bool:
        """True once no worker of our master (old or new) has a live TCP connection to `address`."""
        targets = self._resolve(address)
        deadline = time.monotonic() + timeout
        while True:
            if not self._connected_to(targets):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _resolve(self, address: str) -> set[tuple[str, int]]:
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return {(_canonical_ip(host), port)}
        return {(_canonical_ip(info[4][0]), port) for info in infos}

    def _connected_to(self, targets: set[tuple[str, int]]) -> bool:
        master = self._find_master()
        if master is None:
            return False
        try:
            workers = master.children()
        except psutil.Error:
            return False
        for worker in workers:
            try:
                conns = worker.net_connections(kind="tcp")
            except psutil.Error:
                continue  # exited between listing and inspection: it holds nothing any more
            for c in conns:
                # SYN_SENT too: a request that is still connecting to the replica is in flight as well.
                if (
                    c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_SYN_SENT)
                    and c.raddr
                    and (_canonical_ip(c.raddr.ip), c.raddr.port) in targets
                ):
                    return True
        return False

    # ---- internals ------------------------------------------------------------------------------

    def _make_dirs(self) -> None:
        for sub in ("conf", "logs", "tmp"):
            make_private_dir(self.prefix / sub)

    def _find_master(self) -> psutil.Process | None:
        """Our master: pid file first, else a process scan (the pid file may have been deleted)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                proc = None
            if proc is not None and self._is_our_master(proc):
                return proc
        for proc in psutil.process_iter():
            if proc.pid != pid and self._is_our_master(proc):
                with contextlib.suppress(OSError):
                    self._write_atomic(self.pid_path, f"{proc.pid}\n")
                return proc
        return None

    def _is_our_master(self, proc: psutil.Process) -> bool:
        if not _alive(proc):
            return False
        cmd = _cmdline(proc)
        # A recycled pid, the system nginx, or another group's master must never be adopted or signalled.
        return cmd.startswith("nginx: master process") and (f" -p {self._prefix_arg} " in cmd + " ")

    def orphan_workers(self) -> list[psutil.Process]:
        """Workers whose master of ours died (SIGKILL, OOM killer): they keep our port and serve the old
        backends, so a new master could not bind until they are gone. Recognised by our log files being
        open in them, as their title does not name the prefix."""
        ours = {str(self.access_log_path), str(self.error_log_path)}
        out = []
        for proc in psutil.process_iter(["name", "ppid"]):
            if proc.info["name"] != "nginx" or not _cmdline(proc).startswith("nginx: worker process"):
                continue
            try:
                parent = psutil.Process(proc.info["ppid"])
                if self._is_our_master(parent):
                    continue
                if any(f.path in ours for f in proc.open_files()):
                    out.append(proc)
            except psutil.Error:
                continue
        return out

    @staticmethod
    def _retire_orphans(orphans: list[psutil.Process]) -> None:
        """QUIT the orphans once the new master listens beside them (reuseport): each stops accepting
        and finishes what it already accepted, within worker_shutdown_timeout."""
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGQUIT)

    def _worker_pids(self, master: psutil.Process) -> set[int]:
        try:
            return {c.pid for c in master.children() if _alive(c)}
        except psutil.Error:
            return set()

    def _nginx(self) -> str:
        if os.sep in self.nginx_bin:
            path: str | None = self.nginx_bin if os.access(self.nginx_bin, os.X_OK) else None
        else:
            search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
            path = shutil.which(self.nginx_bin, path=search)
        if path is None:
            raise BalancerError(f"nginx binary {self.nginx_bin!r} not found")
        return path

    def _base_args(self, conf: Path) -> list[str]:
        # -e: without it nginx first opens its compiled-in error log (/var/log/nginx/error.log on most
        # distributions) before reading our config.
        return [self._nginx(), "-p", self._prefix_arg, "-c", str(conf), "-e", "logs/error.log"]

    def _run(self, args: list[str], timeout: float = 30.0) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "NGINX"}  # NGINX=fds means "inherit sockets"
        # Output to a file, not a pipe: the daemonized master must not keep a pipe of ours open.
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                start_new_session=True,  # a Ctrl-C to the controller's process group must not reach nginx
                umask=0o077,  # its logs (client addresses, paths) and pid file: for the owner only
                check=False,
            )
            out.seek(0)
            return proc.returncode, out.read().decode(errors="replace")

    def _run_test(self, conf: Path) -> None:
        rc, output = self._run([*self._base_args(conf), "-t", "-q"])
        if rc != 0:
            raise BalancerError(_nginx_error_line(output))

    def _check_bindable(self, master: psutil.Process | None = None, tolerate: set[int] | None = None) -> None:
        """Fail fast where nginx -t cannot: it ignores EADDRINUSE in test mode. Listeners in `tolerate`
        (our orphaned workers, bound with reuseport like the new master) do not count as taking the port."""
        if master is not None and self._master_listens(master):
            return  # our own socket; the master keeps it across the reload
        if tolerate and self._listeners() and self._listeners() <= tolerate:
            return
        family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # same as nginx: TIME_WAIT is fine
            try:
                s.bind((self._listen_host, self._listen_port))
            except OSError as e:
                code = e.errno or 0
                raise BalancerError(
                    f"[emerg] bind() to {self.listen} failed ({code}: {os.strerror(code)})"
                    if code
                    else f"[emerg] bind() to {self.listen} failed ({e})"
                ) from None

    def _listeners(self) -> set[int]:
        """Pids with a listening socket on our port (any address: a wildcard bind also takes ours)."""
        pids = set()
        with contextlib.suppress(psutil.Error, OSError):
            for c in psutil.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self._listen_port and c.pid:
                    pids.add(c.pid)
        return pids

    def _master_listens(self, master: psutil.Process) -> bool:
        # Any listener of ours on the port counts: an unchanged listen socket is kept across reloads, and
        # a changed address on the same port is left to nginx (the reload check reports its bind error).
        try:
            conns = master.net_connections(kind="inet")
        except psutil.Error:
            return False
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self._listen_port for c in conns
        )

    def _start(self) -> None:
        self.pid_path.unlink(missing_ok=True)  # stale: _find_master just failed to verify it
        rc, output = self._run(self._base_args(self.conf_path))
        if rc != 0:
            raise BalancerError(_nginx_error_line(output))
        # The launcher exits right after forking; the daemon writes the pid file a moment later.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if self._find_master() is not None:
                return
            time.sleep(0.02)
        raise BalancerError(f"nginx started but no master appeared; see {self.error_log_path}")

    def _error_log_size(self) -> int:
        try:
            return self.error_log_path.stat().st_size
        except OSError:
            return 0

    def _master_errors(self, master_pid: int, offset: int) -> Iterator[str]:
        """[emerg]/[alert] lines the master logged after `offset`, as "[emerg] message"."""
        try:
            with self.error_log_path.open("rb") as f:
                f.seek(offset)
                data = f.read().decode(errors="replace")
        except OSError:
            return
        for line in data.splitlines():
            m = _ERROR_LINE_RE.match(line)
            if m and m.group(1) in ("emerg", "alert") and int(m.group(2)) == master_pid:
                yield f"[{m.group(1)}] {m.group(3)}"

    def _await_reload(self, master: psutil.Process, old_workers: set[int], log_offset: int) -> str | None:
        """None once a new worker runs; else nginx's error (the master keeps the old config then)."""
        deadline = time.monotonic() + self.reload_timeout
        first_error_at: float | None = None
        while True:
            if not _alive(master):
                return "nginx master exited during reload"
            if self._worker_pids(master) - old_workers:
                return None
            errors = list(self._master_errors(master.pid, log_offset))
            if errors:
                now = time.monotonic()
                first_error_at = first_error_at or now
                # A failed bind is retried 5 x 500 ms before nginx gives up ("still could not bind()");
                # any other [emerg] ends the reload at once.
                final = [e for e in errors if "bind()" not in e]
                if final:
                    return final[0]
                if any("still could not bind" in e for e in errors) or now - first_error_at > 3.0:
                    return errors[0]
            if time.monotonic() >= deadline:
                return f"nginx did not confirm the reload within {self.reload_timeout:.0f}s"
            time.sleep(0.02)

    @staticmethod
    def _await_old_workers_stop_accepting(old_workers: set[int], timeout: float) -> None:
        """Until an old worker closes its listening socket it still accepts connections with the OLD config.

        Right after SIGHUP the new worker already runs while the old one has not yet handled its QUIT;
        a connection accepted in that window is served by the old config (e.g. the 503 page when the
        first replica was just added). Returning only after the old workers stopped listening closes it.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = False
            for pid in old_workers:
                try:
                    conns = psutil.Process(pid).net_connections(kind="inet")
                except psutil.Error:
                    continue  # gone, or a zombie: it accepts nothing
                if any(c.status == psutil.CONN_LISTEN for c in conns):
                    listening = True
                    break
            if not listening:
                return
            time.sleep(0.01)

    @staticmethod
    def _wait_all_dead(procs: list[psutil.Process], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in procs):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a half-written file must not eat what little space is left
            raise


def _template() -> str:
    return resources.files("tierscale.balancer").joinpath("nginx.conf.tmpl").read_text()


# What a replica is told about the client, on the direct path and through the holder alike.
_FORWARD_HEADERS = """\
            proxy_set_header Host $tierscale_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;"""

_PROXY_LOCATION = """
        location / {
            proxy_pass http://{{upstream}};
            # HTTP/1.1 with an empty Connection header is what lets upstream keepalive reuse connections.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{{forward_headers}}
            # A replica that is gone or refusing is skipped fast; nginx retries only idempotent requests
            # (no non_idempotent flag), at most twice more, and never past 10 s in total.
            # 3 s, not 1 s: QEMU user networking has a listen backlog of 1, and a dropped SYN is
            # retransmitted after exactly 1 s; a refused connection (dead replica) fails at once anyway.
            proxy_connect_timeout 3s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 10s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
        }"""

# HTTP/1.0 to the holder (nginx's default): the body arrives whole with its Content-Length, and the holder
# closes after each answer. Never retried elsewhere: there is nowhere else. A refused connection means the
# controller is gone (killed, restarting): answer as the empty group does instead of a bare 502.
_HOLD_LOCATION = """
        location / {
            proxy_pass http://{{hold}};
{{forward_headers}}
            proxy_connect_timeout 1s;
            proxy_next_upstream off;
            proxy_send_timeout {{hold_read_timeout}};
            proxy_read_timeout {{hold_read_timeout}};
            error_page 502 = @tierscale_no_holder;
        }

        location @tierscale_no_holder {
            default_type application/json;
            add_header Retry-After 1 always;
            return 503 '{"error":"none ready, no controller holding","group":"{{group}}"}\\n';
        }"""

_EMPTY_LOCATION = """
        location / {
            default_type application/json;
            add_header Retry-After 1 always;
            return 503 '{"error":"no ready replicas","group":"{{group}}"}\\n';
        }"""
