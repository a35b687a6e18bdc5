"""Leader election on the in-memory lease store, to the second: who acts, when it stops, who takes over.

Time is a number the test moves; each "controller" steps its election when the test says, so a killed
controller is one that is no longer stepped and a partitioned one is one whose store calls fail. The
second half runs two group loops on one fake tier: the standby balances and never acts, the leader's
drains wait for the standby's balancer, and a new leader resumes the old one's count.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from helpers.fake_config import GROUP, fake_group_config
from tierscale.balancer.fake import FakeBalancer
from tierscale.config.revision import template_revision
from tierscale.config.settings import settings_for
from tierscale.controller.clock import ManualClock
from tierscale.controller.group import GroupController
from tierscale.controller.host_book import HostBook
from tierscale.controller.leadership import Leadership, renew_deadline
from tierscale.controller.telemetry import Telemetry
from tierscale.coordination.base import StoreUnavailable
from tierscale.coordination.memory import MemoryLeaseStore
from tierscale.eventstore import EventStore
from tierscale.providers.fake import FakeProber, FakeProvider


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Partitioned:
    """One controller's way to the shared store: cut it and only this controller loses etcd."""

    def __init__(self, store: MemoryLeaseStore) -> None:
        self._store = store
        self.up = True

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any) -> Any:
            if not self.up:
                raise StoreUnavailable("partitioned")
            return attr(*args)

        return call


def member(store: Any, name: str, clock: Clock, ttl: float = 10.0) -> Leadership:
    return Leadership(store, name, f"{name}:9900", ttl, "/t/", now=clock, wall=clock)


def step(*members: Leadership) -> None:
    async def go() -> None:
        for m in members:
            await m.step()

    asyncio.run(go())


@pytest.mark.parametrize(("ttl", "deadline"), [(2.0, 1.0), (3.0, 2.0), (10.0, 10 - 10 / 3), (30.0, 20.0)])
def test_renew_deadline_leaves_at_least_a_second(ttl: float, deadline: float) -> None:
    assert renew_deadline(ttl) == pytest.approx(deadline)
    assert ttl - renew_deadline(ttl) >= 1.0


def test_one_leader_the_others_stand_by_and_know_it() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a, b, c = (member(store, n, clock) for n in "abc")
    step(a, b, c)
    step(a, b, c)
    assert [m.acting() for m in (a, b, c)] == [True, False, False]
    assert all(m.leader is not None and m.leader.name == "a" for m in (a, b, c))
    assert {m["name"]: m["role"] for m in b.view()["members"]} == {
        "a": "leader",
        "b": "standby",
        "c": "standby",
    }
    assert b.view()["leader_api"] == "a:9900"


def run_until_leader(candidates: list[Leadership], clock: Clock, dt: float, limit: float) -> Leadership:
    end = clock.t + limit
    while clock.t < end:
        clock.t += dt
        step(*candidates)
        for m in candidates:
            if m.acting():
                return m
    raise AssertionError("nobody took over")


def test_a_killed_leader_is_replaced_within_ttl_plus_one_try() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a, b = member(store, "a", clock), member(store, "b", clock)
    step(a, b)
    last_renew = clock.t
    assert a.acting()
    # a is SIGKILLed: it never steps again
    new = run_until_leader([b], clock, b.interval, 30)
    assert new is b
    took = clock.t - last_renew
    assert 10.0 <= took <= 10.0 + b.interval + 1e-9
    assert not a.acting()  # its own deadline passed long before
    assert a.deadline <= clock.t - 1.0
    assert b.term == 1 and b.changes == 1


def test_a_partitioned_leader_stops_acting_a_second_before_anyone_else_starts() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    pa = Partitioned(store)
    a, b = member(pa, "a", clock), member(store, "b", clock)
    step(a, b)
    assert a.acting()
    pa.up = False
    acted: dict[str, list[float]] = {"a": [clock.t], "b": []}
    dt = 0.05
    for _ in range(int(20 / dt)):
        clock.t += dt
        step(a, b)
        for m in (a, b):
            if m.acting():
                acted[m.name].append(clock.t)
    assert acted["a"] == [1000.0], acted["a"][:5]  # its first failed try stopped its acts
    assert acted["b"] and max(acted["a"]) <= min(acted["b"]) - 1.0
    assert a.lost_until <= min(acted["b"]) - 1.0  # and its lease was let go before b could act
    assert not a.leading and "partitioned" in (a.last_error or "")
    # healed: the old leader finds b's key and stays a standby
    pa.up = True
    step(a, b)
    assert not a.acting() and b.acting()
    assert a.leader is not None and a.leader.name == "b"


