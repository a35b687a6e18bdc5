"""A second Docker engine in a network namespace of its own: another "host" on this machine.

    with namespaced_dockerd(swarm=True) as engine:       # 1-20 s to start, depending on the machine
        engine.load_images("tierscale/demo:latest")      # images are not shared between engines
        engine.docker("service", "create", ...)          # the docker CLI against this engine
        client = engine.client()                         # or the Docker SDK

What it sets up (all of it removed when the block ends, whatever happened in it):
  - a network namespace with a veth pair to a bridge in the root namespace, on a /24 the tests own
    (10.231.N.0/24 by default: the bridge is .1, the engine's host address `engine.address` is .11).
    No default route: from the namespace nothing outside that /24 is reachable (no registry, no
    internet), and the engine runs with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1, so Swarm tasks use the
    loaded image instead of trying a registry first (pass `--no-resolve-image` to `service create`);
  - dockerd started with `nsenter --net=…` (not `ip netns exec`, whose private /sys hides the cgroup
    hierarchy from dockerd), with its own --data-root, --exec-root, unix socket, pidfile and docker0
    (`--bip`), and so its own containerd, iptables rules and container networks inside the namespace;
  - optionally a single-node Swarm (`swarm=True`, or `engine.init_swarm()` later).

Teardown: services and containers removed, the swarm left, dockerd stopped by its pid (SIGKILL after
`stop_timeout`, and its containerd with it), mounts under its directories unmounted, the namespace, veth
and bridge (with the root namespace's FORWARD rule for it) deleted, the directories removed. Anything
still left after that is raised as an error (unless the block itself raised, which is then not masked).

Several engines on one bridge (a fleet): `with shared_bridge() as br, namespaced_dockerd(br, host=11) as
a, namespaced_dockerd(br, host=12) as b:` — each namespace gets its own veth onto `br`, and the engines can
reach each other's addresses (a multi-node swarm: `b.join_swarm(a)`; every node reports this machine's
hostname, so tell them apart by `engine.address`).

Facts this is built on (this machine, Docker 20.10): /work/shared/notes/test-hosts.md. The kernel here has
no IPVS (CONFIG_IP_VS is not set), so Swarm's VIP load balancing and its ingress routing mesh cannot
work; services on an overlay network with `--endpoint-mode dnsrr` (Swarm's DNS hands out task addresses)
and `--publish mode=host` do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

RANGE = ipaddress.ip_network("10.231.0.0/16")  # the tests' own addresses: one /24 per bridge
DOCKER_BIP = "172.31.250.1/24"  # the namespaced engine's docker0 (only visible inside its namespace)
SWARM_POOL = "172.30.0.0/16"  # overlay networks of a namespaced swarm (inside the namespace too)


class DockerdError(RuntimeError):
    """The namespaced engine could not be set up or torn down; the message says which step and why."""


def _run(
    cmd: Sequence[str], timeout: float = 60, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise DockerdError(f"{' '.join(cmd)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _used_24s() -> set[ipaddress.IPv4Network]:
    out = _run(["ip", "-j", "-4", "addr"]).stdout
    used = set()
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError):
                used.add(ipaddress.ip_network(f"{a['local']}/24", strict=False))
    return used


@dataclass
class Bridge:
    """A bridge in the root namespace on a /24 of RANGE; `address` (.1) is the root namespace's side."""

    name: str
    network: ipaddress.IPv4Network

    @property
    def address(self) -> str:
        return str(self.network.network_address + 1)

    def host(self, index: int) -> str:
        """The address of host number `index` (2..254) on this bridge."""
        return str(self.network.network_address + index)


@contextlib.contextmanager
def shared_bridge(network: str | None = None, name: str | None = None) -> Iterator[Bridge]:
    """A bridge for namespaced engines, on `network` (a /24) or the first /24 of RANGE nobody uses.

    (Not called test_*: a test module importing it would have pytest collect it as a test.)"""
    if network is None:
        used = _used_24s()
        free = next((n for n in RANGE.subnets(new_prefix=24) if n not in used), None)
        if free is None:
            raise DockerdError(f"no free /24 left in {RANGE}")
        net = free
    else:
        net = ipaddress.ip_network(network)
    br = Bridge(name or f"tsbr-{secrets.token_hex(3)}", net)  # interface names: at most 15 characters
    forward = ["-i", br.name, "-o", br.name, "-j", "ACCEPT"]
    forwarding = False
    try:
        _run(["ip", "link", "add", br.name, "type", "bridge"])
        _run(["ip", "addr", "add", f"{br.address}/{net.prefixlen}", "dev", br.name])
        _run(["ip", "link", "set", br.name, "up"])
        # br_netfilter is on (bridge-nf-call-iptables = 1) and the main engine sets the root namespace's
        # FORWARD policy to DROP: without this, engines on the bridge cannot reach each other.
        _run(["iptables", "-I", "FORWARD", *forward])
        forwarding = True
        yield br
    finally:
        if forwarding:
            _run(["iptables", "-D", "FORWARD", *forward], check=False)
        _run(["ip", "link", "del", br.name], check=False)


