"""How a Nova server maps onto a tierscale replica: ownership marks, state, address, age.

Pure functions over the plain values the SDK returns, so every rule here is tested without a cloud.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from tierscale.addresses import format_address
from tierscale.providers.base import TierState

GROUP_KEY = "tierscale_group"
REPLICA_KEY = "tierscale_replica"
# The controller's own clock at create time: provisioning times and startup grace stay measured on one
# clock across a restart, whatever the cloud's clock says.
CREATED_KEY = "tierscale_created_at"
REVISION_KEY = "tierscale_revision"  # the template revision the server was created from

# Statuses in which the guest is (or soon is again) up: health checks decide whether it serves.
RUNNING = frozenset({"ACTIVE", "REBOOT", "HARD_REBOOT", "PASSWORD", "MIGRATING", "RESIZE", "VERIFY_RESIZE"})
BOOTING = frozenset({"BUILD", "REBUILD"})
# Gone, or going: not a replica any more.
GONE = frozenset({"DELETED", "SOFT_DELETED"})
# Everything else (ERROR, SHUTOFF, PAUSED, SUSPENDED, SHELVED..., UNKNOWN) serves nobody: the controller
# deletes and replaces it.


def owned_by(metadata: Mapping[str, Any] | None, group: str) -> str | None:
    """The replica id when the server carries this group's marks, else None (not ours: never touched)."""
    md = metadata or {}
    rid = md.get(REPLICA_KEY)
    if md.get(GROUP_KEY) != group or not isinstance(rid, str) or not rid:
        return None
    return rid


def parse_time(value: str | None) -> float | None:
    """Nova's ISO 8601 timestamps ('2026-11-27T19:25:13Z') as epoch seconds."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def created_at(metadata: Mapping[str, Any] | None, nova_created: str | None, fallback: float) -> float:
    try:
        return float((metadata or {})[CREATED_KEY])
    except (KeyError, TypeError, ValueError):
        pass
    parsed = parse_time(nova_created)
    return parsed if parsed is not None else fallback


def replica_state(
    status: str | None, task_state: str | None, age: float, boot_timeout: float
) -> TierState | None:
    """None: the server is on its way out and no longer counts."""
    status = (status or "").upper()
    if status in GONE or task_state == "deleting":
        return None
    if status in RUNNING:
        return "running"
    if status in BOOTING:
        # A build that outlived boot_timeout (e.g. its creator was killed mid-boot) is given up on.
        return "failed" if age > boot_timeout else "provisioning"
    return "failed"


def _ip(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def pick_address(
    addresses: Mapping[str, Sequence[Mapping[str, Any]]] | None, network: str | None, port: int
) -> str | None:
    """`host:port` on `network` (or, with no network configured, on any), preferring a floating IP,
    then fixed IPv4, then IPv6. None when the server has no address (e.g. booted with networks: none)."""
    if not addresses:
        return None
    names = [network] if network else sorted(addresses)

    def rank(entry: Mapping[str, Any]) -> tuple[int, int]:
        floating = entry.get("OS-EXT-IPS:type") == "floating"
        return (0 if floating else 1, 0 if entry.get("version", 4) == 4 else 1)

    for name in names:
        entries = [e for e in addresses.get(name) or () if isinstance(e, Mapping) and e.get("addr")]
        for entry in sorted(entries, key=rank):
            host = _ip(str(entry["addr"]))
            if host:
                return format_address(host, port)
    return None


def fault_message(fault: Mapping[str, Any] | None) -> str:
    """Nova's fault for a server in ERROR ('No valid host was found.'), first line only."""
    if not fault:
        return "no fault recorded by Nova"
    message = str(fault.get("message") or "").strip()
    code = fault.get("code")
    if not message:
        return f"fault code {code}" if code else "no fault recorded by Nova"
    return message.splitlines()[0].strip()


def flavor_vcpus(flavor: Any) -> int | None:
    """vCPUs from the flavor embedded in a server (compute microversion >= 2.47), if present."""
    if flavor is None:
        return None
    value = flavor.get("vcpus") if isinstance(flavor, Mapping) else getattr(flavor, "vcpus", None)
    return value if isinstance(value, int) and value > 0 else None


def cpu_seconds(cpu_details: Sequence[Mapping[str, Any]] | None) -> float | None:
    """Total guest CPU time from Nova's standardized diagnostics (microversion 2.48: nanoseconds)."""
    if not cpu_details:
        return None
    times = [c.get("time") for c in cpu_details]
    if any(not isinstance(t, int | float) for t in times):
        return None
    return sum(times) / 1e9  # type: ignore[arg-type]
