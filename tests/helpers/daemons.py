"""Stopping and starting the tier daemons this machine's setup runs (dockerd, libvirtd), for the tests
and the chaos suite that restart them under a serving group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from helpers import REPO

SETUP = REPO / "scripts" / "setup"
SYSTEMD = Path("/run/systemd/system")


def _pid(pidfile: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(pidfile).read_text().strip())
        if psutil.pid_exists(pid):
            return pid
    return None


def dockerd_pid() -> int | None:
    return _pid("/var/run/docker.pid")


def stop_dockerd() -> None:
    if SYSTEMD.is_dir():
        subprocess.run(["systemctl", "stop", "docker.socket", "docker"], check=True, timeout=120)
        return
    pid = dockerd_pid()
    assert pid is not None, "dockerd pid file not found (scripts/setup/docker.sh starts it)"
    os.kill(pid, signal.SIGTERM)
    psutil.Process(pid).wait(90)  # without live-restore it stops the containers first


def start_dockerd() -> None:
    if SYSTEMD.is_dir():
        subprocess.run(["systemctl", "start", "docker"], check=True, timeout=120)
    # The setup part starts it with the same flags as on a fresh machine, and waits until it answers.
    subprocess.run(["bash", str(SETUP / "docker.sh")], check=True, timeout=180, capture_output=True)


def libvirtd_pid() -> int | None:
    return _pid("/run/libvirtd.pid")


def stop_libvirtd() -> None:
    pid = libvirtd_pid()
    assert pid is not None, "libvirtd pid file not found (scripts/setup/libvirt.sh starts it)"
    os.kill(pid, signal.SIGTERM)
    psutil.Process(pid).wait(60)


def start_libvirtd(uri: str = "qemu:///system", timeout: float = 30.0) -> None:
    """Start it if it is not running, and return once a client can connect (it daemonizes first)."""
    import libvirt

    if libvirtd_pid() is None:
        subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt.open(uri).close()
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
