"""The lease store and the election against a real etcd (Debian's etcd-server) on loopback.

What the in-memory store cannot show: etcd's own lease expiry, its gateway's answers, an endpoint that
does not answer, and a restart of etcd under a leader. Two elections run side by side on real time, each
stepping every `interval`, sampled every 20 ms: at no sample do both act.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from helpers.e2e import free_port
from helpers.etcd import Etcd, running_etcd
from tierscale.controller.leadership import Leadership
from tierscale.coordination.etcd import EtcdLeaseStore

pytestmark = pytest.mark.e2e


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    port = free_port()
    with running_etcd("127.0.0.1", port, peer_port=free_port()) as e:
        yield e


def test_the_store_on_etcd_creates_once_expires_and_skips_a_dead_endpoint(etcd: Etcd) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdLeaseStore([dead, etcd.url], timeout=1.0)
    try:
        lease = store.grant(2)
        assert store.create("/t/k", "a", lease) is True
        assert store.create("/t/k", "b", lease) is False
        assert store.get("/t/k") == "a"
        assert store.delete_if("/t/k", "b") is False and store.get("/t/k") == "a"
        assert store.keepalive(lease) == 2.0
        store.put("/t/m/x", "1", lease)
        assert store.get_prefix("/t/") == {"/t/k": "a", "/t/m/x": "1"}
        end = time.monotonic() + 10
        while store.get("/t/k") is not None and time.monotonic() < end:
            time.sleep(0.1)
        assert store.get("/t/k") is None  # etcd expired the lease and its keys
        assert store.keepalive(lease) <= 0
    finally:
        store.close()


class Pair:
    """Two elections on one etcd, stepped by their own tasks; `samples` of who acted, every 20 ms."""

    def __init__(self, url: str, ttl: float) -> None:
        self.members = {
            n: Leadership(EtcdLeaseStore([url], timeout=0.5), n, f"{n}:1", ttl, "/pair/") for n in ("a", "b")
        }
        self.stepping = {"a": True, "b": True}
        self.samples: list[tuple[float, set[str]]] = []

    async def _loop(self, name: str, stop: asyncio.Event) -> None:
        m = self.members[name]
        while not stop.is_set():
            if self.stepping[name]:
                await m.step()
            await asyncio.sleep(m.interval)

    async def _sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append((time.monotonic(), {n for n, m in self.members.items() if m.acting()}))
            await asyncio.sleep(0.02)

    async def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self._loop(n, stop)) for n in self.members]
        tasks.append(asyncio.create_task(self._sample(stop)))
        try:
            await asyncio.wait_for(scenario(), 120)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for m in self.members.values():
                await asyncio.to_thread(m.resign)
                m.store.close()

    def leader(self) -> str | None:
        acting = [n for n, m in self.members.items() if m.acting()]
        return acting[0] if acting else None


async def until(pred: Callable[[], object], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout:g}s")


def test_takeover_after_a_dead_leader_and_an_etcd_restart_never_two_acting(etcd: Etcd) -> None:
    ttl = 4.0
    pair = Pair(etcd.url, ttl)
    takeovers: list[float] = []

    async def scenario() -> None:
        await until(lambda: pair.leader() is not None, 10)
        for _ in range(3):
            old = pair.leader()
            assert old is not None
            pair.stepping[old] = False  # its process is gone: no more renewals, no resign
            killed = time.monotonic()
            new = {"a": "b", "b": "a"}[old]
            await until(lambda new=new: pair.leader() == new, ttl + 10)
            takeovers.append(time.monotonic() - killed)
            pair.stepping[old] = True  # it comes back: as a standby
            back = pair.members[old]
            await until(lambda back=back, new=new: back.leader is not None and back.leader.name == new, 5)
            assert not back.acting()
        # etcd restarted under the leader: the lease survives it (etcd keeps leases across restarts)
        before = pair.leader()
        await asyncio.to_thread(etcd.restart)
        members = pair.members.values()
        await until(
            lambda: pair.leader() is not None and all(m.last_error is None for m in members), ttl + 10
        )
        print(f"\nleader before the etcd restart {before}, after {pair.leader()}")

    asyncio.run(pair.run(scenario))
    both = [t for t, acting in pair.samples if len(acting) > 1]
    assert not both, f"two acting at {len(both)} samples"
    assert len(takeovers) == 3 and all(t <= ttl + 2 * pair.members["a"].interval + 1.5 for t in takeovers)
    print(
        f"takeover after a dead leader (ttl {ttl:g}s): median {statistics.median(takeovers):.2f}s, "
        f"max {max(takeovers):.2f}s over {len(takeovers)}"
    )
