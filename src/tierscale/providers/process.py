"""Process tier: each replica is a local process started from `template.command`.

Ownership lives on disk: one JSON pid file per replica under `<state_dir>/groups/<group>/replicas/`,
holding the pid and the process start time (so a recycled pid is never mistaken for ours), the template
revision it was started from and the host. Processes run in their own session, so they outlive a
controller that is SIGKILLed, and a restarted controller adopts them from those files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tierscale.addresses import format_address
from tierscale.private_dirs import make_private_dir
from tierscale.providers.base import (
    Capability,
    CreateRejected,
    EventSink,
    Listing,
    NoConsole,
    Replica,
    ReplicaStats,
    TemplateError,
    TierState,
    TierUnavailable,
    no_events,
)
from tierscale.providers.cpu_rate import CpuRate

LOOPBACK = "127.0.0.1"
# A command that cannot run as given: the template must change before a retry can work.
_TEMPLATE_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.EISDIR})


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ProcessData:
    """What the process tier keeps on a `Replica` for itself."""

    pid: int | None  # None while a create is still starting it
    port: int


def _port_of(replica: Replica) -> int | None:
    data = replica.tier_data
    return data.port if isinstance(data, ProcessData) else None


class ProcessProvider(NoConsole):
    tier = "process"
    capabilities: frozenset[Capability] = frozenset({Capability.EXEC})

    def __init__(
        self,
        group: str,
        state_dir: Path,
        command: Sequence[str],
        port_range: tuple[int, int] = (20000, 20999),
        cpus: float = 1.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        *,
        revision: str,
        events: EventSink = no_events,
    ) -> None:
        self.group = group
        self.revision = revision
        self.events = events
        self.host = socket.gethostname()
        self.dir = Path(state_dir) / "groups" / group / "replicas"
        self.command = list(command)
        self.port_range = port_range
        self.allotment_milli = max(1, round(cpus * 1000))
        self.env = dict(env or {})
        self.cwd = cwd
        self._cpu = CpuRate()  # per replica id: the previous reading, for utilization deltas
        # Creates run concurrently in threads; picking a port and writing the pid file that claims it
        # must be one step, or two replicas pick the same port before either has bound it.
        self._create_lock = threading.Lock()

    # ---- ownership files -------------------------------------------------------------------------
    def _pidfile(self, replica_id: str) -> Path:
        return self.dir / f"{replica_id}.json"

    def _read(self, path: Path) -> dict[str, object] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _process(self, record: Mapping[str, object]) -> psutil.Process | None:
        pid = record.get("pid")
        started = record.get("proc_start")
        if not isinstance(pid, int):
            return None
        try:
            proc = psutil.Process(pid)
            if isinstance(started, float | int) and abs(proc.create_time() - float(started)) > 1.0:
                return None  # the pid was recycled by somebody else's process
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    # ---- Provider ----------------------------------------------------------------------------------
    def list(self) -> Listing:
        try:
            if not self.dir.is_dir():
                return Listing()
            paths = sorted(self.dir.glob("*.json"))
        except OSError as exc:  # the state directory itself is out of reach
            raise TierUnavailable(f"cannot read {self.dir}: {exc.strerror or exc}") from None
        out: list[Replica] = []
        for path in paths:
            rec = self._read(path)
            if rec is None:
                continue
            if rec.get("pid") is None:
                rec = self._complete(path, rec)
            alive = self._process(rec) is not None
            state: TierState = "running" if alive else "failed"
            age = time.time() - float(rec.get("created_at", 0.0))  # type: ignore[arg-type]
            if rec.get("pid") is None and not alive and age < 30:
                state = "provisioning"  # claimed a moment ago; its process is being started
            out.append(self._replica(path.stem, rec, state))
        return Listing(out)

    def _replica(self, stem: str, rec: Mapping[str, object], state: TierState) -> Replica:
        pid, port = rec.get("pid"), rec.get("port")
        pid = pid if isinstance(pid, int) else None
        port = port if isinstance(port, int) else 0
        return Replica(
            id=str(rec.get("id", stem)),
            group=self.group,
            address=format_address(LOOPBACK, port) if port else None,
            state=state,
            created_at=float(rec.get("created_at", 0.0)),  # type: ignore[arg-type]
            revision=str(rec.get("revision") or ""),  # "" in records written before revisions
            host=str(rec.get("host") or ""),
            ref=str(pid) if pid is not None else "",
            tier_data=ProcessData(pid, port),
        )

    def _complete(self, path: Path, rec: dict[str, object]) -> dict[str, object]:
        """A claim without a pid: a create in progress, or one a killed controller never finished."""
        proc = self._unrecorded(rec)
        if proc is None:
            return rec  # no process: listed as failed, and the controller's delete removes the claim
        with contextlib.suppress(psutil.Error, OSError):
            rec = {**rec, "pid": proc.pid, "proc_start": proc.create_time()}
            self._write_record(path.stem, rec)
        return rec

    def _pick_port(self) -> int:
        taken = {port for r in self.list() if (port := _port_of(r))}
        lo, hi = self.port_range
        for port in range(lo, hi + 1):
            if port not in taken and _port_is_free(port):
                return port
        raise CreateRejected(f"no free port in port_range [{lo}, {hi}]")

    def create(self, replica_id: str) -> Replica:
        with self._create_lock:
            return self._create(replica_id)

    def _write_record(self, replica_id: str, record: Mapping[str, object]) -> None:
        tmp = self._pidfile(replica_id).with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record))
            tmp.replace(self._pidfile(replica_id))
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _forget(self, replica_id: str) -> None:
        self._pidfile(replica_id).unlink(missing_ok=True)
        (self.dir / f"{replica_id}.log").unlink(missing_ok=True)

    def _create(self, replica_id: str) -> Replica:
        make_private_dir(self.dir)
        port = self._pick_port()
        argv = [part.replace("{port}", str(port)).replace("{replica}", replica_id) for part in self.command]
        env = {**os.environ, **self.env, "TIERSCALE_REPLICA": replica_id, "TIERSCALE_GROUP": self.group}
        created = time.time()
        record: dict[str, object] = {
            "id": replica_id,
            "group": self.group,
            "pid": None,
            "proc_start": None,
            "port": port,
            "created_at": created,
            "argv": argv,
            "revision": self.revision,
            "host": self.host,
        }
        # The claim is written before anything runs: with a full disk the create fails here, and a
        # controller killed between start and record still finds the process (see `_unrecorded`).
        try:
            self._write_record(replica_id, record)
        except OSError as exc:
            raise CreateRejected(f"cannot write replica record: {exc.strerror or exc}") from exc
        log_path = self.dir / f"{replica_id}.log"
        try:
            fd = os.open(log_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        except OSError as exc:
            self._forget(replica_id)
            raise CreateRejected(f"cannot open replica log: {exc.strerror or exc}") from exc
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=env,
                cwd=self.cwd,
                start_new_session=True,  # survives a controller SIGKILL; we signal its whole group
            )
        except OSError as exc:
            self._forget(replica_id)
            kind = TemplateError if exc.errno in _TEMPLATE_ERRNOS else CreateRejected
            raise kind(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        try:
            record["proc_start"] = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            record["proc_start"] = created
        record["pid"] = proc.pid
        try:
            self._write_record(replica_id, record)
        except OSError as exc:
            # Unrecorded, it would be a process nobody owns: stop it rather than leak it.
            self._stop(psutil.Process(proc.pid), grace=0.0)
            self._forget(replica_id)
            raise CreateRejected(f"cannot write replica record: {exc.strerror or exc}") from exc
        return self._replica(replica_id, record, "running")

    def _unrecorded(self, record: Mapping[str, object]) -> psutil.Process | None:
        """The process of a claim whose pid was never written (controller killed mid-create), found by
        the replica id and group every replica carries in its environment."""
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                ids = (env.get("TIERSCALE_GROUP"), env.get("TIERSCALE_REPLICA"))
                if ids == (self.group, record.get("id")) and os.getsid(proc.pid) == proc.pid:
                    return proc
            except (psutil.Error, OSError):
                continue
        return None

    def delete(self, replica: Replica, grace: float = 5.0) -> None:
        path = self._pidfile(replica.id)
        rec = self._read(path)
        proc = self._process(rec) if rec else None
        if proc is not None:
            self._stop(proc, grace)
        self._cpu.forget(replica.id)
        self._forget(replica.id)

    @staticmethod
    def _stop(proc: psutil.Process, grace: float) -> None:
        try:
            pgid = os.getpgid(proc.pid)
        except OSError:
            return
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
            # A stopped (SIGSTOP, hung) replica only sees the TERM once it runs again; like a shell's
            # `kill`, continue it, so it shuts down now instead of being SIGKILLed after the grace.
            os.killpg(pgid, signal.SIGCONT)
        try:
            proc.wait(timeout=grace)
        except psutil.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=5)
        except psutil.Error:
            pass

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        out: dict[str, ReplicaStats] = {}
        for r in replicas:
            rec = self._read(self._pidfile(r.id))
            proc = self._process(rec) if rec else None
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu = t.user + t.system + t.children_user + t.children_system
                    rss = proc.memory_info().rss
                    age = max(1e-3, time.time() - proc.create_time())
            except psutil.Error:
                continue
            # On first sight of a replica its lifetime average is the best one-shot estimate.
            pct = self._cpu.percent(r.id, cpu, self.allotment_milli, lifetime=age)
            out[r.id] = ReplicaStats(
                cpu_percent=pct, cpu_allotment_milli=self.allotment_milli, memory_bytes=rss
            )
        return out

    def exec_check(self, replica: Replica, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run `argv` beside the replica, with its environment and directory and {port}, {replica}
        filled in as in the template: exit code and the end of its output. No shell: the argv is the
        config's word for word. A command past `timeout` is killed with everything it started."""
        port = _port_of(replica)
        args = [a.replace("{port}", str(port or "")).replace("{replica}", replica.id) for a in argv]
        env = {**os.environ, **self.env, "TIERSCALE_REPLICA": replica.id, "TIERSCALE_GROUP": self.group}
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:  # not found, not executable
            return 127, f"{args[0]}: {exc.strerror or exc}"
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return 124, f"timed out after {timeout:g}s"
        return proc.returncode, out.decode(errors="replace")[-300:]

    def close(self) -> None:
        self._cpu.clear()
