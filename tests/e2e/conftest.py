"""Fixtures the end-to-end tests share: the nginx binary, and the libvirt tier's image, daemon and groups
(test_libvirt_image, test_libvirt_provider and test_libvirt_e2e use them; the helpers behind them are in
helpers/libvirt.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO
from helpers.ci import NGINX, require
from helpers.libvirt import (
    IMAGE_DIR,
    URI,
    Reconnecting,
    connect,
    group_name,
    libvirt,
    scrub_group,
    searchable_by_others,
)


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    """The nginx binary, for tests that drive a balancer directly."""
    require(NGINX is not None, "nginx")
    assert NGINX is not None
    return NGINX


@pytest.fixture(params=["nginx", "haproxy"])
def balancer_type(request: pytest.FixtureRequest) -> str:
    """The scenarios that run behind a balancer run behind each: nginx (reloads) and HAProxy (its
    Runtime API, no reload)."""
    kind = str(request.param)
    if kind == "haproxy":
        require(shutil.which("haproxy", path="/usr/sbin:/usr/bin:/usr/local/sbin") is not None, "haproxy")
    return kind


# ---------------------------------------------------------------------------------------------- libvirt
@pytest.fixture(scope="session")
def vm_image() -> Iterator[dict[str, Path]]:
    """The kernel, initramfs and golden qcow2 (built here if `make vm-image` has not run)."""
    wanted = {"kernel": "vmlinux", "initrd": "initrd.img", "base": "base.qcow2"}
    steps = [
        ["bash", str(REPO / "images/workload/build.sh")],
        [sys.executable, str(REPO / "images/vm/build.py")],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        require(done.returncode == 0, f"the VM image ({' '.join(argv[-1:])}: {done.stderr.strip()[-300:]})")
    paths = {k: IMAGE_DIR / v for k, v in wanted.items()}
    require(all(p.is_file() for p in paths.values()), f"VM image files in {IMAGE_DIR}")
    copy_dir = None
    if not searchable_by_others(IMAGE_DIR):
        # QEMU runs as libvirt-qemu: a checkout under a private directory (a 0700 temp dir, /root) is out
        # of its reach. Give the tests a copy where it can read it.
        copy_dir = Path(tempfile.mkdtemp(prefix="tierscale-test-image-", dir="/var/lib/libvirt/images"))
        copy_dir.chmod(0o755)
        for key, path in list(paths.items()):
            paths[key] = Path(shutil.copy2(path, copy_dir / path.name))
    yield paths
    if copy_dir is not None:
        shutil.rmtree(copy_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Any]:
    """A connection to the system libvirtd (scripts/setup/libvirt.sh starts it)."""
    require(libvirt is not None, "libvirt-python")
    probe = connect()
    require(probe is not None, f"libvirtd at {URI} (run scripts/setup-host.sh libvirt)")
    probe.close()
    conn = Reconnecting()
    yield conn
    conn.close()


@pytest.fixture
def vm_group(libvirtd: Any) -> Iterator[str]:
    """A fresh group name; everything it owns is scrubbed afterwards, even when the test failed."""
    name = group_name()
    yield name
    scrub_group(name)
