"""A real RabbitMQ node of its own: own node name, AMQP, distribution, epmd and management ports, own
data; the management API on loopback with statistics every 500 ms. Nothing shared with the broker the
test cloud (openstack-lite) runs from the same package."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.ci import require
from helpers.e2e import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
USER, PASSWORD = "guest", "guest"  # guest may log in from loopback only: all this node serves


@dataclass
class RabbitMQ:
    dir: Path
    amqp_port: int
    management_port: int
    epmd_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        req = urllib.request.Request(self.management_url + path, method=method)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, data, timeout=timeout) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def ready(self) -> bool:
        try:
            return bool(self.api("GET", "/api/overview", timeout=2))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def start(self, timeout: float = 90.0) -> None:
        """Start the node (again): same name, ports and data, so durable queues and persistent messages
        are still there, the way a broker restarted by its operator comes back."""
        with (self.dir / "server.out").open("ab") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [SERVER], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None and not self.ready():
            time.sleep(0.2)
        if not self.ready():
            raise RuntimeError(f"rabbitmq not ready: {(self.dir / 'server.out').read_text()[-1500:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._kill_epmd()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._kill_epmd()

    def _kill_epmd(self) -> None:
        # epmd daemonizes out of the process group: find ours by the port it was given.
        for pid in _pids_with_env(f"ERL_EPMD_PORT={self.epmd_port}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids_with_env(needle: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle.encode() in env:
            out.append(int(entry.name))
    return out


@contextlib.contextmanager
def running_rabbitmq(timeout: float = 90.0) -> Iterator[RabbitMQ]:
    require(Path(SERVER).exists(), "rabbitmq-server (scripts/setup/openstack.sh installs it)")
    d = Path(tempfile.mkdtemp(prefix="tsrabbit-"))
    amqp, mgmt, dist, epmd = free_port(), free_port(), free_port(), free_port()
    (d / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (d / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {mgmt}\n"
        "collect_statistics_interval = 500\n"
        "vm_memory_high_watermark.absolute = 256MiB\ndisk_free_limit.absolute = 50MB\n"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(d),
        "RABBITMQ_NODENAME": f"ts{amqp}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp),
        "RABBITMQ_DIST_PORT": str(dist),
        "ERL_EPMD_PORT": str(epmd),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_CONF_ENV_FILE": "/dev/null",
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    node = RabbitMQ(d, amqp, mgmt, epmd, env)
    try:
        node.start(timeout)
        yield node
    finally:
        node.stop()
        shutil.rmtree(d, ignore_errors=True)
