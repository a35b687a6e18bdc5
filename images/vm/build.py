#!/usr/bin/env python3
"""Build the tierscale demo VM image from Debian packages.

    python3 images/vm/build.py [--out build/images/vm] [--workload build/images/tierscale-workload]

Outputs (in --out):
    vmlinux        the Debian cloud kernel, uncompressed (boots ~0.3 s faster than vmlinuz under TCG)
    vmlinuz        the kernel as packaged (fallback when vmlinux cannot be extracted)
    initrd.img     newc cpio: busybox, the virtio modules, /init, the SPEC §6 workload on port 80
    base.qcow2     the same tree as an ext4 root filesystem: the golden image linked clones are made from
                   (boot it with the kernel and initrd above and `root=/dev/vda`)
    manifest.json  package versions and file sizes

Needs: apt-get, dpkg, lz4 (vmlinux extraction), mke2fs from e2fsprogs (`-d`), qemu-img. Nothing is
mounted and no root privileges are needed beyond what apt-get download wants. Everything comes from the
Debian archive: the kernel (`linux-image-cloud-amd64`'s current dependency) and `busybox-static`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ROOTFS_SRC = HERE / "rootfs"

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# Loaded by /init in this order; virtio_blk only for the disk variant, button+evdev for the ACPI power
# button (libvirt's graceful shutdown). Everything else the guest needs is built into the cloud kernel.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "button",
    "evdev",
)
DIRS = ("bin", "dev", "etc", "lib/modules", "newroot", "proc", "run", "sys", "tmp")
DISK_MIB = 48


def log(msg: str) -> None:
    print(f"vm-image: {msg}", flush=True)


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kw)  # type: ignore[call-overload]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/sbin/{tool}" if Path(f"/sbin/{tool}").exists() else None)
    if path is None:
        sys.exit(f"vm-image: {tool} not found: install the Debian package {package} (scripts/setup-host.sh)")
    return path


# ---- packages ------------------------------------------------------------------------------------------


def kernel_package() -> str:
    """The versioned kernel package the cloud-kernel metapackage points at now."""
    out = run(["apt-cache", "depends", KERNEL_META], capture_output=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    sys.exit(f"vm-image: cannot resolve {KERNEL_META} (apt-get update?)")


def candidate_version(package: str) -> str:
    out = run(["apt-cache", "policy", package], capture_output=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    sys.exit(f"vm-image: no installable version of {package} (apt-get update?)")


def download(package: str, debs: Path) -> Path:
    """The package's .deb in `debs`, downloaded unless this version is already there."""
    version = candidate_version(package)
    quoted = version.replace(":", "%3a")
    existing = sorted(debs.glob(f"{package}_{quoted}_*.deb"))
    if existing:
        return existing[0]
    log(f"downloading {package} {version}")
    # _apt cannot write into a root-owned build tree; downloading as the caller is what we want here.
    run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"], cwd=debs)
    found = sorted(debs.glob(f"{package}_{quoted}_*.deb"))
    if not found:
        sys.exit(f"vm-image: apt-get download {package} left no .deb in {debs}")
    return found[0]


