"""Two controllers on two test hosts, one leader on an etcd lease in a third, one Docker engine in a fourth.

Every host is a network namespace on a test bridge (tests/helpers/dockerd.py); each controller runs
`tierscale run` inside its own, with its own state dir, API and nginx on its host's address, and the
same group config. Under steady load through both controllers' balancers:
  c1 leads and makes the replicas; c2 stands by and balances them; a change sent to c2 is refused with
  c1's address, and the CLI re-sends it there;
  c1 SIGKILLed: c2 takes over within lease_ttl + a try, at c1's count, making nothing twice;
  c1 back: a standby; c2's host cut off (a partition): c2 stops acting, c1 takes over; c2 back: standby.
Then the event timelines of both controllers are checked: their acting intervals never overlap, and every
create/delete lies inside its controller's interval.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.dockerd import (
    Bridge,
    attach_namespace,
    demo_image_built,
    detach_namespace,
    namespaced_dockerd,
    shared_bridge,
)
from helpers.e2e import events, failed_message, nginx_processes, run_tierscale, wait_for
from helpers.etcd import running_etcd
from tierscale.loadgen import LoadRunner
from tierscale.providers.docker import LABEL_GROUP
from tierscale.providers.docker_image import DEMO_IMAGE

pytestmark = pytest.mark.e2e

TTL = 10.0  # the default: the failover goal is median <= lease_ttl + 2 s


def _open(req: urllib.request.Request, timeout: float = 5) -> Any:
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
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{self.netns}",
                    sys.executable,
                    "-m",
                    "tierscale",
                    "run",
                    str(self.path),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def status(self, group: str) -> dict[str, Any]:
        try:
            with _open(urllib.request.Request(f"http://{self.api}/api/groups/{group}"), timeout=3) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return {}

    def role(self, group: str) -> str | None:
        ha = self.status(group).get("ha") or {}
        return ha.get("role")

    def link(self, up: bool) -> None:
        subprocess.run(["ip", "link", "set", self.veth, "up" if up else "down"], check=True, timeout=10)


def write_config(ctl: Ctl, group: str, etcd_url: str, engine: str) -> None:
    ctl.path.parent.mkdir(parents=True, exist_ok=True)
    ctl.path.write_text(
        f"""\
state_dir: {ctl.state}
api: {{listen: "{ctl.api}"}}
ha: {{endpoints: ["{etcd_url}"], name: {ctl.name}}}
groups:
  - name: {group}
    tier: docker
    min: 2
    max: 4
    sync_period: 1s
    template: {{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 32m, hosts: [{engine}]}}
    health: {{path: /healthz, interval: 300ms, timeout: 3s, healthy_after: 1, unhealthy_after: 2,
             startup_grace: 15s}}
    metrics: [{{type: cpu, target: 95}}]
    drain_timeout: 5s
    balancer: {{type: nginx, listen: "{ctl.address}:8080"}}
