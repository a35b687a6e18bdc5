"""One group over several hosts: a provider per host (a Docker engine, a libvirt hypervisor) behind the
one `Provider` interface, with placement.

`list` asks every host at once and waits at most `list_timeout`: a host that does not answer in time (or
refuses) is named in `Listing.unreachable`, and while its listing is still hanging it is not asked again,
so one dead host never stalls the group nor piles up threads. `create` places the replica with
`policy.placement` over the hosts that answered and are not cordoned (on a host that turns out to be down,
the next best host is tried, as Nova's scheduler retries); `delete`, `stats` and the console go to the
replica's own host, which every replica carries as `Replica.host` (the host's name in the config).

Capacity comes from the tier's own API (`docker info`, `virNodeGetInfo`), refreshed every
`INFO_MAX_AGE` seconds inside the listing pass; `hosts()` answers from memory and does no I/O.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol, cast

from tierscale.policy.placement import Demand, HostLoad, PlacementParams, choose_host, refusals
from tierscale.providers.base import (
    Capability,
    CreateRejected,
    Execs,
    HostInfo,
    Listing,
    Provider,
    ProviderError,
    Replica,
    ReplicaStats,
    TemplateError,
    TierUnavailable,
    retire,
)

INFO_MAX_AGE = 60.0  # seconds between capacity reads of a host
LIST_TIMEOUT = 5.0


class HostProvider(Provider, Protocol):
    """A provider for one host that can say what the host has."""

    def host_info(self) -> HostInfo: ...


class Fleet:
    def __init__(
        self,
        members: Mapping[str, HostProvider],
        placement: PlacementParams,
        demand: Demand,
        list_timeout: float = LIST_TIMEOUT,
    ) -> None:
        if not members:
            raise ValueError("a fleet needs at least one host")
        self.members = dict(members)
        first = next(iter(self.members.values()))
        self.tier = first.tier
        shared = frozenset.intersection(*(m.capabilities for m in self.members.values()))
        self.capabilities: frozenset[Capability] = shared | {Capability.HOSTS}
        self.placement = placement
        self.demand = demand
        self.list_timeout = list_timeout
        self._pool = ThreadPoolExecutor(max_workers=4 * len(self.members), thread_name_prefix="fleet")
        self._lock = threading.Lock()
        self._hanging: dict[str, Future[tuple[Listing, HostInfo | None]]] = {}
        self._unreachable: dict[str, str] = {}  # host -> why (from the last listing or a failed call)
        self._info: dict[str, HostInfo] = {}
        self._info_at: dict[str, float] = {}
        self._count: Counter[str] = Counter()  # the group's replicas per host: last listing, then our acts
        self._pending: Counter[str] = Counter()  # creates in flight per host
        self._cordoned: frozenset[str] = frozenset()

    # ---- hosts ---------------------------------------------------------------------------------------
    def set_cordoned(self, hosts: frozenset[str]) -> None:
        """Hosts that take no new replica (cordoned or draining); the controller sets this each pass."""
        self._cordoned = frozenset(hosts) & set(self.members)

    def hosts(self) -> list[HostInfo]:
        out = []
        for name in self.members:
            info = self._info.get(name) or HostInfo(name, reachable=False)
            why = self._unreachable.get(name)
            out.append(dataclasses.replace(info, reachable=why is None and name in self._info, error=why))
        return out

    def _loads(self) -> list[HostLoad]:
        loads = []
        for name in self.members:
            info = self._info.get(name)
            why = "cordoned" if name in self._cordoned else self._unreachable.get(name, "")
            loads.append(
                HostLoad(
                    name,
                    self._count[name] + self._pending[name],
                    usable=not why,
                    cpus=info.cpus if info else None,
                    memory=info.memory_bytes if info else None,
                    why_not="unreachable" if why and why != "cordoned" else why,
                )
            )
        return loads

    # ---- list ----------------------------------------------------------------------------------------
    def _list_one(self, name: str, with_info: bool) -> tuple[Listing, HostInfo | None]:
        member = self.members[name]
        listed = member.list()
        if listed.unreachable:  # a one-host member that could see only part of itself cannot be trusted
            raise TierUnavailable(f"{name}: listing incomplete ({', '.join(sorted(listed.unreachable))})")
        info = None
        if with_info:
            try:
                info = member.host_info()
            except ProviderError:
                info = None  # the listing answered: capacity is only a filter, keep the last one
        return listed, info

    def list(self) -> Listing:
        now = time.monotonic()
        jobs: dict[str, Future[tuple[Listing, HostInfo | None]]] = {}
        unreachable: dict[str, str] = {}
        for name in self.members:
            hanging = self._hanging.get(name)
            if hanging is not None and not hanging.done():
                unreachable[name] = f"still not answering after {self.list_timeout:g}s"
                continue
            stale = now - self._info_at.get(name, -INFO_MAX_AGE) >= INFO_MAX_AGE
            jobs[name] = self._pool.submit(self._list_one, name, stale)
        if jobs:
            wait(list(jobs.values()), timeout=self.list_timeout)
        replicas: list[Replica] = []
        counts: Counter[str] = Counter()
        for name, job in jobs.items():
            if not job.done():
                self._hanging[name] = job
                unreachable[name] = f"did not answer within {self.list_timeout:g}s"
                continue
            self._hanging.pop(name, None)
            try:
                listed, info = job.result()
            except ProviderError as exc:
                unreachable[name] = str(exc)
                continue
            if info is not None:
                self._info[name] = dataclasses.replace(info, name=name)
                self._info_at[name] = now
            for r in listed:
                # Deletes and stats are routed by this name: stamp it even on replicas an older
                # spelling of the URL made.
                replicas.append(r if r.host == name else dataclasses.replace(r, host=name))
                counts[name] += 1
        with self._lock:
            self._unreachable = unreachable
            for name in self.members:
                if name not in unreachable:
                    self._count[name] = counts[name]
        if len(unreachable) == len(self.members):
            raise TierUnavailable(
                "no host answered: " + "; ".join(f"{h}: {why}" for h, why in unreachable.items())
            )
        replicas.sort(key=lambda r: r.created_at)
        return Listing(replicas, unreachable=unreachable)

    # ---- create / delete -----------------------------------------------------------------------------
    def create(self, replica_id: str) -> Replica:
        tried: list[str] = []
        while True:
            with self._lock:
                loads = [
                    dataclasses.replace(h, usable=False, why_not="unreachable") if h.name in tried else h
                    for h in self._loads()
                ]
                host = choose_host(loads, self.demand, self.placement)
                if host is None:
                    raise CreateRejected(
                        f"no host can take another replica ({refusals(loads, self.demand, self.placement)})"
                    )
                self._pending[host] += 1
            try:
                replica = self.members[host].create(replica_id)
            except TierUnavailable as exc:
                with self._lock:
                    self._unreachable[host] = str(exc)
                tried.append(host)
                continue
            finally:
                with self._lock:
                    self._pending[host] -= 1
            with self._lock:
                self._count[host] += 1
            return replica if replica.host == host else dataclasses.replace(replica, host=host)

    def _member(self, replica: Replica) -> HostProvider:
        member = self.members.get(replica.host)
        if member is None:
            raise TemplateError(
                f"replica {replica.id} runs on {replica.host!r}, which is not one of the template's hosts"
            )
        return member

    def delete(self, replica: Replica, grace: float) -> None:
        self._member(replica).delete(replica, grace)
        with self._lock:
            self._count[replica.host] = max(0, self._count[replica.host] - 1)

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        by_host: dict[str, list[Replica]] = {}
        for r in replicas:
            if r.host in self.members and r.host not in self._unreachable:
                by_host.setdefault(r.host, []).append(r)
        jobs = {h: self._pool.submit(self.members[h].stats, rs) for h, rs in by_host.items()}
        if jobs:
            wait(list(jobs.values()), timeout=self.list_timeout)
        out: dict[str, ReplicaStats] = {}
        for job in jobs.values():
            if job.done() and job.exception() is None:
                out.update(job.result())
        return out

    def console_output(self, replica: Replica) -> str:
        return self._member(replica).console_output(replica)

    def exec_check(self, replica: Replica, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        member = cast(Execs, self._member(replica))  # listed only when every member has it
        return member.exec_check(replica, argv, timeout)

    def close(self) -> None:
        for m in self.members.values():
            m.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def retire(self) -> None:
        for m in self.members.values():
            retire(m)
        self._pool.shutdown(wait=False, cancel_futures=True)
