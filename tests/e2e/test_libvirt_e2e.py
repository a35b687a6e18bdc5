"""End to end on the VM tier: real libvirtd, real QEMU guests (TCG here), real nginx, the real controller.

The same scenarios as tests/e2e/test_e2e_process.py, sized for TCG on 2 cores: a guest boots in ~3-4 s and
its one vCPU saturates at ~15 requests/s of 50 ms, so the load step is measured in requests per replica
of cheap requests rather than in CPU.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from helpers.ci import require
from helpers.daemons import libvirtd_pid, start_libvirtd, stop_libvirtd
from helpers.e2e import (
    CliControllers,
    Step,
    events,
    failed_message,
    nginx_processes,
    replace_under_load,
    replica_ids,
    run_tierscale,
    scale_out_and_back,
    wait_for,
    wait_passes,
    work_url,
)
from helpers.libvirt import (
    group_domains,
    overlay_files,
    storage_pool_exists,
    vm_group_config,
    vm_template,
    wait_gone,
)
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner, run_load_sync
from tierscale.providers import make_provider
from tierscale.service import BackgroundController
from tierscale.views import read_statuses

pytestmark = pytest.mark.e2e


def _down(cfg: Any, conn: Any, group: str) -> None:
    down(cfg)
    assert wait_gone(conn, group, 30) == []
    assert not nginx_processes(Path(cfg.state_dir))


def test_scale_out_under_load_and_back_in_with_zero_failures(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any, balancer_type: str
) -> None:
    state = tmp_path / "state"
    # Linked clones of the golden qcow2: the overlay path is exercised under load too.
    cfg, _ = vm_group_config(
        state,
        vm_group,
        vm_template(vm_image, disk=True),
        min_=1,
        max_=3,
        metrics="[{type: requests_per_replica, target: 3}]",
        balancer_type=balancer_type,
    )
    try:
        with BackgroundController(cfg) as bg:
            # 1 req/s, then 9 (3 VMs' worth at 3 per VM), then 0.5. Modest on purpose: QEMU's forwarded
            # port has a listen backlog of 1, and a burst of new upstream connections while the host is
            # busy booting VMs can lose a SYN (retransmitted after 1 s, nginx's connect timeout).
            rate = Step(1.0, 9.0, 0.5)

            def at_peak() -> None:
                assert len(overlay_files(vm_group)) == len(group_domains(libvirtd, vm_group))

            scale_out_and_back(
                bg,
                vm_group,
                work_url(cfg, 10),
                rate,
                120,
                first_ready=60,
                scaled_out=60,
                back_to_min=80,
                removed=40,
                at_peak=at_peak,
            )
        # Scale-in removed the VMs and their overlays; one VM and one overlay are left.
        assert len(group_domains(libvirtd, vm_group)) == 1 and len(overlay_files(vm_group)) == 1
    finally:
        _down(cfg, libvirtd, vm_group)
    assert overlay_files(vm_group) == [] and not storage_pool_exists(libvirtd, vm_group)


def test_vm_destroyed_behind_our_back_is_replaced_without_downtime(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    state = tmp_path / "state"
    cfg, _ = vm_group_config(state, vm_group, vm_template(vm_image), min_=2, max_=2)
    try:
        with BackgroundController(cfg) as bg:
            victim, _, after, result = replace_under_load(
                bg,
                lambda r: libvirtd.lookupByName(r.ref).destroy(),  # not through tierscale
                10,
                25,
                timeout=60,
            )
        assert victim.id not in after and len(after) == 2
        assert result.failed == 0, failed_message(result)
        # Whichever notices first: the listing (shut off → "exited") or the health checks.
        noticed = [
            e
            for e in events(state, vm_group)
            if e.replica == victim.id and e.kind in ("replica_replaced", "replica_unhealthy")
        ]
        assert noticed, [(e.kind, e.replica) for e in events(state, vm_group)]
        assert noticed[0].kind == "replica_unhealthy" or noticed[0].data["reason"] == "exited"
        assert victim.ref not in group_domains(libvirtd, vm_group)  # undefined, not just off
    finally:
        _down(cfg, libvirtd, vm_group)


def test_controller_sigkill_then_restart_adopts_every_vm_and_down_leaves_nothing(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    state = tmp_path / "state"
    cfg, path = vm_group_config(state, vm_group, vm_template(vm_image, disk=True), min_=2, max_=2)
    provider = make_provider(cfg.groups[0], state)
    url = work_url(cfg, 1)
    try:
        with CliControllers(path, stop_timeout=60) as runs:
            first = runs.start()
            wait_for(
                lambda: any(st["ready"] == 2 for st in read_statuses(state)),
                90,
                what="two VMs in the balancer",
            )
            before = {r.id for r in provider.list()}
            domains = set(group_domains(libvirtd, vm_group))
            assert len(before) == 2 and len(domains) == 2
            second = runs.restart_after_sigkill(first, url, 10)
            # Several passes of the new controller: long enough for duplicates to appear if adoption failed.
            wait_passes(state, vm_group, 6, at_least=8)
            assert {r.id for r in provider.list()} == before
            assert set(group_domains(libvirtd, vm_group)) == domains
            assert len(nginx_processes(state)) == 1
            res = run_load_sync(url, 20, 2)
            assert res.failed == 0 and set(res.instances) == before
            adopted = {e.replica for e in events(state, vm_group, "replica_adopted")}
            assert adopted == before
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
        assert set(group_domains(libvirtd, vm_group)) == domains  # stopping the controller keeps the VMs

        # `down` removes every domain, every overlay and the storage pool, and stops the balancer.
        out = run_tierscale("down", path, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "deleted 2 replica(s)" in out.stdout
        assert group_domains(libvirtd, vm_group) == []
        assert overlay_files(vm_group) == [] and not storage_pool_exists(libvirtd, vm_group)
        assert nginx_processes(state) == []
    finally:
        _down(cfg, libvirtd, vm_group)


def test_missing_base_image_is_reported_and_retried_with_backoff(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    state = tmp_path / "state"
    template = vm_template(vm_image, disk=True).replace(str(vm_image["base"]), str(tmp_path / "gone.qcow2"))
    cfg, _ = vm_group_config(state, vm_group, template, min_=1, max_=1)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(
                lambda: len(events(state, vm_group, "create_failed")) >= 3, 30, what="three failed creates"
            )
            assert bg.status(vm_group)["ready"] == 0
        failed = events(state, vm_group, "create_failed")
        assert all("template.base_image" in e.message and "gone.qcow2" in e.message for e in failed)
        delays = [int(m.group(1)) for e in failed if (m := re.search(r"retry in (\d+)s", e.message))]
        assert delays[:3] == sorted(delays[:3]) and delays[2] > delays[0], delays  # backing off, not looping
        assert group_domains(libvirtd, vm_group) == [] and overlay_files(vm_group) == []
    finally:
        _down(cfg, libvirtd, vm_group)


def test_guest_never_healthy_within_startup_grace_is_removed_and_replaced(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    state = tmp_path / "state"
    # The guest boots fine but its health path never answers 200: it must not stay, nor pile up.
    cfg, _ = vm_group_config(
        state,
        vm_group,
        vm_template(vm_image, disk=True),
        min_=1,
        max_=1,
        # Long enough for a TCG guest on a loaded host to boot and answer once before its grace ends.
        startup_grace="20s",
        health_path="/no-such-page",
    )

    def answered_404() -> list[Any]:
        return [e for e in events(state, vm_group, "replica_unhealthy") if "HTTP 404" in e.message]

    try:
        with BackgroundController(cfg):
            # On a busy host a guest can still be booting when its grace ends, or answer after the probe's
            # timeout: that one is declared unhealthy (and replaced) for a timeout. What this test is about
            # is the guest that boots and answers its health path with a 404: follow the first such one.
            unhealthy = wait_for(answered_404, 300, what="a replica declared unhealthy for its HTTP 404")
            first = unhealthy[0].replica
            wait_for(
                lambda: any(e.replica == first for e in events(state, vm_group, "replica_deleted")),
                60,
                what="the unhealthy VM deleted",
            )
            assert f"tierscale-{vm_group}-{first}" not in group_domains(libvirtd, vm_group)
            assert not any(first in f for f in overlay_files(vm_group))
            # Replaced, and never more VMs than the group's max plus the one being replaced.
            wait_for(
                lambda: any(
                    e.replica != first and e.ts >= unhealthy[0].ts
                    for e in events(state, vm_group, "replica_created")
                ),
                60,
                what="a replacement",
            )
            assert len(group_domains(libvirtd, vm_group)) <= 2
        assert "HTTP 404" in unhealthy[0].message, unhealthy[0].message
    finally:
        _down(cfg, libvirtd, vm_group)


@pytest.mark.libvirtd_exclusive
def test_libvirtd_restart_mid_run_the_loop_survives_and_reconnects(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:

    require_root = os.geteuid() == 0 and libvirtd_pid() is not None
    require(require_root, "root and a libvirtd started by scripts/setup/libvirt.sh (to restart it)")
    state = tmp_path / "state"
    cfg, _ = vm_group_config(state, vm_group, vm_template(vm_image), min_=2, max_=2)
    url = work_url(cfg, 2)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(vm_group)["ready"] == 2, 60, what="two ready VMs")
            before = replica_ids(bg, vm_group)
            with LoadRunner(url, 10, 20) as runner:
                stop_libvirtd()  # the daemon this machine's setup started (pid file)
                wait_for(lambda: not bg.status(vm_group)["provider_ok"], 30, what="the loop noticing")
                wait_passes(state, vm_group, 2, at_least=2)  # a few passes without libvirt
                start_libvirtd()
                wait_for(lambda: bg.status(vm_group)["provider_ok"], 30, what="the loop reconnecting")
            result = runner.result(timeout=30)
            wait_passes(state, vm_group, 3, at_least=3)  # time for a wrong replacement to show
            after = replica_ids(bg, vm_group)
            assert after == before and bg.status(vm_group)["ready"] == 2
        # The VMs never stopped serving: QEMU does not depend on the daemon that started it.
        assert result.failed == 0, f"{result.status} {result.errors}"
        errors = [e.message for e in events(state, vm_group, "provider_error")]
        assert any("cannot list replicas" in m for m in errors), errors
        assert any("reachable again" in m for m in errors), errors
        assert not events(state, vm_group, "replica_replaced")
    finally:
        start_libvirtd()
        _down(cfg, libvirtd, vm_group)


def test_scale_out_takes_the_warm_pool_vm_and_the_pool_goes_with_the_controller(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    import libvirt

    state = tmp_path / "state"
    cfg, _ = vm_group_config(
        state, vm_group, vm_template(vm_image), min_=1, max_=2, extra="    warm_pool: {size: 1}"
    )

    def paused() -> list[str]:
        return [
            name
            for name in group_domains(libvirtd, vm_group)
            if libvirtd.lookupByName(name).state()
            == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
        ]

    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(vm_group)["ready"] == 1, 60, what="first VM ready")
            member = wait_for(paused, 60, interval=0.5, what="a paused VM in the warm pool")[0]
            assert len(bg.status(vm_group)["replicas"]) == 1  # the pool VM is not a replica
            gc = bg.controller.groups[vm_group]  # type: ignore[union-attr]
            bg.call(gc.set_manual, 2)
            wait_for(lambda: bg.status(vm_group)["ready"] == 2, 30, what="two ready VMs")
            ids = replica_ids(bg, vm_group)
            assert member.removeprefix(f"tierscale-{vm_group}-") in ids  # resumed, not booted
            res = run_load_sync(work_url(cfg, 1), 20, 2)
            assert res.failed == 0 and set(res.instances) == ids
            wait_for(lambda: paused(), 60, interval=0.5, what="the pool refilled")
        # The controller stopped: its paused pool VM is gone, the two replicas keep running.
        left = group_domains(libvirtd, vm_group)
        assert sorted(left) == sorted(f"tierscale-{vm_group}-{i}" for i in ids)
    finally:
        _down(cfg, libvirtd, vm_group)