def test_a_flaky_store_pauses_the_leaders_acts_but_keeps_its_lease() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    pa = Partitioned(store)
    a, b = member(pa, "a", clock), member(store, "b", clock)
    step(a, b)
    for _ in range(10):  # every other try fails: renews still land every 2 x interval < deadline
        pa.up = not pa.up
        clock.t += a.interval
        step(a, b)
        # after a failed try nothing is started until a renew lands; nobody else leads meanwhile
        assert a.leading and a.acting() == pa.up and not b.acting()


def test_a_renew_that_hangs_stops_the_acts_before_it_fails() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a = member(store, "a", clock)
    step(a)
    assert a.acting()
    clock.t += a.fresh_for  # no try came back meanwhile (a call hanging in its thread)
    assert a.leading and not a.acting()
    step(a)
    assert a.acting()


def test_a_clean_stop_hands_over_on_the_next_try() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a, b = member(store, "a", clock), member(store, "b", clock)
    step(a, b)
    a.resign()
    clock.t += b.interval
    step(b)
    assert b.acting() and not a.acting()


def test_an_unreachable_store_at_start_never_acts() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    store.cut()
    a = member(store, "a", clock)
    for _ in range(5):
        clock.t += 1
        step(a)
        assert not a.acting()
    assert a.view()["role"] == "standby" and "cut" in (a.view()["error"] or "")
    store.restore()
    step(a)
    assert a.acting()


def test_the_new_leader_inherits_the_published_state_and_drains_wait_for_acks() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a, b = member(store, "a", clock), member(store, "b", clock)
    step(a, b)
    a.publish("web", {"desired": 4, "draining": ["r-1"]})
    step(a, b)
    assert b.shared["web"]["draining"] == ["r-1"]
    assert not a.acked_by_all("web", "r-1")
    b.ack("web", ["r-1"])
    step(b, a)
    assert a.acked_by_all("web", "r-1")
    a.resign()
    clock.t += 1
    step(b)
    assert b.acting() and b.inherited["web"]["desired"] == 4


# ------------------------------------------------------------------------------ two group loops, one tier
class Ctl:
    def __init__(
        self, name: str, tmp: Path, store: MemoryLeaseStore, clock: ManualClock, tier: FakeProvider
    ) -> None:
        cfg = fake_group_config(tmp / name, drain_timeout=30.0)
        self.ld = Leadership(store, name, f"{name}:9900", 10.0, "/t/", now=clock.now, wall=clock.now)
        self.balancer = FakeBalancer()
        self.store = EventStore(tmp / f"{name}.db")
        self.gc = GroupController(
            settings_for(cfg.groups[0]),
            tier,
            self.balancer,
            self.store,
            clock,
            Telemetry(),
            prober=FakeProber(tier),
            leadership=self.ld,
        )
        self.gc.ctx.hosts = HostBook(self.store)

    async def tick(self) -> None:
        await self.ld.step()
        await self.gc.reconcile()
        # Not settle(): a delete waits on the other controller's ack, which comes from its own tick.
        pending = [t for t in self.gc.ctx.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=0.2)
        await self.gc.health_rounds.probe_all()

    def backends(self) -> set[str]:
        return set(self.balancer.backends or ())


