"""One docker group over three engine hosts: spread placement under load, a host's link cut and back.

The hosts are network namespaces on a test bridge, each with its own dockerd listening on its own
address (tests/helpers/dockerd.py); the controller, nginx and the load run in the root namespace and
reach the replicas on the hosts' addresses, as they would reach remote machines.

One test walks the whole story (starting three engines is the expensive part):
  1 → 6 replicas under load, 2 per host, 0 failed requests;
  host B's link cut at 6: its replicas leave the balancer at once and are replaced on A and C after
  host_timeout; requests fail only around the cut (in flight to B); a container on B that is not ours
  stays untouched;
  B back: its old replicas are the surplus and are removed, nothing is duplicated;
  the load ends → 1 replica, and `tierscale hosts` / `drain` work against the running controller.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from helpers.dockerd import Bridge, NamespacedDockerd, demo_image_built, namespaced_dockerd, shared_bridge
from helpers.e2e import (
    balancer_log_tail,
    events,
    failed_message,
    group_config,
    nginx_processes,
    run_tierscale,
    wait_for,
)
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner
from tierscale.providers.docker import LABEL_GROUP
from tierscale.providers.docker_image import DEMO_IMAGE
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

HOST_TIMEOUT = 5.0
SYNC = 1.0


class Fleet3:
    def __init__(self, bridge: Bridge, engines: list[NamespacedDockerd]) -> None:
        self.bridge = bridge
        self.engines = engines

    def url(self, e: NamespacedDockerd) -> str:
        return f"tcp://{e.address}:2375"

    def ours(self, e: NamespacedDockerd, group: str) -> list[Any]:
        client = docker.DockerClient(base_url=e.base_url, version="auto", timeout=30)
        try:
            # sparse: one list call, no inspect per container (which 404s on one being removed meanwhile)
            return client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_GROUP}={group}"})
        finally:
            client.close()

    def running(self, group: str) -> list[int]:
        return [sum(c.attrs.get("State") == "running" for c in self.ours(e, group)) for e in self.engines]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet3]:
    demo_image_built()
    with contextlib.ExitStack() as stack:
        br = stack.enter_context(shared_bridge())
        engines = []
        for i in range(3):
            address = br.host(11 + i)
            e = stack.enter_context(
                namespaced_dockerd(br, host=11 + i, extra_args=["-H", f"tcp://{address}:2375"])
            )
            e.load_images(DEMO_IMAGE)
            engines.append(e)
        yield Fleet3(br, engines)


def link(e: NamespacedDockerd, up: bool) -> None:
    """The host's cable: its veth on the bridge side, down or up."""
    subprocess.run(["ip", "link", "set", f"tsv-{e.name}", "up" if up else "down"], check=True, timeout=10)


