"""What the libvirt provider's scan sees of one of its domains, and the domain facts the tier's helpers
share. Below `libvirt`, `libvirt_pool` and `libvirt_probe`: it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import libvirt

from tierscale.providers.libvirt_xml import DomainFacts, Owner


@dataclass
class Entry:
    """One of our domains as the last scan saw it."""

    dom: libvirt.virDomain
    name: str
    owner: Owner
    facts: DomainFacts
    state: int  # libvirt.VIR_DOMAIN_* state
    reason: int = 0  # why it is in that state (VIR_DOMAIN_PAUSED_USER: we paused it)

    @property
    def paused_by_us(self) -> bool:
        # A domain is also briefly paused while QEMU starts up; only a deliberate pause counts.
        return self.state == libvirt.VIR_DOMAIN_PAUSED and self.reason == libvirt.VIR_DOMAIN_PAUSED_USER


def is_local_uri(uri: str) -> bool:
    host = urlsplit(uri).hostname
    return host in (None, "", "localhost", "127.0.0.1", "::1")


def first_ipv4(ifaces: dict[str, Any]) -> str | None:
    for iface in ifaces.values():
        for a in (iface or {}).get("addrs") or []:
            if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and a.get("addr"):
                return str(a["addr"])
    return None
