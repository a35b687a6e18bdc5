"""Rolling out a new version on the VM tier (a new kernel): under load, killed midway, a bad version,
load rising. TCG guests on 2 cores: 4 replicas, cheap requests."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.e2e import nginx_processes, wait_for, work_url
from helpers.libvirt import group_domains, vm_group_config, vm_template, wait_gone
from helpers.rollouts import (
    Case,
    bad_rollout_rolls_back,
    good_rollout_killed_midway,
    load_doubles_midway,
    settled_on,
)
from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.providers import make_provider
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

ROLLOUT = "    rollout: {max_surge: 1, max_unavailable: 0, min_healthy_time: 1s}\n"
METRIC = "[{type: requests_per_replica, target: 5}]"


def _case(
    tmp_path: Path,
    group: str,
    image: dict[str, Path],
    new_template: str,
    template: str,
    n: int = 4,
    max_: int = 4,
    **knobs: Any,
) -> Case:
    cfg, path = vm_group_config(
        tmp_path / "state", group, template, min_=n, max_=max_, metrics=METRIC, **({"extra": ROLLOUT} | knobs)
    )
    new = Path(path).read_text().replace(f"template: {template}", f"template: {new_template}")
    assert new != Path(path).read_text()
    return Case(path, new, work_url(cfg, 2), replicas=n)


@pytest.fixture
def new_kernel(vm_image: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """The same kernel under another path: what a user's new kernel package looks like to the tier. Beside
    the image, where QEMU (its own user) can read it."""
    kernel = vm_image["kernel"].with_name(f"vmlinux-next-{secrets.token_hex(3)}")
    shutil.copyfile(vm_image["kernel"], kernel)
    kernel.chmod(0o644)
    yield {**vm_image, "kernel": kernel}
    kernel.unlink(missing_ok=True)


def _cleanup(case: Case, conn: Any) -> None:
    down(case.cfg)
    assert wait_gone(conn, case.group, 60) == []
    assert not nginx_processes(Path(case.cfg.state_dir))


def test_libvirt_good_rollout_to_a_new_kernel_survives_a_sigkill(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any, new_kernel: dict[str, Path]
) -> None:
    old, new = vm_template(vm_image), vm_template(new_kernel)
    case = _case(tmp_path, vm_group, vm_image, new, old)
    try:
        good_rollout_killed_midway(case, rate=8, timeout=120)
        assert len(group_domains(libvirtd, vm_group)) == 4
    finally:
        _cleanup(case, libvirtd)


def test_libvirt_a_version_that_never_turns_healthy_is_rolled_back(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    # A kernel command line whose init does not exist: the guest never gets as far as serving.
    old = vm_template(vm_image)
    bad = vm_template(vm_image, cmdline="console=ttyS0 quiet panic=0 rdinit=/nonexistent")
    case = _case(tmp_path, vm_group, vm_image, bad, old, startup_grace="15s")
    try:
        bad_rollout_rolls_back(case, rate=8, timeout=120)
    finally:
        _cleanup(case, libvirtd)


def test_libvirt_load_doubling_mid_rollout_scales_out_on_the_new_revision(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any, new_kernel: dict[str, Path]
) -> None:
    old, new = vm_template(vm_image), vm_template(new_kernel)
    case = _case(tmp_path, vm_group, vm_image, new, old, n=2, max_=5)
    try:
        desired = load_doubles_midway(case, base=6, timeout=120)
        assert max(desired) >= 3, desired
    finally:
        _cleanup(case, libvirtd)


def test_libvirt_warm_pool_refills_with_the_new_revision(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any, new_kernel: dict[str, Path]
) -> None:
    """After a rollout the paused VMs waiting in the pool are of the new revision: a scale-out never
    resumes an old-version VM."""
    pool = "    warm_pool: {size: 1}\n"
    old, new = vm_template(vm_image), vm_template(new_kernel)
    case = _case(tmp_path, vm_group, vm_image, new, old, n=1, max_=2, extra=pool + ROLLOUT)
    provider = make_provider(case.cfg.groups[0], Path(case.cfg.state_dir))

    def pool_revisions() -> list[str]:
        return sorted(e.owner.revision for e in provider.scan() if e.owner.role == "pool")

    try:
        with BackgroundController(case.cfg) as bg:
            wait_for(lambda: bg.status(vm_group)["ready"] == 1, 90, what="first VM ready")
            first = wait_for(pool_revisions, 90, interval=0.5, what="a VM in the warm pool")
            assert first == [bg.status(vm_group)["revision"]]
            new_cfg = load_config_text(case.new_text, case.path)
            assert bg.loop is not None and bg.controller is not None
            asyncio.run_coroutine_threadsafe(bg.controller.apply(new_cfg), bg.loop).result(60)
            target = case.new_revision
            wait_for(
                lambda: settled_on(bg.status(vm_group), target, 1) and pool_revisions() == [target],
                180,
                interval=0.5,
                what="the replica and the pool on the new revision",
            )
    finally:
        provider.close()
        _cleanup(case, libvirtd)
