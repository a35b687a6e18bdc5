"""One libvirt group over two hypervisors: spread placement under load, the remote one's link cut and back.

Hypervisor A is the system libvirtd (qemu:///system; its guests forward on loopback); hypervisor B is a
second system libvirtd in a network namespace on a test bridge, reached as qemu+tcp://ADDRESS/system
(tests/helpers/hypervisor.py), whose guests forward on B's own address. TCG guests on two cores, so the
counts are small:
  1 → 4 VMs under load, 2 per hypervisor, 0 failed requests;
  B's link cut at 4: its VMs leave the balancer at once and are replaced on A after host_timeout;
  requests fail only around the cut (in flight to B);
  B back: its old VMs are the surplus and are removed, nothing is duplicated; the load ends → 1 VM.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.dockerd import shared_bridge
from helpers.e2e import balancer_log_tail, events, failed_message, nginx_processes, wait_for
from helpers.hypervisor import NamespacedLibvirtd, namespaced_libvirtd
from helpers.libvirt import group_domains, vm_group_config, wait_gone
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

HOST_TIMEOUT = 8.0
LOCAL = "qemu:///system"
RATE = 8.0  # requests per second at the peak: 4 VMs at the target of 2 each


@pytest.fixture
def hypervisor_b() -> Iterator[NamespacedLibvirtd]:
    with shared_bridge() as br, namespaced_libvirtd(br, host=12) as hv:
        yield hv


def _remote_domains(hv: NamespacedLibvirtd, group: str) -> list[str]:
    import libvirt

    conn = libvirt.open(hv.uri)
    try:
        return group_domains(conn, group)
    finally:
        conn.close()


def _per_host(bg: BackgroundController, group: str, state: str = "ready") -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in bg.status(group)["replicas"]:
        if r["state"] == state:
            counts[r["host"]] = counts.get(r["host"], 0) + 1
    return counts


def test_group_over_two_hypervisors_spreads_survives_a_lost_one_and_takes_it_back(
    tmp_path: Path,
    vm_group: str,
    vm_image: dict[str, Path],
    libvirtd: Any,
    hypervisor_b: NamespacedLibvirtd,
) -> None:
    hv = hypervisor_b
    template = (
        f"{{kernel: {vm_image['kernel']}, initrd: {vm_image['initrd']}, memory: 256MiB, "
        f"domain_type: qemu, uris: ['{LOCAL}', '{hv.uri}']}}"
    )
    cfg, _ = vm_group_config(
        tmp_path / "state",
        vm_group,
        template,
        min_=1,
        max_=4,
        metrics="[{type: requests_per_replica, target: 2}]",
        extra=f"    host_timeout: {HOST_TIMEOUT:g}s\n    placement: {{strategy: spread}}\n",
    )
    rate = {"rps": RATE}
    url = f"http://{cfg.groups[0].balancer.listen}/work?ms=2"
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(vm_group)["ready"] >= 1, 120, what="first VM ready")
            started = time.monotonic()
            # 30 s: a TCG guest on a loaded two-core machine can stall for seconds; a slow answer is an
            # answer (KVM guests do not stall like this).
            with LoadRunner(url, lambda t: rate["rps"], 900, timeout=30) as runner:
                # ---- 1 → 4, two per hypervisor, B's on B's own address
                wait_for(
                    lambda: _per_host(bg, vm_group) == {LOCAL: 2, hv.uri: 2}, 240, what="2 + 2 ready VMs"
                )
                on_b = {r["id"] for r in bg.status(vm_group)["replicas"] if r["host"] == hv.uri}
                assert all(
                    r["address"].startswith(f"{hv.address}:")
                    for r in bg.status(vm_group)["replicas"]
                    if r["id"] in on_b
                )
                assert len(_remote_domains(hv, vm_group)) == 2
                time.sleep(3)  # every ready VM gets traffic before the cut
                # ---- B's link cut
                cut = time.monotonic()
                hv.cut()
                wait_for(
                    lambda: (
                        {r["id"] for r in bg.status(vm_group)["replicas"] if r["state"] == "unreachable"}
                        == on_b
                    ),
                    15,
                    what="B's VMs marked unreachable",
                )
                out_of_balancer = time.monotonic()
                wait_for(
                    lambda: _per_host(bg, vm_group).get(LOCAL, 0) == 4,
                    HOST_TIMEOUT + 180,
                    what="B's VMs replaced on A",
                )
                replaced_at = time.monotonic()
                # B's own events (on a loaded machine the local hypervisor can miss a listing deadline too).
                about_b = [
                    e
                    for e in events(Path(cfg.state_dir), vm_group, "host_unreachable", "host_lost")
                    if f"host {hv.uri} " in e.message
                ]
                lost_at = next(e.ts for e in about_b if e.kind == "host_lost")
                went = [e.ts for e in about_b if e.kind == "host_unreachable" and e.ts <= lost_at]
                assert went and lost_at - went[-1] >= HOST_TIMEOUT, [(e.kind, e.ts) for e in about_b]
                # ---- B back: its old VMs are the surplus, removed; nothing duplicated
                hv.reconnect()

                def b_emptied() -> bool:
                    import libvirt

                    try:  # right after the link is back, B's neighbour entry may still be "failed"
                        return not _remote_domains(hv, vm_group)
                    except libvirt.libvirtError:
                        return False

                wait_for(b_emptied, 120, what="B's old VMs removed")
                wait_for(lambda: bg.status(vm_group)["ready"] == 4, 60, what="4 ready after B's return")
                assert len(group_domains(libvirtd, vm_group)) == 4
                assert events(Path(cfg.state_dir), vm_group, "host_back")
                back_ok = time.monotonic()
                # ---- the load ends → back to 1
                rate["rps"] = 0.5
                wait_for(
                    lambda: len(bg.status(vm_group)["replicas"]) == 1, 120, interval=0.5, what="back to 1"
                )
            result = runner.result(timeout=30)
            bad = [t for t, code, _ in result.timeline if code != 200]
            # In flight to B when its link went down, or sent before nginx was told (a few seconds).
            window = (cut - started - 1, out_of_balancer - started + 2)
            outside = [round(t, 1) for t in bad if not window[0] <= t <= window[1]]
            phases = {
                k: round(v - started, 1)
                for k, v in (
                    ("cut", cut),
                    ("out_of_balancer", out_of_balancer),
                    ("replaced", replaced_at),
                    ("back_settled", back_ok),
                )
            }
            nginx_said = balancer_log_tail(Path(cfg.state_dir), vm_group)
            why = f"{failed_message(result)}\nphases {phases}\n{nginx_said}"
            assert not outside, why
            print(
                f"\nhypervisor loss: cut → out of balancer {out_of_balancer - cut:.1f}s, → replaced "
                f"{replaced_at - cut:.1f}s (host_timeout {HOST_TIMEOUT:g}s); back → settled "
                f"{back_ok - replaced_at:.1f}s; {len(bad)} failed of {result.sent}"
            )
    finally:
        with contextlib.suppress(Exception):
            hv.reconnect()
        with contextlib.suppress(Exception):
            down(cfg)
        assert wait_gone(libvirtd, vm_group, 60) == []
        assert _remote_domains(hv, vm_group) == []
        assert not nginx_processes(Path(cfg.state_dir))
