"""The fake tier: an in-memory provider with the failure modes of real ones, for tests and benchmarks.

Like httpx's `MockTransport`, it ships in the package so that tests of the controller (and users' own
tests) need no Docker, libvirt or cloud. Every call can be slowed (`latency`, real seconds, as a remote
API would), made to fail a number of times, and replicas can vanish, exit, turn unhealthy, or sit on a
host that stops answering (partial listings). `FakeProber` reads health from it instead of HTTP.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from tierscale.providers.base import (
    Capability,
    CreateRejected,
    HostInfo,
    Listing,
    ProviderError,
    Replica,
    ReplicaGone,
    ReplicaStats,
    TierState,
    TierUnavailable,
)

HANG_LIMIT = 30.0  # real seconds a hung fake call waits at most (a broken test fails, it does not hang)


@dataclass
class _Planned:
    """Failures queued for one operation: the next `count` calls raise `error`."""

    count: int = 0
    error: type[ProviderError] = ProviderError


class FakeProvider:
    tier = "fake"

    def __init__(
        self,
        group: str = "web",
        revision: str = "rev-1",
        hosts: Iterable[str] = ("fake-1",),
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        capabilities: Iterable[Capability] = (),
        cpu_percent: float | None = 50.0,
        healthy_on_create: bool = True,
        host_cpus: float | None = None,
        host_memory: int | None = None,
    ) -> None:
        self.group = group
        self.revision = revision
        self.hosts = list(hosts)
        self.latency = latency
        self.clock = clock
        self.capabilities = frozenset(capabilities)
        self.cpu_percent = cpu_percent
        self.healthy_on_create = healthy_on_create
        self.replicas: dict[str, Replica] = {}
        self.healthy: dict[str, bool] = {}
        self.console: dict[str, str] = {}
        self.exec_codes: dict[str, int] = {}  # exec_check's exit code per replica (default 0)
        self.exec_calls: list[tuple[str, tuple[str, ...]]] = []
        self.unreachable: set[str] = set()  # hosts whose replicas a listing cannot see
        self.calls: Counter[str] = Counter()
        self._planned: dict[str, _Planned] = {}
        self._lock = threading.Lock()
        self._ports = itertools.count(20000)
        self._place = itertools.cycle(self.hosts)
        self.closed = False
        self.bad_revisions: set[str] = set()  # replicas of these revisions never turn healthy
        self.host_cpus, self.host_memory = host_cpus, host_memory  # what host_info says
        self.hang: threading.Event | None = (
            None  # set to an unset Event: every call waits on it (a hung host)
        )

    def for_revision(self, revision: str) -> FakeProvider:
        """The same fake tier, making replicas of another template revision (what a rollout switches to)."""
        other = copy.copy(self)  # shallow: the replicas, switches and lock stay shared
        other.revision = revision
        other.closed = False
        return other

    # ---- scripting failures (from the test, any thread)
    def fail_next(self, op: str, count: int = 1, error: type[ProviderError] = ProviderError) -> None:
        """The next `count` calls of `op` (list, create, delete, stats, console_output) raise `error`."""
        with self._lock:
            self._planned[op] = _Planned(count, error)

    def vanish(self, replica_id: str) -> None:
        """Gone from the tier behind the controller's back (an operator's `docker rm -f`)."""
        with self._lock:
            self.replicas.pop(replica_id, None)

    def set_state(self, replica_id: str, state: TierState) -> None:
        with self._lock:
            self.replicas[replica_id] = replace(self.replicas[replica_id], state=state)

    def add(self, replica_id: str, revision: str | None = None, host: str | None = None) -> Replica:
        """A replica that exists before the controller starts (left by an earlier run: adoption)."""
        with self._lock:
            return self._make(replica_id, revision, host)

    # ---- the provider protocol
    def list(self) -> Listing:
        self._enter("list")
        with self._lock:
            seen = [r for r in self.replicas.values() if r.host not in self.unreachable]
            return Listing(seen, unreachable=set(self.unreachable) & set(self.hosts))

    def create(self, replica_id: str) -> Replica:
        self._enter("create")
        with self._lock:
            return self._make(replica_id, None, None)

    def delete(self, replica: Replica, grace: float) -> None:
        self._enter("delete")
        with self._lock:
            if self.replicas.pop(replica.id, None) is None:
                raise ReplicaGone(f"replica {replica.id} is not there")
            self.healthy.pop(replica.id, None)

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        self._enter("stats")
        if self.cpu_percent is None:
            return {}
        with self._lock:
            return {r.id: ReplicaStats(self.cpu_percent, 1000) for r in replicas if r.id in self.replicas}

    def console_output(self, replica: Replica) -> str:
        self._enter("console_output")
        with self._lock:
            if replica.id not in self.replicas:
                raise ReplicaGone(f"replica {replica.id} is not there")
            return self.console.get(replica.id, "")

    def exec_check(self, replica: Replica, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        self._enter("exec_check")
        with self._lock:
            if replica.id not in self.replicas:
                raise ReplicaGone(f"replica {replica.id} is not there")
            self.exec_calls.append((replica.id, tuple(argv)))
            code = self.exec_codes.get(replica.id, 0)
        return code, "" if code == 0 else f"exit {code}"

    def close(self) -> None:
        self.closed = True

    def host_info(self) -> HostInfo:
        """The first host's capacity, as a one-host member of a `Fleet` reports it."""
        self._enter("host_info")
        down = self.hosts[0] in self.unreachable
        if down:
            raise TierUnavailable(f"fake: host {self.hosts[0]} is unreachable")
        return HostInfo(self.hosts[0], True, self.host_cpus, self.host_memory)

    # ---- internals
    def _enter(self, op: str) -> None:
        hang = self.hang
        if hang is not None:
            hang.wait(HANG_LIMIT)
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls[op] += 1
            planned = self._planned.get(op)
            if planned and planned.count > 0:
                planned.count -= 1
                raise planned.error(f"fake {op} failed (scripted)")
            host_down = op == "create" and self.hosts and all(h in self.unreachable for h in self.hosts)
        if host_down:
            raise TierUnavailable("fake: every host is unreachable")

    def _make(self, replica_id: str, revision: str | None, host: str | None) -> Replica:
        if replica_id in self.replicas:
            raise CreateRejected(f"replica {replica_id} exists")
        place = host or next(h for h in self._place if h not in self.unreachable)
        r = Replica(
            id=replica_id,
            group=self.group,
            address=f"{place}:{next(self._ports)}",
            state="running",
            created_at=self.clock(),
            revision=self.revision if revision is None else revision,
            host=place,
            ref=f"fake-{replica_id}",
        )
        self.replicas[replica_id] = r
        self.healthy[replica_id] = self.healthy_on_create and r.revision not in self.bad_revisions
        return r


class FakeProber:
    """Health from the fake tier's `healthy` switches: no sockets, no timeouts."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def __call__(self, r: Replica) -> tuple[bool, str | None]:
        ok = self.provider.healthy.get(r.id, False)
        return ok, None if ok else "fake: unhealthy"
