"""The demo image `tierscale/demo:latest`, built offline: no registry, no Dockerfile, no base image.

The root filesystem is assembled in memory (the static SPEC §6 workload binary, busybox-static when the
host has it, /etc/passwd for the unprivileged user) and handed to the engine as `docker import` does,
through the Docker SDK. The tar is byte-for-byte reproducible and its digest is stored in an image
label, so rebuilding is skipped while the inputs are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_IMAGE = "tierscale/demo:latest"
DEMO_PORT = 8080
DIGEST_LABEL = "io.tierscale.image-digest"
WORKLOAD_PATH = "usr/local/bin/tierscale-workload"
# Applets linked in the image when busybox is there: enough to poke around with `docker exec`.
BUSYBOX_APPLETS = ("sh", "ls", "cat", "ps", "top", "wget", "env", "sleep", "kill", "netstat", "id")
_BUILDER_VERSION = "1"  # bump when the image layout below changes, to force a rebuild

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKLOAD_BUILD_SH = REPO_ROOT / "images" / "workload" / "build.sh"
WORKLOAD_BINARY = REPO_ROOT / "build" / "images" / "tierscale-workload"


class ImageBuildError(Exception):
    """The demo image could not be built; the message says what is missing."""


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (it runs in an empty root fs)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    little = data[5] == 1
    order = "little" if little else "big"
    phoff = int.from_bytes(data[32:40], order)
    phentsize = int.from_bytes(data[54:56], order)
    phnum = int.from_bytes(data[56:58], order)
    for i in range(phnum):
        p_type = int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], order)
        if p_type == 3:  # PT_INTERP: dynamically linked
            return False
    return True


@dataclass(frozen=True)
class _Entry:
    path: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""


def rootfs_entries(workload: Path, busybox: Path | None) -> list[_Entry]:
    entries = [
        _Entry("bin", "dir"),
        _Entry("etc", "dir"),
        _Entry("tmp", "dir", 0o1777),
        _Entry("usr", "dir"),
        _Entry("usr/local", "dir"),
        _Entry("usr/local/bin", "dir"),
        _Entry("etc/passwd", "file", 0o644, b"root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"),
        _Entry("etc/group", "file", 0o644, b"root:x:0:\nnogroup:x:65534:\n"),
        _Entry(WORKLOAD_PATH, "file", 0o755, workload.read_bytes()),
    ]
    if busybox is not None:
        entries.append(_Entry("bin/busybox", "file", 0o755, busybox.read_bytes()))
        entries += [_Entry(f"bin/{a}", "symlink", target="busybox") for a in BUSYBOX_APPLETS]
    return entries


def rootfs_tar(entries: Iterable[_Entry]) -> bytes:
    """A reproducible tar: fixed owners and mtimes, so equal inputs give equal bytes (and digest)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mode = e.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def image_changes(digest: str) -> list[str]:
    """Dockerfile instructions applied on import (what `docker import --change` takes)."""
    return [
        f'CMD ["/{WORKLOAD_PATH}", "--port", "{DEMO_PORT}"]',
        f"EXPOSE {DEMO_PORT}/tcp",
        "USER 65534:65534",  # the workload needs no privilege
        "ENV PATH=/usr/local/bin:/bin",
        f"LABEL {DIGEST_LABEL}={digest}",
        "LABEL org.opencontainers.image.title=tierscale-demo",
    ]


def build_workload_binary() -> Path:
    """Run images/workload/build.sh (idempotent) and return the static binary."""
    if not WORKLOAD_BUILD_SH.is_file():
        raise ImageBuildError(
            f"{WORKLOAD_BUILD_SH} not found: the demo image is built from a tierscale source checkout"
        )
    proc = subprocess.run(["bash", str(WORKLOAD_BUILD_SH)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise ImageBuildError(f"building the workload binary failed: {proc.stderr.strip()[-500:]}")
    return WORKLOAD_BINARY


def build_demo_image(
    client: Any,
    workload: Path | None = None,
    busybox: Path | None = Path("/bin/busybox"),
    tag: str = DEMO_IMAGE,
    force: bool = False,
) -> tuple[str, bool]:
    """Import the demo image into the engine behind `client` (a docker.DockerClient).

    Returns (image id, built): built is False when an image with the same content digest was already there.
    """
    import docker.errors

    workload = workload or build_workload_binary()
    if not is_static_elf(workload):
        raise ImageBuildError(f"{workload} is not a static executable; it cannot run in an empty image")
    bb = busybox if busybox is not None and is_static_elf(busybox) else None
    data = rootfs_tar(rootfs_entries(workload, bb))
    digest = hashlib.sha256(data + _BUILDER_VERSION.encode()).hexdigest()[:32]
    old_id = None
    try:
        existing = client.images.get(tag)
        old_id = existing.id
        if not force and (existing.labels or {}).get(DIGEST_LABEL) == digest:
            return existing.id, False
    except docker.errors.ImageNotFound:
        pass
    repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
    client.api.import_image_from_data(data, repository=repository, tag=version, changes=image_changes(digest))
    image = client.images.get(tag)
    if (image.labels or {}).get(DIGEST_LABEL) != digest:
        raise ImageBuildError(f"the engine did not tag the imported image as {tag}")
    if old_id and old_id != image.id:
        # The previous build is now untagged; drop it unless containers still use it.
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(old_id)
    return image.id, True
