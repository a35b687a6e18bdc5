"""Per-VM qcow2 overlays on the golden image, made through libvirt's storage API.

The overlays live in a directory storage pool `tierscale-<group>` at `<overlay_dir>/<group>` on the
libvirt host, so a remote URI gets its overlays on the remote host, next to the QEMU that opens them, and
no `qemu-img` runs here. The pool is defined on first use and removed (directory included) once the
group has no overlay left, which is what `tierscale down` ends with.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading

import libvirt

from tierscale.providers.base import CreateRejected, ProviderError, TemplateError
from tierscale.providers.libvirt_conn import Connection, error_code, message, system_errno
from tierscale.providers.libvirt_xml import pool_xml, volume_xml

log = logging.getLogger("tierscale.libvirt")


def _create_refusal(exc: libvirt.libvirtError) -> type[ProviderError]:
    """A golden image that is missing or unreadable on the libvirt host is the template's problem."""
    missing = error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL
    if missing or system_errno(exc) in (errno.ENOENT, errno.EACCES, errno.EPERM):
        return TemplateError
    return CreateRejected


class OverlayStore:
    def __init__(self, conn: Connection, group: str, directory: str) -> None:
        self.conn = conn
        self.pool_name = f"tierscale-{group}"
        self.path = f"{directory.rstrip('/')}/{group}"
        self._lock = threading.Lock()

    def volume_path(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _lookup(self, c: libvirt.virConnect) -> libvirt.virStoragePool | None:
        try:
            return c.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise

    def _pool(self) -> libvirt.virStoragePool:
        """The group's pool, defined, built and started if needed."""

        def ensure(c: libvirt.virConnect) -> libvirt.virStoragePool:
            pool = self._lookup(c)
            if pool is None:
                pool = c.storagePoolDefineXML(pool_xml(self.pool_name, self.path), 0)
            if not pool.isActive():
                pool.create(libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
            return pool

        with self._lock:
            return self.conn.call(f"prepare storage pool {self.pool_name} at {self.path}", ensure)

    def create(self, name: str, base_image: str | None, base_format: str) -> str:
        """A new overlay `name` backed by `base_image`; returns its path."""
        pool = self._pool()
        xml = volume_xml(name, base_image, base_format)
        try:
            vol = pool.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            if error_code(exc) != libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                what = f"create overlay {name} on {base_image}"
                raise self.conn.translate(exc, what, refused=_create_refusal(exc)) from None
            # Left over from a crash between creating it and defining its domain: start afresh.
            self.delete(name)
            try:
                vol = pool.createXML(xml, 0)
            except libvirt.libvirtError as exc2:
                what = f"create overlay {name} on {base_image}"
                raise self.conn.translate(exc2, what, refused=_create_refusal(exc2)) from None
        return str(vol.path())

    def delete(self, name: str) -> None:
        """Remove overlay `name`; a missing one is fine (deleting is idempotent)."""

        def remove(c: libvirt.virConnect) -> None:
            pool = self._lookup(c)
            if pool is None or not pool.isActive():
                return
            for attempt in range(2):
                try:
                    vol = pool.storageVolLookupByName(name)
                except libvirt.libvirtError as exc:
                    if error_code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                        raise
                    if attempt == 0:
                        pool.refresh(0)  # the file may predate this libvirtd's view of the pool
                        continue
                    return
                vol.delete(0)
                return

        self.conn.call(f"delete overlay {name}", remove)

    def names(self) -> list[str]:
        def names(c: libvirt.virConnect) -> list[str]:
            pool = self._lookup(c)
            if pool is None or not pool.isActive():
                return []
            pool.refresh(0)
            return [str(v.name()) for v in pool.listAllVolumes(0)]

        return self.conn.call(f"list overlays in {self.pool_name}", names)

    def remove_if_empty(self) -> bool:
        """Undefine the pool and remove its directory when no overlay is left; True if it is gone."""

        def remove(c: libvirt.virConnect) -> bool:
            pool = self._lookup(c)
            if pool is None:
                return True
            if pool.isActive():
                pool.refresh(0)
                if pool.listAllVolumes(0):
                    return False
                pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                pool.delete(0)  # the (empty) directory
            pool.undefine()
            return True

        with self._lock:
            try:
                return self.conn.call(f"remove storage pool {self.pool_name}", remove)
            except ProviderError as exc:
                log.warning("%s", exc)
                return False


__all__ = ["OverlayStore", "message"]