"""
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Any, Any, list[Ctl], str]]:
    demo_image_built()
    tag = secrets.token_hex(2)
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
        ctls = [Ctl(f"c{i}", br, 30 + i, tmp_path, tag) for i in (1, 2)]
        for c in ctls:
            c.veth = attach_namespace(c.netns, c.veth_tag, br, c.address)
            stack.callback(detach_namespace, c.netns, c.veth)
        yield engine, etcd, ctls, f"tcp://{engine.address}:2375"


def test_two_controllers_one_leader_survive_a_kill_and_a_partition(
    hosts: tuple[Any, Any, list[Ctl], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, etcd, (c1, c2), engine_url = hosts
    token = secrets.token_hex(16)
    monkeypatch.setenv("TIERSCALE_API_TOKEN", token)
    group = "ha-" + secrets.token_hex(3)
    for c in (c1, c2):
        write_config(c, group, etcd.url, engine_url)
    client = docker.DockerClient(base_url=engine.base_url, version="auto", timeout=30)

    def ours() -> list[Any]:
        return client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_GROUP}={group}"})

    takeovers: list[float] = []
    killed_at = killed_wall = 0.0
    try:
        c1.start()
        wait_for(
            lambda: c1.role(group) == "leader" and c1.status(group).get("ready") == 2,
            90,
            what="c1 leads, 2 ready",
        )
        c2.start()
        wait_for(
            lambda: c2.role(group) == "standby" and c2.status(group).get("ready") == 2,
            60,
            what="c2 stands by with both replicas in its balancer",
        )
        assert (c2.status(group)["ha"] or {})["leader"] == "c1"
        with LoadRunner(c2.url, 15, 900, timeout=10) as load2:
            with LoadRunner(c1.url, 15, 900, timeout=10) as load1:
                # ---- a change sent to the standby: refused naming the leader, which the CLI re-sends to
                req = urllib.request.Request(
                    f"http://{c2.api}/api/groups/{group}/scale",
                    data=b'{"replicas": 3}',
                    method="POST",
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                )
                with pytest.raises(urllib.error.HTTPError) as refused:
                    _open(req)
                assert refused.value.code == 409
                assert refused.value.headers.get("X-Tierscale-Leader") == c1.api
                out = run_tierscale("scale", group, "3", "--api", f"http://{c2.api}")
                assert out.returncode == 0, out.stdout + out.stderr
                wait_for(lambda: c1.status(group).get("ready") == 3, 60, what="3 ready on c1")
                wait_for(lambda: c2.status(group).get("ready") == 3, 30, what="c2 balances the third")
                time.sleep(2)  # both balancers send to all three before the kill
                # ---- the leader SIGKILLed: its balancer stops changing, so its load stops too
                load1.stop()
                c1.kill()
                killed_at, killed_wall = time.monotonic(), time.time()
            result1 = load1.result(timeout=30)
            wait_for(lambda: c2.role(group) == "leader", TTL + 20, interval=0.1, what="c2 takes over")
            takeovers.append(time.monotonic() - killed_at)
            st = c2.status(group)
            assert st["desired"] == 3 and st["paused"] is True  # c1's count and pause, not c2's memory
            time.sleep(3)
            assert len(ours()) == 3  # nothing made twice
            assert events(c2.state, group, "leader_takeover")
            # the new leader acts: back to 2 (its drain needs no ack from a dead controller)
            out = run_tierscale("scale", group, "2", "--api", f"http://{c2.api}")
            assert out.returncode == 0, out.stdout + out.stderr
            wait_for(lambda: len(ours()) == 2, 60, what="2 containers")
            # ---- c1 back: adopts, stands by
            c1.start()
            wait_for(
                lambda: c1.role(group) == "standby" and c1.status(group).get("ready") == 2,
                60,
                what="c1 back as a standby",
            )
            with LoadRunner(c1.url, 15, 900, timeout=10) as load1b:
                time.sleep(2)
                # ---- the leader's host cut off: it stops acting, c1 takes over
                load2.stop()
                cut = time.monotonic()
                c2.link(up=False)
                wait_for(lambda: c1.role(group) == "leader", TTL + 20, interval=0.1, what="c1 takes over")
                takeovers.append(time.monotonic() - cut)
                c2.link(up=True)
                wait_for(
                    lambda: (c2.status(group).get("ha") or {}).get("leader") == "c1",
                    30,
                    what="c2 back, seeing c1 lead",
                )
                assert c2.role(group) == "standby"
                assert len(ours()) == 2
                load1b.stop()
            result1b = load1b.result(timeout=30)
        result2 = load2.result(timeout=30)
        for r in (result1, result2, result1b):
            assert r.sent > 0 and r.failed == 0, failed_message(r)
        # ---- the timelines: never two acting, every act inside its actor's term
        terms = {c.name: acting_terms(c, group, killed_wall if c is c1 else None) for c in (c1, c2)}
        spans = sorted((s, e, n) for n, ts in terms.items() for s, e in ts)
        for (_s1, e1, n1), (s2, _e2, n2) in itertools.pairwise(spans):
            assert e1 <= s2, f"{n1} acted until {e1} but {n2} from {s2}"
        for c in (c1, c2):
            # An act is checked against the deadline when it starts and recorded when the tier answers:
            # it lies after its term's start and at most one tier call (30 s) after its end.
            for e in events(c.state, group, "replica_created", "replica_deleted"):
                inside = any(s <= e.ts <= end + 30 for s, end in terms[c.name])
                assert inside, f"{c.name}: {e.kind} at {e.ts} outside its terms {terms[c.name]}"
        print(
            f"\nha takeover (lease_ttl {TTL:g}s): after SIGKILL {takeovers[0]:.1f}s, after a partition "
            f"{takeovers[1]:.1f}s (median {statistics.median(takeovers):.1f}s); failed requests "
            + ", ".join(f"{r.failed}/{r.sent}" for r in (result1, result2, result1b))
        )
    finally:
        for c in (c1, c2):
            with contextlib.suppress(Exception):
                c.link(up=True)
            c.stop()
        for c in (c1, c2):
            for p in nginx_processes(c.state):
                with contextlib.suppress(Exception):
                    p.kill()
        leaked = ours()
        for x in leaked:
            x.remove(force=True)
        client.close()


def acting_terms(ctl: Ctl, group: str, kill_wall: float | None) -> list[tuple[float, float]]:
    """(start, end) wall times this controller led, from its own leader_elected / leader_lost events
    (a lost term ends at the local deadline the event names, when it stopped acting); a term still open
    ends now, or when the controller was SIGKILLed (it could record nothing)."""
    terms: list[tuple[float, float]] = []
    start = None
    for e in events(ctl.state, group, "leader_elected", "leader_lost"):
        if e.kind == "leader_elected" and start is None:
            start = e.ts
        elif e.kind == "leader_lost" and start is not None:
            terms.append((start, float((e.data or {}).get("acting_until") or e.ts)))
            start = None
        elif e.kind == "leader_elected" and start is not None and kill_wall is not None:
            # elected again after the SIGKILL: the first term ended at the kill
            terms.append((start, kill_wall))
            start = e.ts
    if start is not None:
        terms.append((start, time.time()))
    return terms
