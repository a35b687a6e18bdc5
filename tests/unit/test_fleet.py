"""A group over several hosts on the fake tier: the fleet's listing (a dead or hung host), placement and
its retry, and the controller's host timeline (loss, replacement, return), cordon and drain.

Each host is a one-host `FakeProvider`; time is a `ManualClock` and passes are driven by hand.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema
import pytest
from click.testing import CliRunner

from helpers.fake_config import GROUP, fake_group_config
from tierscale.api.openapi import openapi_document
from tierscale.api.server import ApiServer
from tierscale.balancer.fake import FakeBalancer
from tierscale.cli import main as cli_main
from tierscale.config.revision import template_revision
from tierscale.controller.clock import ManualClock
from tierscale.controller.group import GroupController
from tierscale.controller.host_book import HostError
from tierscale.controller.runner import Controller
from tierscale.policy.placement import Demand, PlacementParams
from tierscale.providers.base import CreateRejected, Replica, TierUnavailable
from tierscale.providers.fake import FakeProvider
from tierscale.providers.fleet import Fleet

HOSTS = ("tcp://10.9.0.11:2375", "tcp://10.9.0.12:2375", "tcp://10.9.0.13:2375")


def members(clock: Callable[[], float] = lambda: 0.0, **kw: Any) -> dict[str, FakeProvider]:
    return {h: FakeProvider(GROUP, hosts=(h,), clock=clock, **kw) for h in HOSTS}


def per_host(replicas: list[Replica]) -> list[int]:
    counts = Counter(r.host for r in replicas)
    return [counts[h] for h in HOSTS]


# ------------------------------------------------------------------------------------------------- the fleet
def test_fleet_spreads_and_routes_deletes_to_the_replicas_host() -> None:
    m = members()
    fleet = Fleet(m, PlacementParams(), Demand())
    try:
        fleet.list()
        made = [fleet.create(f"r{i}") for i in range(6)]
        assert per_host(made) == [2, 2, 2]
        assert per_host(fleet.list()) == [2, 2, 2]
        fleet.delete(made[0], 0)
        assert made[0].id not in m[made[0].host].replicas
        assert sum(len(p.replicas) for p in m.values()) == 5
    finally:
        fleet.close()


def test_fleet_binpack_and_max_per_host() -> None:
    fleet = Fleet(members(), PlacementParams(strategy="binpack", max_per_host=2), Demand())
    try:
        fleet.list()
        made = [fleet.create(f"r{i}") for i in range(6)]
        assert per_host(made) == [2, 2, 2]
        assert [r.host for r in made[:2]] == [HOSTS[0]] * 2  # binpack fills one host first
        with pytest.raises(CreateRejected, match="max_per_host 2 reached"):
            fleet.create("r7")
    finally:
        fleet.close()


def test_an_unreachable_host_is_named_and_skipped() -> None:
    m = members()
    fleet = Fleet(m, PlacementParams(), Demand())
    try:
        fleet.list()
        for i in range(3):
            fleet.create(f"r{i}")
        m[HOSTS[1]].unreachable.add(HOSTS[1])
        listed = fleet.list()
        assert set(listed.unreachable) == {HOSTS[1]}
        assert per_host(listed) == [1, 0, 1]
        made = [fleet.create(f"n{i}") for i in range(2)]
        assert {r.host for r in made} == {HOSTS[0], HOSTS[2]}
        reach = {h.name: h.reachable for h in fleet.hosts()}
        assert reach == {HOSTS[0]: True, HOSTS[1]: False, HOSTS[2]: True}
        for p in m.values():
            p.unreachable.add(p.hosts[0])
        with pytest.raises(TierUnavailable, match="no host answered"):
            fleet.list()
    finally:
        fleet.close()


def test_a_create_on_a_host_that_turns_out_down_goes_to_the_next_host() -> None:
    m = members()
    fleet = Fleet(m, PlacementParams(), Demand())
    try:
        fleet.list()
        m[HOSTS[0]].fail_next("create", 1, TierUnavailable)
        r = fleet.create("r1")
        assert r.host == HOSTS[1]
        assert m[HOSTS[0]].calls["create"] == 1
    finally:
        fleet.close()


def test_a_hung_host_does_not_stall_the_listing_and_is_not_asked_again() -> None:
    m = members()
    fleet = Fleet(m, PlacementParams(), Demand(), list_timeout=0.2)
    hang = threading.Event()
    try:
        fleet.list()
        fleet.create("r1")
        m[HOSTS[2]].hang = hang
        for _ in range(3):
            listed = fleet.list()
            assert set(listed.unreachable) == {HOSTS[2]}
        hang.set()
        deadline = time.monotonic() + 5
        while m[HOSTS[2]].calls["list"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The first listing and the one that hung: the two listings meanwhile did not ask again.
        assert m[HOSTS[2]].calls["list"] == 2
        assert fleet.list().unreachable == frozenset()
    finally:
        hang.set()
        fleet.close()


def test_capacity_filters_on_what_the_host_reports() -> None:
    # 2 GiB x 1.5 - 512 MiB = 2.5 GiB: two 1 GiB replicas per host.
    fleet = Fleet(members(host_memory=2 * 1024**3, host_cpus=2), PlacementParams(), Demand(memory=1024**3))
    try:
        fleet.list()
        made = [fleet.create(f"r{i}") for i in range(6)]
        assert per_host(made) == [2, 2, 2]
        with pytest.raises(CreateRejected, match="not enough memory"):
            fleet.create("r7")
        assert {h.cpus for h in fleet.hosts()} == {2}
    finally:
        fleet.close()


# ------------------------------------------------------------------------------------------ the controller
class FleetTier:
    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        self.clock = ManualClock()
        config = fake_group_config(tmp_path / "state", max_=10, extra="    host_timeout: 10s\n" + extra)
        self.members = members(self.clock.now, revision=template_revision(config.groups[0].template))
        self.fleet = Fleet(self.members, PlacementParams(), Demand(), list_timeout=0.5)
        self.balancer = FakeBalancer()
        self.controller = Controller(
            config,
            clock=self.clock,
            provider_factory=lambda g, sd, sink: self.fleet,  # type: ignore[arg-type,return-value]
            balancer_factory=lambda g, sd: self.balancer,
            prober_factory=lambda g, p: self.probe,  # type: ignore[arg-type,return-value]
        )
        self.gc: GroupController = self.controller.groups[GROUP]

    async def probe(self, r: Replica) -> tuple[bool, str | None]:
        ok = self.members[r.host].healthy.get(r.id, False) if r.host in self.members else False
        return ok, None if ok else "fake: unhealthy"

    def on_hosts(self) -> list[int]:
        return [len(self.members[h].replicas) for h in HOSTS]

    def events(self, kind: str) -> list[Any]:
        return self.controller.store.events(GROUP, kinds=(kind,))

    async def tick(self, dt: float = 1.0) -> None:
        await self.gc.reconcile()
        await self.gc.settle()
        await self.gc.health_rounds.probe_all()
        self.clock.advance(dt)

    async def settle_at(self, n: int, passes: int = 8) -> None:
        self.gc.set_manual(n)
        for _ in range(passes):
            await self.tick()
            if sum(self.on_hosts()) == n and len(self.ready()) == n and not self.gc.ctx.rt.draining:
                return
        raise AssertionError(f"not settled at {n}: {self.on_hosts()}")

    def ready(self) -> list[str]:
        return [r.id for r in self.gc.status().replicas if r.state == "ready"]


def run(tier: FleetTier, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(), 20)
        finally:
            await tier.gc.shutdown()

    try:
        asyncio.run(main())
    finally:
        tier.controller.close()


def test_a_lost_host_is_replaced_after_host_timeout_and_its_return_removes_the_surplus(
    tmp_path: Path,
) -> None:
    t = FleetTier(tmp_path)
    down = HOSTS[1]

    async def scenario() -> None:
        await t.gc.start()
        await t.settle_at(6)
        assert t.on_hosts() == [2, 2, 2]
        lost = set(t.members[down].replicas)
        t.members[down].unreachable.add(down)
        await t.tick()
        # At once: out of the balancer, still counted (nothing replaced yet).
        assert not {t.members[down].replicas[r].address for r in lost} & set(t.balancer.backends)
        assert len(t.balancer.backends) == 4
        assert sum(t.on_hosts()) == 6 and len(t.events("host_unreachable")) == 1
        states = {r.id: r.state for r in t.gc.status().replicas}
        assert {states[r] for r in lost} == {"unreachable"}
        for _ in range(8):  # 9 s < host_timeout 10 s
            await t.tick()
        assert sum(t.on_hosts()) == 6 and not t.events("host_lost")
        await t.tick()
        await t.tick()
        assert len(t.events("host_lost")) == 1
        reachable = [n for h, n in zip(HOSTS, t.on_hosts(), strict=True) if h != down]
        assert reachable == [3, 3]
        assert len(t.balancer.backends) == 6
        # The host answers again: its two replicas are surplus and leave first, nothing is duplicated.
        t.members[down].unreachable.discard(down)
        for _ in range(4):
            await t.tick()
        assert len(t.events("host_back")) == 1
        assert sum(t.on_hosts()) == 6
        assert not lost & set(t.members[down].replicas)
        assert len(t.balancer.backends) == 6

    run(t, scenario)


def test_scale_in_keeps_the_spread(tmp_path: Path) -> None:
    t = FleetTier(tmp_path)

    async def scenario() -> None:
        await t.gc.start()
        await t.settle_at(6)
        for n in (5, 4, 3, 2, 1):
            await t.settle_at(n)
            counts = t.on_hosts()
            assert max(counts) - min(counts) <= 1, counts

    run(t, scenario)


def test_drain_moves_replicas_one_at_a_time_and_cordon_places_nothing(tmp_path: Path) -> None:
    t = FleetTier(tmp_path)
    handle = t.controller.handle()

    async def scenario() -> None:
        await t.gc.start()
        await t.settle_at(3)
        row = handle.host_action("10.9.0.11:2375", "cordon")
        assert row.mark == "cordoned" and row.host == HOSTS[0]
        await t.settle_at(5)
        assert t.on_hosts()[0] == 1  # cordoned: kept its one replica, took none of the two new
        handle.host_action(HOSTS[1], "drain")
        # Only host 3 is open now: host 2's replicas move there, never fewer than 5 ready (each new one
        # proves itself for the rollout's min_healthy_time, 10 s, before the next old one leaves).
        for _ in range(40):
            await t.tick()
            assert len(t.ready()) >= 5
            if t.on_hosts()[1] == 0 and not t.gc.ctx.rt.draining:
                break
        assert t.on_hosts() == [1, 0, 4]
        await t.tick()  # the pass after the last delete sees the host empty
        assert len(t.events("host_drained")) == 1
        rows = {r.host: r for r in handle.hosts()}
        assert (rows[HOSTS[1]].mark, rows[HOSTS[1]].replicas) == ("draining", {GROUP: 0})
        handle.host_action(HOSTS[1], "uncordon")
        assert {r.host: r.mark for r in handle.hosts()}[HOSTS[1]] is None
        with pytest.raises(HostError, match="no group places replicas on host 'nowhere'"):
            handle.host_action("nowhere", "drain")

    run(t, scenario)


def test_cordons_survive_a_restart(tmp_path: Path) -> None:
    t = FleetTier(tmp_path)

    async def scenario() -> None:
        await t.gc.start()
        await t.gc.reconcile()
        t.controller.handle().host_action(HOSTS[2], "cordon")

    run(t, scenario)
    again = FleetTier(tmp_path)
    try:
        assert again.controller.hosts.closed() == {HOSTS[2]}
    finally:
        again.controller.close()


# ---------------------------------------------------------------------------------------- API and CLI
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hosts_api_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = openapi_document()

    def check(name: str, body: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(body)

    t = FleetTier(tmp_path)
    monkeypatch.setenv("TIERSCALE_API_TOKEN", "tok")
    cli = CliRunner()

    async def scenario() -> None:
        server = ApiServer(
            t.controller.handle(), t.controller.config.api, listen=f"127.0.0.1:{free_port()}", token="tok"
        )
        await server.start()
        try:
            await t.gc.start()
            await t.settle_at(3)
            async with aiohttp.ClientSession() as session:
                async with session.get(server.url + "/api/hosts") as resp:
                    body = await resp.json()
                check("HostList", body)
                assert [(h["host"], h["reachable"], h["replicas"]) for h in body["hosts"]] == [
                    (h, True, {GROUP: 1}) for h in HOSTS
                ]
                quoted = quote(HOSTS[0], safe="")
                async with session.post(f"{server.url}/api/hosts/{quoted}/cordon") as resp:
                    assert resp.status == 401  # changes need the token
                auth = {"Authorization": "Bearer tok"}
                async with session.post(f"{server.url}/api/hosts/{quoted}/cordon", headers=auth) as resp:
                    row = await resp.json()
                check("HostRow", row)
                assert row["mark"] == "cordoned" and t.controller.hosts.closed() == {HOSTS[0]}
                async with session.post(f"{server.url}/api/hosts/nowhere/drain", headers=auth) as resp:
                    assert resp.status == 404
                    err = await resp.json()
                assert err["field"] == "host" and "\n" not in err["error"]

            def invoke(*args: str) -> Any:
                return cli.invoke(cli_main, [*args, "--api", server.url])

            out = await asyncio.to_thread(invoke, "hosts")
            assert out.exit_code == 0, out.output
            lines = out.output.splitlines()
            assert lines[0].split()[:4] == ["HOST", "REACHABLE", "CAPACITY", "REPLICAS"]
            assert any(HOSTS[0] in line and "cordoned" in line for line in lines)
            out = await asyncio.to_thread(invoke, "drain", "10.9.0.12:2375")
            assert out.exit_code == 0 and "draining" in out.output
            out = await asyncio.to_thread(invoke, "uncordon", "10.9.0.99")
            assert out.exit_code != 0 and "no group places replicas on host '10.9.0.99'" in out.output
            assert "Traceback" not in out.output
            out = await asyncio.to_thread(invoke, "hosts", "--json")
            marks = {r["host"]: r["mark"] for r in json.loads(out.output)}
            assert marks == {HOSTS[0]: "cordoned", HOSTS[1]: "draining", HOSTS[2]: None}
        finally:
            await server.stop()

    run(t, scenario)
