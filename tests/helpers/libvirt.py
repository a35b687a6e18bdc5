"""What every libvirt test shares (the image tests, the provider tests, the VM-tier end-to-end tests and
the chaos suite's libvirt tier): the connection, the demo image's place, and looking at and scrubbing what
a group owns. The fixtures built on these (`vm_image`, `libvirtd`, `vm_group`) are in tests/e2e/conftest.py.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

from helpers import REPO
from helpers.e2e import group_config

IMAGE_DIR = REPO / "build" / "images" / "vm"
URI = "qemu:///system"
OVERLAY_ROOT = Path("/var/lib/libvirt/images/tierscale")

try:
    import libvirt
except ImportError:  # the skip/fail happens in the fixture, with a clear message
    libvirt = None  # type: ignore[assignment]


def connect() -> Any:
    """A connection to the system libvirtd, or None when there is none (or no libvirt-python)."""
    if libvirt is None:
        return None
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError:
        return None


def searchable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


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
    conn = connect()
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
    """A libvirt group, sized for TCG guests; `knobs` as for helpers.e2e.group_config."""
    defaults = {
        "max_": 3,
        "metrics": "[{type: requests_per_replica, target: 5}]",
        "startup_grace": "40s",
        "down_window": "4s",
        "health_timeout": "5s",  # a TCG guest on a busy host answers slowly, not never
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