def attach_namespace(netns: str, tag: str, br: Bridge, address: str) -> str:
    """A new network namespace `netns` on `br` at `address`: veth tsv-TAG on the bridge, tsn-TAG inside.
    Returns the bridge-side veth (its "cable": `ip link set tsv-TAG down` cuts the host off)."""
    veth_host, veth_ns = f"tsv-{tag}", f"tsn-{tag}"
    _run(["ip", "netns", "add", netns])
    _run(["ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns])
    _run(["ip", "link", "set", veth_host, "master", br.name, "up"])
    _run(["ip", "link", "set", veth_ns, "netns", netns])
    ns = ["ip", "-n", netns]
    _run([*ns, "addr", "add", f"{address}/{br.network.prefixlen}", "dev", veth_ns])
    _run([*ns, "link", "set", veth_ns, "up"])
    _run([*ns, "link", "set", "lo", "up"])
    # No default route: from the namespace only the bridge's /24 is reachable, nothing outside.
    return veth_host


def detach_namespace(netns: str, veth: str) -> list[str]:
    """Delete the namespace and its veth; returns what could not be deleted."""
    problems = []
    if Path(f"/var/run/netns/{netns}").exists():
        r = _run(["ip", "netns", "del", netns], check=False)
        if r.returncode != 0:
            problems.append(f"ip netns del {netns}: {r.stderr.strip()}")
    if veth:
        _run(["ip", "link", "del", veth], check=False)  # gone with the namespace, normally
    return problems


@dataclass
class NamespacedDockerd:
    """A running engine; the docker CLI and SDK reach it at `base_url` (a unix socket)."""

    name: str
    netns: str  # `ip netns` name; /var/run/netns/<netns>
    address: str  # the engine host's address inside the namespace (on `bridge`)
    bridge: Bridge
    root: Path  # data-root, exec-root, socket, pidfile and dockerd.log live here
    pid: int = 0
    in_swarm: bool = False
    _veth: str = field(default="", repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _argv: list[str] = field(default_factory=list, repr=False)
    _env: dict[str, str] = field(default_factory=dict, repr=False)

    def start(self, timeout: float) -> None:
        """(Re)start dockerd with the arguments it was first started with; wait until it answers."""
        with self.log.open("ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
            self.proc = subprocess.Popen(
                self._argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self._env
            )
        self.pid = self.proc.pid
        _wait_answering(self, self.proc, timeout)

    def crash(self) -> None:
        """The host's engine dies: dockerd, its containerd and the container shims SIGKILLed (so the
        containers die too), the way a crashed or rebooted machine loses them. `start` brings it back."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc.wait(30)
        psutil.wait_procs(procs, timeout=10)
        with contextlib.suppress(OSError):
            (self.root / "dockerd.pid").unlink()

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def nsenter(self, *cmd: str) -> list[str]:
        """`cmd` as run inside the engine's network namespace (only the network: files are shared)."""
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this engine, output captured; DockerdError when it fails (`check`)."""
        return _run(["docker", "-H", self.base_url, *args], timeout=timeout, check=check)

    def client(self, timeout: int = 60) -> Any:
        """A Docker SDK client for this engine (close it)."""
        import docker

        return docker.DockerClient(base_url=self.base_url, version="auto", timeout=timeout)

    def load_images(self, *images: str, from_host: str | None = None) -> None:
        """`docker save IMAGE… | docker -H <this engine> load`, from the default engine (or `from_host`)."""
        src = ["docker", *(["-H", from_host] if from_host else []), "save", *images]
        with subprocess.Popen(src, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as save:
            load = subprocess.run(
                ["docker", "-H", self.base_url, "load"], stdin=save.stdout, capture_output=True, timeout=300
            )
            assert save.stdout is not None
            save.stdout.close()
            err = save.stderr.read().decode() if save.stderr else ""
            save.wait(60)
        if save.returncode != 0 or load.returncode != 0:
            raise DockerdError(f"loading {images} failed: {err.strip()} {load.stderr.decode().strip()}")

    def init_swarm(self) -> None:
        """A single-node swarm advertised on `address`."""
        self.docker(
            "swarm",
            "init",
            "--advertise-addr",
            self.address,
            "--listen-addr",
            f"{self.address}:2377",
            "--default-addr-pool",
            SWARM_POOL,
        )
        self.in_swarm = True

    def join_swarm(self, manager: NamespacedDockerd, role: str = "worker") -> None:
        """Join the swarm `manager` leads, over the bridge they share."""
        token = manager.docker("swarm", "join-token", "-q", role).stdout.strip()
        self.docker(
            "swarm", "join", "--token", token, "--advertise-addr", self.address, f"{manager.address}:2377"
        )
        self.in_swarm = True

    def container_pid(self, container: str) -> int:
        """The host pid of a container's main process: `nsenter --net=/proc/PID/ns/net` enters its network."""
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())


def _wait_answering(engine: NamespacedDockerd, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = engine.log.read_text(errors="replace")[-2000:] if engine.log.exists() else ""
            raise DockerdError(f"dockerd exited with {proc.returncode} while starting:\n{tail}")
        if engine.socket.exists():
            try:
                if engine.docker("version", timeout=10, check=False).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass  # the socket is there but the engine is still starting up: ask again
        if time.monotonic() > deadline:
            raise DockerdError(
                f"dockerd did not answer on {engine.socket} within {timeout:g}s (see {engine.log})"
            )
        time.sleep(0.25)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)  # deepest first


def _teardown_engine(
    engine: NamespacedDockerd, proc: subprocess.Popen[bytes] | None, stop_timeout: float
) -> list[str]:
    """Best effort, every step; returns what could not be cleaned."""
    problems: list[str] = []
    answering = proc is not None and proc.poll() is None and engine.socket.exists()
    if answering:
        if engine.in_swarm:
            services = engine.docker("service", "ls", "-q", check=False).stdout.split()
            if services:
                engine.docker("service", "rm", *services, check=False)
        ids = engine.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            engine.docker("rm", "-f", *ids, check=False, timeout=180)
        if engine.in_swarm:
            r = engine.docker("swarm", "leave", "--force", check=False, timeout=120)
            if r.returncode != 0:
                problems.append(f"swarm leave: {r.stderr.strip()}")
        engine.docker("network", "prune", "-f", check=False)
    if proc is not None and proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)  # its containerd and shims
        except psutil.Error:
            children = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"dockerd {proc.pid} ignored SIGTERM for {stop_timeout:g}s: killed")
            proc.kill()
            proc.wait(30)
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
    for point in _mounts_under(engine.root):
        if _run(["umount", point], check=False).returncode != 0:
            _run(["umount", "-l", point], check=False)
    problems += detach_namespace(engine.netns, engine._veth or f"tsv-{engine.name}")
    shutil.rmtree(engine.root, ignore_errors=True)
    if engine.root.exists():
        problems.append(f"{engine.root} could not be removed")
    return problems


@contextlib.contextmanager
def namespaced_dockerd(
    bridge: Bridge | None = None,
    host: int = 11,
    swarm: bool = False,
    name: str | None = None,
    start_timeout: float = 90.0,
    stop_timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> Iterator[NamespacedDockerd]:
    """Start dockerd in a new network namespace (as host number `host` on `bridge`, or on a bridge of
    its own), optionally init a single-node swarm, and remove all of it when the block ends."""
    for tool in ("dockerd", "docker", "nsenter", "ip"):
        if shutil.which(tool) is None:
            raise DockerdError(f"{tool} not found")
    if os.geteuid() != 0:
        raise DockerdError("a namespaced dockerd needs root")
    with contextlib.ExitStack() as stack:
        br = bridge if bridge is not None else stack.enter_context(shared_bridge())
        tag = name or secrets.token_hex(3)
        # /run/tsd-*: short, because containerd's sockets live under the exec-root (108-byte limit)
        root = Path(tempfile.mkdtemp(prefix=f"tsd-{tag}-", dir="/run"))
        engine = NamespacedDockerd(tag, f"tsd-{tag}", br.host(host), br, root)
        body_failed = False
        try:
            engine._veth = attach_namespace(engine.netns, tag, br, engine.address)
            for d in ("data", "exec"):
                (root / d).mkdir()
            engine._argv = engine.nsenter(
                "dockerd",
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "dockerd.pid"),
                "-H",
                engine.base_url,
                "--bip",
                DOCKER_BIP,
                *extra_args,
            )
            # Swarm tasks use the image on the node instead of asking a registry for a newer one first.
            engine._env = {**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
            engine.start(start_timeout)
            if swarm:
                engine.init_swarm()
            yield engine
        except BaseException:
            body_failed = True
            raise
        finally:
            problems = _teardown_engine(engine, engine.proc, stop_timeout)
            if problems and not body_failed:
                raise DockerdError("teardown left something behind: " + "; ".join(problems))


def demo_image_built() -> None:
    """The demo image on this machine's engine, to load into namespaced engines (fails clearly in CI
    when the engine is not running)."""
    import docker

    from helpers.ci import require
    from tierscale.providers.docker_image import build_demo_image

    try:
        local = docker.from_env(version="auto", timeout=30)
        local.ping()
    except Exception:
        local = None
    require(local is not None, "Docker engine (scripts/setup/docker.sh)")
    assert local is not None
    try:
        build_demo_image(local)
    finally:
        local.close()
