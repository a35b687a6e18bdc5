"""Which daemons an end-to-end test shares, so that tests/run_e2e.py can run the groups side by side.

Each group owns the daemons its tests restart or reconfigure: dockerd (containers); libvirtd (vm);
the test cloud, openstack-lite (cloud); the local group needs only nginx and processes on loopback.
Within a group tests run one at a time, in collection order (the OpenStack files rely on theirs).

One daemon is shared: the cloud's real-guest test switches nova-compute to the libvirt driver, which
refuses to start next to other domains, and a vm test restarts libvirtd. So every vm test holds
`libvirtd_lock` shared, and the real-guest test holds it exclusively (`libvirtd_exclusive`).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

GROUPS = ("vm", "cloud", "containers", "local")
LIBVIRTD_LOCK = Path("/run/tierscale-tests-libvirtd.lock")


def e2e_group(nodeid: str) -> str:
    name = nodeid.lower()
    if "openstack" in name:
        return "cloud"
    if any(word in name for word in ("libvirt", "dangerous_names_tiers")):
        return "vm"
    if "docker" in name:
        return "containers"
    return "local"


@contextlib.contextmanager
def libvirtd_lock(exclusive: bool = False) -> Iterator[None]:
    """Hold the libvirtd lock across processes (flock: released when the process dies, too)."""
    with LIBVIRTD_LOCK.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
