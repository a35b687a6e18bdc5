"""The demo VM image (images/vm/build.py): the initramfs, the kernel, the golden qcow2, the rebuild.

The fixtures every libvirt test shares are in tests/e2e/conftest.py, their helpers in helpers/libvirt.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO
from helpers.libvirt import IMAGE_DIR

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
