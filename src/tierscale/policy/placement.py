"""Placement over several hosts, pure: which host takes the next replica, and which replicas leave first.

The shape is Nova's scheduler: filters, then a weigher. A host passes when it is usable (reachable, not
cordoned), below `max_per_host`, and has room for one more replica of this size within its capacity
(memory x ram_allocation_ratio - reserved, cpus x cpu_allocation_ratio, counting the group's own
allocations on it: the tier does not tell us what others reserved). Among the hosts that pass, spread
takes the one with the fewest of the group's replicas and binpack the one with the most (Nomad's two
strategies; Nova's RAMWeigher with a positive or a negative multiplier), ties broken by free memory and
then by name, so the same inputs always give the same host.

Scale-in mirrors it: spread removes from the host with the most replicas first, binpack from the one
with the fewest (so that a host empties), each time taking that host's first victim in the order the
group's own victim rule gave.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1024**2


@dataclass(frozen=True)
class PlacementParams:
    strategy: str = "spread"  # spread | binpack
    max_per_host: int | None = None
    ram_allocation_ratio: float = 1.5
    cpu_allocation_ratio: float = 16.0
    reserved_memory: int = 512 * MIB


@dataclass(frozen=True)
class Demand:
    """One replica's allocation; None: the template sets no limit, so that resource does not filter."""

    cpus: float | None = None
    memory: int | None = None


@dataclass(frozen=True)
class HostLoad:
    name: str
    replicas: int  # the group's replicas on it, creates in flight included
    usable: bool = True  # reachable and not cordoned
    cpus: float | None = None  # None: capacity not known (the filter lets it pass)
    memory: int | None = None
    why_not: str = ""  # why it is not usable ("cordoned", "unreachable")


def free_memory(host: HostLoad, demand: Demand, p: PlacementParams) -> float | None:
    """Memory left for the group on `host` after its current replicas; None when not known."""
    if host.memory is None:
        return None
    used = host.replicas * (demand.memory or 0)
    return host.memory * p.ram_allocation_ratio - p.reserved_memory - used


def refusal(host: HostLoad, demand: Demand, p: PlacementParams) -> str | None:
    """Why `host` cannot take one more replica, or None when it can."""
    if not host.usable:
        return host.why_not or "not usable"
    if p.max_per_host is not None and host.replicas >= p.max_per_host:
        return f"max_per_host {p.max_per_host} reached"
    if demand.memory is not None:
        free = free_memory(host, demand, p)
        if free is not None and free < demand.memory:
            left, need = max(0.0, free) / MIB, demand.memory / MIB
            return f"not enough memory ({left:.0f} MiB left, {need:.0f} needed)"
    if demand.cpus is not None and host.cpus is not None:
        left = host.cpus * p.cpu_allocation_ratio - host.replicas * demand.cpus
        if left < demand.cpus:
            return f"not enough CPU allotment ({max(0.0, left):g} left, {demand.cpus:g} needed)"
    return None


def choose_host(hosts: Sequence[HostLoad], demand: Demand, p: PlacementParams) -> str | None:
    """The host for the next replica, or None when no host passes the filters."""
    passing = [h for h in hosts if refusal(h, demand, p) is None]
    if not passing:
        return None

    def weight(h: HostLoad) -> tuple[float, float, str]:
        free = free_memory(h, demand, p)
        room = free if free is not None else 0.0
        if p.strategy == "binpack":
            return (-h.replicas, room, h.name)
        return (h.replicas, -room, h.name)

    return min(passing, key=weight).name


def refusals(hosts: Sequence[HostLoad], demand: Demand, p: PlacementParams) -> str:
    """Every host's reason, for the one-line error when nothing passes."""
    return "; ".join(f"{h.name}: {refusal(h, demand, p) or 'ok'}" for h in hosts) or "no hosts"


def scale_in_order(
    ordered: Sequence[tuple[str, str]], strategy: str, counts: Counter[str] | None = None
) -> list[str]:
    """Replica ids (given as (id, host) in the group's own victim order) reordered so that removing them
    front to back keeps the spread (or, for binpack, empties the emptiest host first).

    `counts` are the replicas per host to start from (default: those in `ordered`)."""
    left = Counter(counts) if counts is not None else Counter(h for _, h in ordered)
    queues: dict[str, list[str]] = {}
    for rid, host in ordered:
        queues.setdefault(host, []).append(rid)
    first_seen = {host: i for i, host in enumerate(queues)}
    out: list[str] = []
    while any(queues.values()):
        candidates = [h for h, q in queues.items() if q]
        if strategy == "binpack":
            host = min(candidates, key=lambda h: (left[h], first_seen[h]))
        else:
            host = min(candidates, key=lambda h: (-left[h], first_seen[h]))
        out.append(queues[host].pop(0))
        left[host] -= 1
    return out