def test_standby_balances_what_the_leader_makes_and_a_new_leader_keeps_the_count(tmp_path: Path) -> None:
    clock = ManualClock()
    cfg = fake_group_config(tmp_path / "cfg")
    tier = FakeProvider(GROUP, revision=template_revision(cfg.groups[0].template), clock=clock.now)
    store = MemoryLeaseStore(clock.now)
    a, b = Ctl("a", tmp_path, store, clock, tier), Ctl("b", tmp_path, store, clock, tier)

    async def scenario() -> None:
        await a.gc.start()
        await b.gc.start()

        async def both(n: int = 1) -> None:
            for _ in range(n):
                await a.tick()
                await b.tick()
                clock.advance(1.0)

        a.gc.set_manual(3)
        await both(4)
        assert len(tier.replicas) == 3 and tier.calls["create"] == 3
        addresses = {r.address for r in tier.replicas.values()}
        assert a.backends() == addresses and b.backends() == addresses
        assert not b.store.events(GROUP, kinds=("replica_created", "replica_deleted"))
        # scale in: the leader deletes only after the standby's balancer let the replica go
        deleted_while_b_routed: list[str] = []
        real_delete = tier.delete

        def delete(replica: Any, grace: float) -> None:
            if replica.address in b.backends():
                deleted_while_b_routed.append(replica.id)
            real_delete(replica, grace)

        tier.delete = delete  # type: ignore[method-assign]
        a.gc.set_manual(2)
        for _ in range(12):
            await both()
            if len(tier.replicas) == 2:
                break
        assert len(tier.replicas) == 2 and not deleted_while_b_routed
        # a cordon on the leader reaches the standby's book
        assert a.gc.ctx.hosts is not None and b.gc.ctx.hosts is not None
        a.gc.ctx.hosts.set("fake-2", "cordoned")
        await both(2)
        assert b.gc.ctx.hosts.marks == {"fake-2": "cordoned"}
        # a dies: b takes over after the lease, at a's count, without making or removing anything
        for _ in range(14):
            await b.tick()
            clock.advance(1.0)
        assert b.ld.acting()
        assert b.gc.desired == 2 and b.gc.paused
        assert len(tier.replicas) == 2 and tier.calls["create"] == 3
        assert b.store.events(GROUP, kinds=("leader_takeover",))
        assert b.gc.ctx.hosts.marks == {"fake-2": "cordoned"}  # kept by the new leader
        assert HostBook(b.store).marks == {"fake-2": "cordoned"}  # and in its store, for its restart

    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(), 8)
        finally:
            await a.gc.shutdown()
            await b.gc.shutdown()

    asyncio.run(main())


def test_the_leader_reads_the_standbys_balancer_traffic() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a, b = member(store, "a", clock), member(store, "b", clock)
    b.share_traffic("web", {"total_rps": 7.0, "upstream": {}})
    a.share_traffic("web", {"total_rps": 3.0, "upstream": {}})
    step(a, b)
    step(a, b)
    assert a.peer_traffic("web") == [{"total_rps": 7.0, "upstream": {}}]
    assert a.peer_traffic("other") == []


@pytest.mark.parametrize(
    ("own", "peer", "rps", "requests", "p95", "total"),
    [
        ((10, 5.0, 20.0), (30, 15.0, 80.0), 20.0, 40, 80.0, 20.0),  # rates add, the highest p95 stands
        ((10, 5.0, None), (30, 15.0, 40.0), 20.0, 40, 40.0, 20.0),  # a p95 unknown on one side
        ((10, 5.0, 20.0), None, 5.0, 10, 20.0, 5.0),  # a replica only we send to
    ],
)
def test_traffic_from_every_balancer_adds_up(
    own: tuple[int, float, float | None],
    peer: tuple[int, float, float] | None,
    rps: float,
    requests: int,
    p95: float,
    total: float,
) -> None:
    from tierscale.balancer.accesslog import UpstreamStats
    from tierscale.controller.peer_traffic import from_wire, merge, to_wire
    from tierscale.metrics.base import Traffic

    mine = Traffic({"r:1": UpstreamStats(own[0], own[1], own[2], 0, 0)}, own[1])
    if peer is None:  # the other balancer sends to another replica only
        theirs = Traffic({"r:2": UpstreamStats(5, 2.5, None, 0, 0)}, 0.0)
    else:
        theirs = Traffic({"r:1": UpstreamStats(peer[0], peer[1], peer[2], 1, 0)}, peer[1])
    wired = from_wire(to_wire(theirs))
    assert wired == theirs  # through etcd unchanged
    merged = merge(mine, [wired])
    u = merged.upstream["r:1"]
    assert (u.rps, u.requests, u.p95_ms) == (rps, requests, p95)
    assert merged.total_rps == pytest.approx(total)
    assert from_wire({"upstream": {"x": {"rps": "fast"}}}) is None  # another version's figures: left out
