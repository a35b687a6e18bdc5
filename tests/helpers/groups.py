"""Which daemons an end-to-end test shares, so that tests/run_e2e.py can run the groups side by side.

Each group owns the daemons its tests restart or reconfigure: dockerd (containers); the test cloud,
openstack-lite (cloud); the local group needs only nginx and processes on loopback. Within a group
tests run one at a time, in collection order (the OpenStack files rely on theirs).

libvirtd is shared by the vm group and the cloud's real-guest test (nova-compute's libvirt driver
refuses to start next to other domains). Every vm test holds `libvirtd_lock` shared; a test that
restarts libvirtd (marked `libvirtd_exclusive`) and the real-guest switch hold it exclusively. A waiting
exclusive holder closes a gate first, so shared holders cannot keep it out by taking turns.

(Two vm groups side by side were tried: on two cores their guests' boots starved the other groups, and
latency-bound tests there failed. One vm group it is.)
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

GROUPS = ("vm", "cloud", "containers", "local")
LIBVIRTD_LOCK = Path("/run/tierscale-tests-libvirtd.lock")
LIBVIRTD_GATE = Path("/run/tierscale-tests-libvirtd.gate")


# vm tests that run in the cloud group: it ends long before the vm group, which is the run's long pole.
# They hold the libvirtd lock shared like every test that uses libvirtd (`uses_libvirtd`).
# Balancing the groups' wall time (CI 2026-12-03: vm 534 s, cloud 615 s, containers 585 s, local 348 s).
# The queue tests start brokers of their own (own node names, ports, data), nothing the cloud's shares:
# they moved there when the local group became the long pole (CI 2026-12-04: local 594 s, cloud 397 s).
IN_CLOUD_GROUP = ("test_libvirt_rollout", "test_rabbitmq_", "test_redis_worker_group")
# Their engines are namespaced, but they copy the demo image out of the main one, which docker tests
# restart: they run in that group.
IN_CONTAINERS_GROUP = ("test_ha_controllers",)


def uses_libvirtd(nodeid: str) -> bool:
    return any(word in nodeid.lower() for word in ("libvirt", "dangerous_names_tiers"))


def e2e_group(nodeid: str) -> str:
    name = nodeid.lower()
    if "openstack" in name or any(word in name for word in IN_CLOUD_GROUP):
        return "cloud"
    if uses_libvirtd(nodeid):
        return "vm"
    if "docker" in name or any(word in name for word in IN_CONTAINERS_GROUP):
        return "containers"
    return "local"


@contextlib.contextmanager
def libvirtd_lock(exclusive: bool = False) -> Iterator[None]:
    """Hold the libvirtd lock across processes (flock: released when the process dies, too)."""
    with LIBVIRTD_GATE.open("a") as gate, LIBVIRTD_LOCK.open("a") as fh:
        # Through the gate: shared holders pass it one by one; an exclusive one keeps it closed until
        # it holds the lock, so no new shared holder slips in ahead of it.
        fcntl.flock(gate, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
