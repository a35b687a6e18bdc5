"""Scale to zero and back on the VM tier: at zero, no VM runs and one waits paused in the warm pool; a burst
of 50 resumes it (and more), all served, then the group returns to zero."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers.cold import burst_at_zero_and_back, stz_extra
from helpers.e2e import nginx_processes, wait_for
from helpers.libvirt import vm_group_config, vm_template, wait_gone
from tierscale.controller.down import down
from tierscale.providers import make_provider
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e


def test_libvirt_burst_at_zero_resumes_the_warm_pool_and_returns_to_zero(
    tmp_path: Path, vm_group: str, vm_image: dict[str, Path], libvirtd: Any
) -> None:
    extra = "    warm_pool: {size: 1}\n" + stz_extra(idle="6s", hold="120s")
    cfg, _ = vm_group_config(tmp_path / "state", vm_group, vm_template(vm_image), min_=0, max_=2, extra=extra)
    provider = make_provider(cfg.groups[0], Path(cfg.state_dir))

    def roles() -> list[str]:
        return sorted(e.owner.role for e in provider.scan())

    def serving() -> list[str]:
        return [r for r in roles() if r == "replica"]

    try:
        with BackgroundController(cfg):
            # At zero: nothing serves and the pool holds a paused VM, so the wake is a resume.
            wait_for(lambda: roles() == ["pool"], 120, interval=0.5, what="one VM paused in the pool")
            burst_at_zero_and_back(
                Path(cfg.state_dir),
                vm_group,
                f"http://{cfg.groups[0].balancer.listen}/work?ms=2",
                serving,
                6.0,
                boot=120,
            )
            wait_for(lambda: roles() == ["pool"], 120, interval=0.5, what="the pool refilled at zero")
    finally:
        provider.close()
        down(cfg)
        assert wait_gone(libvirtd, vm_group, 60) == []
        assert not nginx_processes(Path(cfg.state_dir))
