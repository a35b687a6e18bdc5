"""Which daemons an end-to-end test shares, so that tests/run_e2e.py can run the groups side by side.

Each group owns the daemons its tests restart or reconfigure — dockerd (containers); libvirtd, which the
test cloud's nova-compute also uses when it boots real guests, and the test cloud itself (vm) — so no
test sees another group's restart. The local group needs only nginx and processes on loopback. Within a
group tests run one at a time, in collection order (the OpenStack files rely on theirs).
"""

from __future__ import annotations

GROUPS = ("vm", "containers", "local")


def e2e_group(nodeid: str) -> str:
    name = nodeid.lower()
    if any(word in name for word in ("libvirt", "openstack", "dangerous_names_tiers")):
        return "vm"
    if "docker" in name:
        return "containers"
    return "local"