def test_group_over_three_engines_spreads_survives_a_lost_host_and_takes_it_back(
    tmp_path: Path, fleet: Fleet3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERSCALE_API_TOKEN", secrets.token_hex(16))  # the controller's and the CLI's
    a, b, _ = fleet.engines
    name = "dh-" + secrets.token_hex(3)
    hosts = ", ".join(fleet.url(e) for e in fleet.engines)
    template = f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.25, memory: 32m, hosts: [{hosts}]}}"
    cfg, path = group_config(
        tmp_path / "state",
        "docker",
        template,
        name=name,
        min_=1,
        max_=6,
        metrics="[{type: requests_per_replica, target: 4}]",
        extra=f"    host_timeout: {HOST_TIMEOUT:g}s\n    placement: {{strategy: spread}}\n",
    )
    # A container on host B that tierscale did not make: it must survive everything below.
    bystander = b.docker("run", "-d", "--name", f"by-{name}", DEMO_IMAGE).stdout.strip()
    rate = {"rps": 40.0}
    url = f"http://{cfg.groups[0].balancer.listen}/work?ms=5"
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(name)["ready"] >= 1, 60, what="first replica ready")
            started = time.monotonic()
            with LoadRunner(url, lambda t: rate["rps"], 600, timeout=15) as runner:
                # ---- 1 → 6, spread 2 per host, nothing failed
                wait_for(lambda: bg.status(name)["ready"] == 6, 90, what="6 ready replicas")
                assert fleet.running(name) == [2, 2, 2]
                peak = {r["id"]: r["host"] for r in bg.status(name)["replicas"]}
                assert set(peak.values()) == {fleet.url(e) for e in fleet.engines}
                time.sleep(3)  # every ready replica gets traffic before the cut
                on_b = {rid for rid, h in peak.items() if h == fleet.url(b)}
                # ---- B's link cut
                cut = time.monotonic()
                link(b, up=False)
                wait_for(
                    lambda: (
                        {r["id"] for r in bg.status(name)["replicas"] if r["state"] == "unreachable"} == on_b
                    ),
                    10,
                    what="B's replicas marked unreachable",
                )
                out_of_balancer = time.monotonic()

                def replaced() -> bool:
                    st = bg.status(name)
                    counted = [r for r in st["replicas"] if r["id"] not in on_b and r["state"] == "ready"]
                    return len(counted) == 6

                wait_for(replaced, HOST_TIMEOUT + 30, interval=0.2, what="B's replicas replaced on A and C")
                replaced_at = time.monotonic()
                assert [fleet.running(name)[i] for i in (0, 2)] == [3, 3]
                lost = events(Path(cfg.state_dir), name, "host_unreachable", "host_lost")
                assert [e.kind for e in lost] == ["host_unreachable", "host_lost"]
                assert lost[1].ts - lost[0].ts >= HOST_TIMEOUT
                # ---- B back: its old replicas are surplus, removed; nothing duplicated
                link(b, up=True)
                wait_for(lambda: not fleet.ours(b, name), 90, what="B's old replicas removed")
                wait_for(lambda: bg.status(name)["ready"] == 6, 30, what="6 ready after B's return")
                assert sum(fleet.running(name)) == 6
                assert events(Path(cfg.state_dir), name, "host_back")
                back_ok = time.monotonic()
                # ---- the CLI against the running controller: list, then drain A under the same load
                out = run_tierscale("hosts", "-c", path)
                assert out.returncode == 0, out.stderr
                assert all(fleet.url(e) in out.stdout for e in fleet.engines)
                out = run_tierscale("drain", f"{a.address}:2375", "-c", path)
                assert out.returncode == 0 and "draining" in out.stdout, out.stdout + out.stderr
                wait_for(lambda: not fleet.ours(a, name), 120, interval=0.5, what="A drained")
                wait_for(lambda: bg.status(name)["ready"] == 6, 30, what="6 ready after the drain")
                assert fleet.running(name)[1:] == [3, 3]
                # Recorded by the pass that sees the host empty, which may come after the 6th is ready.
                wait_for(lambda: events(Path(cfg.state_dir), name, "host_drained"), 20, what="host_drained")
                drained_at = time.monotonic()
                out = run_tierscale("uncordon", fleet.url(a), "-c", path)
                assert out.returncode == 0, out.stderr
                # ---- the load ends → back to 1
                rate["rps"] = 0.5
                wait_for(lambda: sum(fleet.running(name)) == 1, 90, interval=0.5, what="back to 1")
            result = runner.result(timeout=30)
            bad = [t for t, code, _ in result.timeline if code != 200]
            cut_at = cut - started
            # In flight to B when its link went down, or sent before nginx was told (a few seconds).
            window = (cut_at - 1, out_of_balancer - started + 2)
            outside = [round(t, 1) for t in bad if not window[0] <= t <= window[1]]
            phases = {
                k: round(v - started, 1)
                for k, v in (
                    ("cut", cut),
                    ("out_of_balancer", out_of_balancer),
                    ("replaced", replaced_at),
                    ("back_settled", back_ok),
                    ("drained", drained_at),
                )
            }
            why = f"{failed_message(result)}\nphases {phases}\n{balancer_log_tail(Path(cfg.state_dir), name)}"
            assert not outside, why
            assert len(bad) <= 40 * (window[1] - window[0]) * 0.5, why
            print(
                f"\nhost loss: cut → out of balancer {out_of_balancer - cut:.1f}s, → replaced "
                f"{replaced_at - cut:.1f}s (host_timeout {HOST_TIMEOUT:g}s, sync {SYNC:g}s); back → "
                f"settled {back_ok - replaced_at:.1f}s; drain of A {drained_at - back_ok:.1f}s; "
                f"{len(bad)} failed of {result.sent}"
            )
        assert b.docker("inspect", "-f", "{{.State.Running}}", bystander).stdout.strip() == "true"
    finally:
        with contextlib.suppress(Exception):
            link(b, up=True)
        with contextlib.suppress(Exception):
            down(cfg)
        leaked = [c for e in fleet.engines for c in fleet.ours(e, name)]
        for leftover in leaked:
            leftover.remove(force=True)
        b.docker("rm", "-f", bystander, check=False)
        assert not leaked, [x.name for x in leaked]
        assert not nginx_processes(Path(cfg.state_dir))
