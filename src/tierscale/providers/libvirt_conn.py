"""One libvirt connection per provider that survives a libvirtd restart.

libvirt errors become typed `ProviderError`s with the operation named, told apart by libvirt's error
code and domain (never by the message): `TierUnavailable` when libvirtd cannot be reached, `ReplicaGone`
for a domain that no longer exists. When the daemon goes away (restart, crash, remote host unreachable)
the dead connection is dropped and the next call opens a new one, so the control loop sees a few
`TierUnavailable`s while libvirtd is down and carries on once it is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar

import libvirt

from tierscale.providers.base import ProviderError, ReplicaGone, TierUnavailable

log = logging.getLogger("tierscale.libvirt")
T = TypeVar("T")


def _silence(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; ours are raised and reported instead."""


libvirt.registerErrorHandler(_silence, None)

# Errors that come from the transport rather than from the operation: the connection is gone.
_TRANSPORT_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE, getattr(libvirt, "VIR_FROM_SSH", -1)}


def error_code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


def message(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).strip()


def system_errno(exc: libvirt.libvirtError) -> int | None:
    """The errno of a system error (VIR_ERR_SYSTEM_ERROR carries it in int1), else None."""
    if error_code(exc) != libvirt.VIR_ERR_SYSTEM_ERROR:
        return None
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        value = int(exc.get_int1() or 0)
        return value if value > 0 else None
    return None


class Connection:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._generation = 0  # bumps on every reconnect: cached virDomain objects belong to one generation
        self._tsc_khz: int | None = None
        self._tsc_read = False

    @property
    def generation(self) -> int:
        return self._generation

    def get(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                return self._conn
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise TierUnavailable(f"cannot connect to libvirt at {self.uri}: {message(exc)}") from None
            self._generation += 1
            self._tsc_read = False
            return self._conn

    def drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def is_transport_error(self, exc: libvirt.libvirtError) -> bool:
        if exc.get_error_domain() in _TRANSPORT_DOMAINS:
            return True
        conn = self._conn
        if conn is None:
            return True
        try:
            return not conn.isAlive()
        except libvirt.libvirtError:
            return True

    def call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run `fn(conn)`; a libvirt error becomes a ProviderError("<what>: <libvirt's message>")."""
        conn = self.get()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            raise self.translate(exc, what) from None

    def translate(
        self, exc: libvirt.libvirtError, what: str, refused: type[ProviderError] = ProviderError
    ) -> ProviderError:
        """The typed error for `exc`: TierUnavailable (transport), ReplicaGone (no such domain), else
        `refused` (what the caller's operation means by a refusal, e.g. CreateRejected)."""
        if self.is_transport_error(exc):
            log.warning("libvirt connection to %s lost (%s); reconnecting on the next call", self.uri, exc)
            self.drop()
            return TierUnavailable(f"{what}: libvirt at {self.uri} unreachable: {message(exc)}")
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return ReplicaGone(f"{what}: {message(exc)}")
        return refused(f"{what}: {message(exc)}")

    def tsc_khz(self) -> int | None:
        """The host's TSC frequency from libvirt's capabilities (works for remote hosts too)."""
        if self._tsc_read:
            return self._tsc_khz
        caps = self.call("read host capabilities", lambda c: c.getCapabilities())
        self._tsc_khz = None
        with contextlib.suppress(ET.ParseError, ValueError, TypeError):
            counter = ET.fromstring(caps).find("./host/cpu/counter[@name='tsc']")
            if counter is not None:
                self._tsc_khz = int(counter.get("frequency", "0")) // 1000 or None
        self._tsc_read = True
        return self._tsc_khz

    def kvm_offered(self) -> bool:
        """libvirt on that host can run `<domain type='kvm'>` guests (it opened /dev/kvm)."""
        caps = self.call("read host capabilities", lambda c: c.getCapabilities())
        try:
            root = ET.fromstring(caps)
        except ET.ParseError:
            return False
        for guest in root.findall("guest"):
            arch = guest.find("arch")
            if arch is None or arch.get("name") != "x86_64":
                continue
            if arch.find("domain[@type='kvm']") is not None:
                return True
        return False

    def close(self) -> None:
        self.drop()
