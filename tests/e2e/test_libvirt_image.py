"""The demo VM image (images/vm/build.py), and the fixtures and helpers every libvirt test shares.

Other libvirt test modules import the fixtures from here (`from test_libvirt_image import ...`).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from e2e_helpers import group_config

REPO = Path(__file__).resolve().parent.parent
IMAGE_DIR = REPO / "build" / "images" / "vm"
URI = "qemu:///system"
OVERLAY_ROOT = Path("/var/lib/libvirt/images/tierscale")

try:
    import libvirt
except ImportError:  # the skip/fail happens in the fixture, with a clear message
    libvirt = None  # type: ignore[assignment]


def _connect() -> Any:
    if libvirt is None:
        return None
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError:
        return None


def _searchable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


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
    if not _searchable_by_others(IMAGE_DIR):
        # QEMU runs as libvirt-qemu: a checkout under a private directory (a 0700 temp dir, /root) is out
        # of its reach. Give the tests a copy where it can read it.
        copy_dir = Path(tempfile.mkdtemp(prefix="tierscale-test-image-", dir="/var/lib/libvirt/images"))
        copy_dir.chmod(0o755)
        for key, path in list(paths.items()):
            paths[key] = Path(shutil.copy2(path, copy_dir / path.name))
    yield paths
    if copy_dir is not None:
        shutil.rmtree(copy_dir, ignore_errors=True)


class Reconnecting:
    """A libvirt connection for the tests that reopens itself: one test restarts libvirtd."""

    def __init__(self) -> None:
        self._conn: Any = None

    def _get(self) -> Any:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
        self._conn = libvirt.open(URI)
        return self._conn

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._get(), name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return getattr(self._get(), name)(*args, **kwargs)
            except libvirt.libvirtError as exc:
                # isAlive() only notices a restarted daemon on the next call: retry that once.
                if exc.get_error_domain() not in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
                    raise
                self.close()
                self._conn = None
                return getattr(self._get(), name)(*args, **kwargs)

        return call

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Any]:
    """A connection to the system libvirtd (scripts/setup/libvirt.sh starts it)."""
    require(libvirt is not None, "libvirt-python")
    probe = _connect()
    require(probe is not None, f"libvirtd at {URI} (run scripts/setup-host.sh libvirt)")
    probe.close()
    conn = Reconnecting()
    yield conn
    conn.close()


def group_name() -> str:
    return "vm" + secrets.token_hex(3)


def group_domains(conn: Any, group: str) -> list[str]:
    prefix = f"tierscale-{group}-"
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))


def overlay_files(group: str) -> list[str]:
    d = OVERLAY_ROOT / group
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def storage_pool_exists(conn: Any, group: str) -> bool:
    try:
        conn.storagePoolLookupByName(f"tierscale-{group}")
    except libvirt.libvirtError:
        return False
    return True


def scrub_group(group: str) -> None:
    """Remove every domain, overlay and storage pool of `group`, whatever state a failed test left."""
    conn = _connect()
    if conn is None:
        return
    try:
        for name in group_domains(conn, group):
            with contextlib.suppress(libvirt.libvirtError):
                dom = conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(f"tierscale-{group}")
            if pool.isActive():
                pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                pool.delete(0)
            pool.undefine()
    finally:
        conn.close()


@pytest.fixture
def vm_group(libvirtd: Any) -> Iterator[str]:
    """A fresh group name; everything it owns is scrubbed afterwards, even when the test failed."""
    name = group_name()
    yield name
    scrub_group(name)


def vm_template(image: dict[str, Path], disk: bool = False, **extra: Any) -> str:
    parts = {
        "kernel": str(image["kernel"]),
        "initrd": str(image["initrd"]),
        "memory": "256MiB",
        "domain_type": "qemu",
    }
    if disk:
        parts["base_image"] = str(image["base"])
    parts.update({k: str(v) for k, v in extra.items()})
    return "{" + ", ".join(f"{k}: {v!r}" if " " in str(v) else f"{k}: {v}" for k, v in parts.items()) + "}"


def vm_group_config(state_dir: Path, name: str, template: str, **knobs: Any) -> tuple[Any, str]:
    """A libvirt group, sized for TCG guests; `knobs` as for e2e_helpers.group_config."""
    defaults = {
        "max_": 3,
        "metrics": "[{type: requests_per_replica, target: 5}]",
        "startup_grace": "40s",
        "down_window": "4s",
    }
    return group_config(
        state_dir, "libvirt", template, name=name, balancer="algorithm: least_conn", **(defaults | knobs)
    )


def wait_gone(conn: Any, group: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = group_domains(conn, group)
    while left and time.monotonic() < deadline:
        time.sleep(0.3)
        left = group_domains(conn, group)
    return left


# ---------------------------------------------------------------------------------------------- the image


def _cpio_names(data: bytes) -> list[str]:
    names, pos = [], 0
    while pos < len(data) and data[pos : pos + 6] == b"070701":
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.append(name)
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
    return names


def test_initramfs_holds_init_busybox_modules_and_the_shared_workload(vm_image: dict[str, Path]) -> None:
    names = _cpio_names(vm_image["initrd"].read_bytes())
    for needed in ("init", "dev/console", "bin/busybox", "bin/sh", "bin/udhcpc", "bin/tierscale-workload"):
        assert needed in names, needed
    for module in ("virtio_pci", "virtio_net", "virtio_blk", "button"):
        assert f"lib/modules/{module}.ko" in names
    init = (REPO / "images/vm/rootfs/init").read_text()
    # The order that works with the Debian cloud kernel (shared/notes/vm-tier.md).
    order = "virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci"
    assert order in init and "failover net_failover virtio_net" in init
    # The guest runs the one workload binary every tier uses, not a stand-in.
    built = (REPO / "build/images/tierscale-workload").read_bytes()
    assert built in vm_image["initrd"].read_bytes()


def test_kernel_is_uncompressed_elf_and_base_is_qcow2(vm_image: dict[str, Path]) -> None:
    assert vm_image["kernel"].read_bytes()[:4] == b"\x7fELF"
    assert vm_image["base"].read_bytes()[:4] == b"QFI\xfb"
    manifest = (IMAGE_DIR / "manifest.json").read_text()
    assert "linux-image-" in manifest and "cloud-amd64" in manifest and "busybox-static" in manifest


def test_rebuild_is_skipped_when_nothing_changed(vm_image: dict[str, Path]) -> None:
    before = (IMAGE_DIR / "initrd.img").stat().st_mtime_ns
    out = subprocess.run(
        [sys.executable, str(REPO / "images/vm/build.py")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
    assert (IMAGE_DIR / "initrd.img").stat().st_mtime_ns == before
