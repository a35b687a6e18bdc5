"""Several controllers, etcd and a Docker engine, each on its own test host, for the ha tests and chaos.

Every host is a network namespace on one test bridge (tests/helpers/dockerd.py): the engine at .11, etcd
at .21, controller N at .3N. Each controller runs `tierscale run` inside its namespace with its own
state dir, API (:9900) and nginx (:8080) on its host's address, and the same group config; the tests
and the load reach them on those addresses. `ha_fleet()` builds it and removes all of it: controllers
stopped, their nginx masters killed, the group's containers removed, namespaces, etcd and engine gone.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from helpers.dockerd import (
    Bridge,
    NamespacedDockerd,
    attach_namespace,
    demo_image_built,
    detach_namespace,
    namespaced_dockerd,
    shared_bridge,
)
from helpers.e2e import events, nginx_processes
from helpers.etcd import Etcd, running_etcd
from tierscale.providers.docker import LABEL_GROUP
from tierscale.providers.docker_image import DEMO_IMAGE


def http_open(req: urllib.request.Request | str, timeout: float = 5) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(req, timeout=timeout)


class Ctl:
    """One controller host: its namespace, config, `tierscale run` process and API."""

    def __init__(self, name: str, br: Bridge, index: int, tmp: Path, tag: str) -> None:
        self.name = name
        self.address = br.host(index)
        self.netns = f"tsc-{tag}{name}"
        self.veth_tag = f"{tag}{name}"
        self.veth = ""
        self.state = tmp / name / "state"
        self.path = tmp / name / "config.yaml"
        self.log = tmp / name / "run.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"{self.address}:9900"

    @property
    def url(self) -> str:
        return f"http://{self.address}:8080/work?ms=5"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable, "-m", "tierscale", "run"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*argv, str(self.path)], stdout=out, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def status(self, group: str) -> dict[str, Any]:
        try:
            with http_open(f"http://{self.api}/api/groups/{group}", timeout=3) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return {}

    def ha(self, group: str) -> dict[str, Any]:
        return self.status(group).get("ha") or {}

    def role(self, group: str) -> str | None:
        return self.ha(group).get("role")

    def link(self, up: bool) -> None:
        subprocess.run(["ip", "link", "set", self.veth, "up" if up else "down"], check=True, timeout=10)


def write_config(ctl: Ctl, group: str, etcd_url: str, engine: str, ttl: float) -> None:
    ctl.path.parent.mkdir(parents=True, exist_ok=True)
    ctl.path.write_text(
        f"""\
state_dir: {ctl.state}
api: {{listen: "{ctl.api}"}}
ha: {{endpoints: ["{etcd_url}"], name: {ctl.name}, lease_ttl: {ttl:g}s}}
groups:
  - name: {group}
    tier: docker
    min: 2
    max: 4
    sync_period: 1s
    template: {{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 32m, hosts: [{engine}]}}
    health: {{path: /healthz, interval: 300ms, timeout: 3s, healthy_after: 1, unhealthy_after: 2,
             startup_grace: 15s}}
    metrics: [{{type: cpu, target: 95}}, {{type: requests_per_replica, target: 1000}}]
    drain_timeout: 5s
    balancer: {{type: nginx, listen: "{ctl.address}:8080"}}
"""
    )


@dataclass
class HaFleet:
    engine: NamespacedDockerd
    etcd: Etcd
    ctls: list[Ctl]
    group: str
    client: Any  # docker.DockerClient of the engine

    def ours(self) -> list[Any]:
        return self.client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL_GROUP}={self.group}"}
        )

    def running_ours(self) -> int:
        return sum(c.attrs.get("State") == "running" for c in self.ours())

    def leaders(self) -> list[Ctl]:
        return [c for c in self.ctls if c.running() and c.role(self.group) == "leader"]


@contextlib.contextmanager
def ha_fleet(tmp: Path, group: str, controllers: int = 2, ttl: float = 10.0) -> Iterator[HaFleet]:
    demo_image_built()
    tag = group[-4:]
    with contextlib.ExitStack() as stack:
        br = stack.enter_context(shared_bridge())
        engine = stack.enter_context(
            namespaced_dockerd(br, host=11, extra_args=["-H", f"tcp://{br.host(11)}:2375"])
        )
        engine.load_images(DEMO_IMAGE)
        etcd_ns = f"tse-{tag}"
        veth = attach_namespace(etcd_ns, f"{tag}e", br, br.host(21))
        stack.callback(detach_namespace, etcd_ns, veth)
        etcd = stack.enter_context(running_etcd(br.host(21), 2379, netns=etcd_ns, peer_port=2380))
        ctls = [Ctl(f"c{i}", br, 30 + i, tmp, tag) for i in range(1, controllers + 1)]
        for c in ctls:
            c.veth = attach_namespace(c.netns, c.veth_tag, br, c.address)
            stack.callback(detach_namespace, c.netns, c.veth)
            write_config(c, group, etcd.url, f"tcp://{engine.address}:2375", ttl)
        client = docker.DockerClient(base_url=engine.base_url, version="auto", timeout=30)
        stack.callback(client.close)
        fleet = HaFleet(engine, etcd, ctls, group, client)
        try:
            yield fleet
        finally:
            for c in ctls:
                with contextlib.suppress(Exception):
                    c.link(up=True)
                c.stop()
            for c in ctls:
                for p in nginx_processes(c.state):
                    with contextlib.suppress(Exception):
                        p.kill()
            for x in fleet.ours():
                x.remove(force=True)


def acting_terms(ctl: Ctl, group: str, kills: list[float]) -> list[tuple[float, float]]:
    """(start, end) wall times this controller led, from its own leader_elected / leader_lost events (a
    lost term ends at the local deadline the event names: when it stopped acting). A term still open when
    the controller was SIGKILLed (wall times in `kills`) ends at that kill; one open now ends now."""
    import time

    terms: list[tuple[float, float]] = []
    start: float | None = None
    marks = [(e.ts, e.kind, e.data or {}) for e in events(ctl.state, group, "leader_elected", "leader_lost")]
    marks += [(t, "killed", {}) for t in kills]
    for ts, kind, data in sorted(marks, key=lambda m: m[0]):
        if kind == "leader_elected" and start is None:
            start = ts
        elif kind == "leader_lost" and start is not None:
            terms.append((start, float(data.get("acting_until") or ts)))
            start = None
        elif kind == "killed" and start is not None:
            terms.append((start, ts))
            start = None
    if start is not None:
        terms.append((start, time.time()))
    return terms


def overlaps(terms: dict[str, list[tuple[float, float]]]) -> list[str]:
    """Where two controllers' acting terms overlap (none, when the fencing holds)."""
    spans = sorted((s, e, n) for n, ts in terms.items() for s, e in ts)
    out = []
    for i, (_s1, e1, n1) in enumerate(spans):
        for s2, _e2, n2 in spans[i + 1 :]:
            if s2 < e1 and n2 != n1:
                out.append(f"{n1} acted until {e1:.2f} but {n2} from {s2:.2f}")
    return out


def acts_outside(ctl: Ctl, group: str, terms: list[tuple[float, float]], slack: float = 30.0) -> list[str]:
    """Creates/deletes this controller recorded outside its terms. An act is checked against the
    deadline when it starts and recorded when the tier answers: after its term's start, and at most one
    tier call (`slack`) after its end."""
    return [
        f"{ctl.name}: {e.kind} at {e.ts:.2f}"
        for e in events(ctl.state, group, "replica_created", "replica_deleted")
        if not any(s <= e.ts <= end + slack for s, end in terms)
    ]
