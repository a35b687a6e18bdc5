"""`domain_type: auto`: KVM when it works, TCG otherwise, and why.

"Works" is two checks. libvirt must offer `kvm` domains on the host (it found a usable /dev/kvm), and a
probe guest booted from the group's own template under KVM must come up: answer the health path through
its forwarded port (local hosts) or get a DHCP lease (remote hosts). The second check matters because
KVM can be offered and still hang: nested KVM on some clouds starts the guest kernel and never finishes
booting it (measured on the machines this was developed on; see shared/notes/vm-tier.md).

The probe costs a boot (under a second with working KVM, `timeout` where KVM hangs), so the answer is
cached per host boot in `$XDG_CACHE_HOME/tierscale/libvirt-domain-type.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tierscale.providers.base import ProviderError, Replica
from tierscale.providers.libvirt_conn import Connection
from tierscale.providers.libvirt_xml import domain_name

if TYPE_CHECKING:
    from tierscale.config.models import LibvirtTemplate

log = logging.getLogger("tierscale.libvirt")

PROBE_TIMEOUT_CAP = 15.0  # a working KVM boots the demo image in well under a second


class ProbeHost(Protocol):
    """What the probe needs of the libvirt provider (which it never imports)."""

    group: str
    conn: Connection
    local: bool
    t: LibvirtTemplate
    boot_timeout: float
    health_path: str

    def boot(self, replica_id: str, role: str, domain_type: str, transient: bool = False) -> Replica: ...

    def wait_serving(self, address: str, timeout: float) -> bool: ...

    def wait_for_address(self, replica_id: str, timeout: float) -> bool: ...

    def remove(self, name: str, grace: float) -> None: ...


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tierscale" / "libvirt-domain-type.json"


def cache_key(provider: ProbeHost) -> str:
    """The host (uuid, boot, libvirt and QEMU versions) and the template's boot source."""
    conn = provider.conn
    caps = conn.call("read host capabilities", lambda c: c.getCapabilities())
    versions = conn.call("read versions", lambda c: (c.getLibVersion(), c.getVersion()))
    host_uuid = ""
    with contextlib.suppress(ET.ParseError):
        host_uuid = ET.fromstring(caps).findtext("./host/uuid") or ""
    boot = ""
    if provider.local:
        with contextlib.suppress(OSError):
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    t = provider.t
    return "|".join(
        str(x) for x in (t.uri, host_uuid, boot, *versions, t.kernel, t.initrd, t.base_image, t.network)
    )


def _read_cache() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, dtype: str, reason: str) -> None:
    data = _read_cache()
    data[key] = {"domain_type": dtype, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = cache_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def choose_domain_type(provider: ProbeHost) -> tuple[str, str]:
    """("kvm" | "qemu", why), from the cache or by probing."""
    key = cache_key(provider)
    hit = _read_cache().get(key)
    if hit and hit.get("domain_type") in ("kvm", "qemu"):
        return hit["domain_type"], f"{hit.get('reason', '')} (cached {hit.get('at', '')})"
    if not provider.conn.kvm_offered():
        dtype, reason = "qemu", "libvirt offers no KVM on this host (/dev/kvm missing or not usable)"
    else:
        ok, reason = probe_kvm(provider, min(provider.boot_timeout, PROBE_TIMEOUT_CAP))
        dtype = "kvm" if ok else "qemu"
    _write_cache(key, dtype, reason)
    return dtype, reason


def probe_kvm(provider: ProbeHost, timeout: float) -> tuple[bool, str]:
    """Boot the template once under KVM; (True, how long it took) if it came up within `timeout`."""
    rid = "kvmprobe-" + secrets.token_hex(3)
    name = domain_name(provider.group, rid)
    started = time.monotonic()
    try:
        replica = provider.boot(rid, "probe", "kvm", transient=True)
    except ProviderError as exc:
        return False, f"a KVM guest did not start: {exc}"
    try:
        if replica.address is not None:
            ok = provider.wait_serving(replica.address, timeout)
            what = f"answer {provider.health_path}"
        else:
            ok = provider.wait_for_address(rid, timeout)
            what = "get a DHCP lease"
    finally:
        try:
            provider.remove(name, grace=0.0)
        except ProviderError as exc:
            log.warning("%s: could not remove the KVM probe guest: %s", provider.group, exc)
    took = time.monotonic() - started
    if ok:
        return True, f"a KVM probe guest booted and did {what} in {took:.1f}s"
    return False, f"a KVM probe guest did not {what} within {timeout:.0f}s (KVM offered but hanging?)"
