"""A real single-member etcd (Debian's etcd-server) for the ha tests, in a test host or on loopback.

Its data lives in a temporary directory; it listens on the address given (a namespace's, or 127.0.0.1 on
a free port) and nowhere else. `restart()` stops it (SIGTERM) and starts it again on the same data, as a
maintenance restart does; `kill()` is the SIGKILL. Removed with its data when the block ends.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class EtcdError(RuntimeError):
    pass


@dataclass
class Etcd:
    address: str
    port: int
    peer_port: int
    netns: str | None
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def _argv(self) -> list[str]:
        peer = f"http://{self.address}:{self.peer_port}"
        argv = [
            "etcd",
            "--name",
            "t1",
            "--data-dir",
            str(self.data / "member"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"t1={peer}",
            "--log-level",
            "warn",
        ]
        if self.netns is not None:
            return ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]
        return argv

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        log = self.data / f"etcd-{self.starts}.log"
        self._log.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(self._argv(), stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise EtcdError(f"etcd exited {self.proc.returncode}: {log.read_text()[-400:]}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise EtcdError(f"etcd at {self.url} not healthy after {timeout:g}s")

    def healthy(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + "/health", timeout=1) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)


@contextlib.contextmanager
def running_etcd(
    address: str = "127.0.0.1", port: int = 2379, netns: str | None = None, peer_port: int = 2380
) -> Iterator[Etcd]:
    if shutil.which("etcd") is None:
        raise EtcdError("etcd not found (scripts/setup/etcd.sh installs etcd-server)")
    data = Path(tempfile.mkdtemp(prefix="tsetcd-"))
    etcd = Etcd(address, port, peer_port, netns, data)
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.stop()
        shutil.rmtree(data, ignore_errors=True)