def unpack(deb: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


# ---- kernel --------------------------------------------------------------------------------------------

# Compressed payloads inside a bzImage, as the kernel's scripts/extract-vmlinux finds them.
_PAYLOADS: tuple[tuple[bytes, list[str]], ...] = (
    (b"\x02\x21\x4c\x18", ["lz4", "-dc"]),
    (b"\x1f\x8b\x08", ["gzip", "-dc"]),
    (b"\xfd7zXZ\x00", ["xz", "-dc"]),
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
)


def extract_vmlinux(vmlinuz: Path, dest: Path) -> bool:
    """Uncompressed ELF kernel from a bzImage; False if no decompressor here yields one."""
    blob = vmlinuz.read_bytes()
    for magic, argv in _PAYLOADS:
        if shutil.which(argv[0]) is None:
            continue
        start = blob.find(magic)
        while start != -1:
            # The decompressors stop at the payload's end and complain about the bzImage trailer that
            # follows; the exit status says nothing, the ELF magic of the output does.
            proc = subprocess.run(argv, input=blob[start:], capture_output=True)
            if proc.stdout[:4] == b"\x7fELF":
                dest.write_bytes(proc.stdout)
                return True
            start = blob.find(magic, start + 1)
    return False


# ---- root filesystem tree ------------------------------------------------------------------------------


def build_tree(tree: Path, busybox_root: Path, kernel_root: Path, workload: Path) -> list[str]:
    if tree.exists():
        shutil.rmtree(tree)
    for d in DIRS:
        (tree / d).mkdir(parents=True, exist_ok=True)
    busybox = busybox_root / "bin" / "busybox"
    shutil.copy2(busybox, tree / "bin" / "busybox")
    applets = run([str(busybox), "--list"], capture_output=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    shutil.copy2(workload, tree / "bin" / "tierscale-workload")
    os.chmod(tree / "bin" / "tierscale-workload", 0o755)
    mods = {p.stem: p for p in kernel_root.glob("lib/modules/*/kernel/**/*.ko")}
    missing = [m for m in MODULES if m not in mods]
    if missing:
        sys.exit(f"vm-image: kernel package lacks modules {missing}")
    for m in MODULES:
        shutil.copy2(mods[m], tree / "lib" / "modules" / f"{m}.ko")
    # /init, /etc/udhcpc.sh, /etc/acpi/... from images/vm/rootfs, modes kept.
    shutil.copytree(ROOTFS_SRC, tree, dirs_exist_ok=True, symlinks=True)
    return applets


class Cpio:
    """A newc ("070701") archive writer: what the kernel unpacks as an initramfs.

    Written here rather than with cpio(1) so that device nodes (/dev/console must exist before devtmpfs
    is mounted, or init starts without a console) need no root privileges to create.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 300000

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        entry = header + name.encode() + b"\0"
        entry += b"\0" * (-len(entry) % 4)
        entry += data + b"\0" * (-len(data) % 4)
        self.parts.append(entry)

    def add_tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                self.add(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                self.add(rel, stat.S_IFDIR | (st.st_mode & 0o7777))
            else:
                self.add(rel, stat.S_IFREG | (st.st_mode & 0o7777), path.read_bytes())

    def bytes(self) -> bytes:
        self.add("TRAILER!!!", 0)
        out = b"".join(self.parts)
        return out + b"\0" * (-len(out) % 512)


def write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)


def build_initrd(tree: Path, dest: Path) -> None:
    archive = Cpio()
    archive.add("dev", stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add_tree(tree)
    # Uncompressed: a few MB that QEMU hands over as is, and the kernel unpacks without decompressing.
    write_atomic(dest, archive.bytes())


def build_disk(tree: Path, dest: Path, work: Path) -> None:
    mke2fs = need("mke2fs", "e2fsprogs")
    qemu_img = need("qemu-img", "qemu-utils")
    raw = work / "root.ext4"
    raw.unlink(missing_ok=True)
    # -d populates the filesystem from a directory: no loop mount, no root needed. Owner root (the tree
    # may belong to whoever builds); no journal-less tricks, the overlay takes the guest's writes.
    run(
        [mke2fs, "-q", "-F", "-t", "ext4", "-L", "tierscale", "-E", "root_owner=0:0", "-d", str(tree),
         str(raw), f"{DISK_MIB}M"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    tmp = dest.with_name(dest.name + ".tmp")
    run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp)])
    tmp.replace(dest)
    raw.unlink()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(kpkg: str, workload: Path, disk: bool) -> str:
    """Everything the outputs depend on: package versions, the workload, this script, the guest files."""
    h = hashlib.sha256()
    for part in (kpkg, candidate_version(kpkg), candidate_version(BUSYBOX), sha256(workload), str(disk)):
        h.update(part.encode() + b"\0")
    h.update(Path(__file__).read_bytes())
    for path in sorted(ROOTFS_SRC.rglob("*")):
        if path.is_file():
            h.update(f"{path.relative_to(ROOTFS_SRC)} {path.stat().st_mode:o}\0".encode() + path.read_bytes())
    return h.hexdigest()


def up_to_date(out: Path, print_: str, disk: bool) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = ["initrd.img", "vmlinuz"] + (["base.qcow2"] if disk else [])
    return manifest.get("inputs") == print_ and all((out / f).is_file() for f in wanted)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "images" / "vm")
    ap.add_argument("--workload", type=Path, default=REPO / "build" / "images" / "tierscale-workload")
    ap.add_argument("--kernel-package", help=f"default: what {KERNEL_META} depends on now")
    ap.add_argument("--no-disk", action="store_true", help="skip base.qcow2")
    args = ap.parse_args()

    if not args.workload.is_file():
        sys.exit(f"vm-image: workload binary {args.workload} missing: bash images/workload/build.sh")
    need("apt-get", "apt")
    out: Path = args.out.resolve()
    kpkg = args.kernel_package or kernel_package()
    inputs = fingerprint(kpkg, args.workload, not args.no_disk)
    if up_to_date(out, inputs, not args.no_disk):
        log(f"up to date in {out}")
        return 0
    debs = out / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    try:
        kdeb = download(kpkg, debs)
        bdeb = download(BUSYBOX, debs)
        kroot = unpack(kdeb, work / "kernel")
        broot = unpack(bdeb, work / "busybox")

        vmlinuz = next(kroot.glob("boot/vmlinuz-*"))
        shutil.copy2(vmlinuz, out / "vmlinuz.tmp")
        (out / "vmlinuz.tmp").replace(out / "vmlinuz")
        tmp_vmlinux = out / "vmlinux.tmp"
        if extract_vmlinux(vmlinuz, tmp_vmlinux):
            tmp_vmlinux.replace(out / "vmlinux")
        else:
            log("could not extract vmlinux (lz4 missing?); only vmlinuz is available")
            (out / "vmlinux").unlink(missing_ok=True)

        tree = work / "rootfs"
        build_tree(tree, broot, kroot, args.workload)
        build_initrd(tree, out / "initrd.img")
        if not args.no_disk:
            build_disk(tree, out / "base.qcow2", work)

        files = {
            p.name: {"bytes": p.stat().st_size}
            for p in sorted(out.iterdir())
            if p.is_file() and p.suffix != ".json" and not p.name.endswith(".tmp")
        }
        manifest = {
            "kernel_package": f"{kpkg} {candidate_version(kpkg)}",
            "busybox_package": f"{BUSYBOX} {candidate_version(BUSYBOX)}",
            "workload_sha256": sha256(args.workload),
            "inputs": inputs,
            "modules": list(MODULES),
            "files": files,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        log(f"built {', '.join(files)} in {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
