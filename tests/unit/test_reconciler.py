"""The group loop on the fake tier: victim order, create/list backoff, adoption, vanish / exit / unhealthy
replacement, partial listings, the listing-in-flight races and what the balancer is told.

No Docker, libvirt or nginx; time is a `ManualClock` and every pass is driven by hand:
reconcile → settle (creates and drains finish) → health round → advance the clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers.fake_config import GROUP, fake_group_config
from tierscale.balancer.fake import FakeBalancer
from tierscale.config.revision import template_revision
from tierscale.config.settings import settings_for
from tierscale.controller.clock import ManualClock
from tierscale.controller.group import GroupController
from tierscale.controller.reconciler import victim_order
from tierscale.controller.runner import Controller
from tierscale.eventstore import Event
from tierscale.providers.base import (
    CreateRejected,
    Listing,
    ProviderError,
    ProviderTimeout,
    Replica,
    ReplicaStats,
    TierUnavailable,
)
from tierscale.providers.fake import FakeProber, FakeProvider

GATE_TIMEOUT = 5.0  # real seconds a gated fake waits at most (a broken test fails instead of hanging)


# ---------------------------------------------------------------------------------------------------- harness
def group_config(
    state_dir: Path,
    *,
    min_: int = 1,
    max_: int = 10,
    order: str = "newest",
    unhealthy_after: int = 3,
    startup_grace: float = 60.0,
) -> Any:
    return fake_group_config(
        state_dir,
        min_=min_,
        max_=max_,
        order=order,
        unhealthy_after=unhealthy_after,
        startup_grace=startup_grace,
    )


@dataclass
class Tier:
    """One group on the fake tier, with the clock, provider and balancer a test scripts."""

    clock: ManualClock
    controller: Controller
    provider: FakeProvider
    balancer: FakeBalancer
    gc: GroupController
    order: list[tuple[str, Any]] = field(default_factory=list)  # shared call log of gated fakes

    @property
    def rt(self) -> Any:
        return self.gc.ctx.rt

    def events(self, *kinds: str) -> list[Event]:
        return self.controller.store.events(GROUP, kinds=kinds)

    def replacements(self, reason: str) -> float:
        value = self.controller.telemetry.registry.get_sample_value(
            "tierscale_replacements_total", {"group": GROUP, "reason": reason}
        )
        return value or 0.0

    def balancer_reloads(self, result: str) -> float:
        value = self.controller.telemetry.registry.get_sample_value(
            "tierscale_balancer_reloads_total", {"group": GROUP, "result": result}
        )
        return value or 0.0

    def ready_ids(self) -> set[str]:
        return {r.id for r in self.gc.status().replicas if r.state == "ready"}

    def address(self, rid: str) -> str:
        addr = self.rt.replicas[rid].address
        assert addr is not None
        return addr

    async def tick(self, dt: float = 1.0) -> None:
        """One pass: reconcile, let its creates and drains finish, probe, move time on."""
        await self.gc.reconcile()
        await self.gc.settle()
        await self.gc.health_rounds.probe_all()
        self.clock.advance(dt)

    async def scale_to(self, n: int, passes: int = 5) -> None:
        self.gc.set_manual(n)
        for _ in range(passes):
            await self.tick()
            if len(self.provider.replicas) == n and len(self.ready_ids()) == n and not self.rt.draining:
                return
        raise AssertionError(f"group did not settle at {n}: {self.gc.status()}")


def make_tier(
    tmp_path: Path,
    *,
    provider_cls: type[FakeProvider] = FakeProvider,
    balancer_cls: type[FakeBalancer] = FakeBalancer,
    hosts: Iterable[str] = ("fake-1",),
    pre: Callable[[FakeProvider], None] | None = None,
    **cfg: Any,
) -> Tier:
    clock = ManualClock()
    made: dict[str, Any] = {}

    def provider_factory(g: Any, state_dir: Path, sink: Any) -> FakeProvider:
        revision = template_revision(g.template)
        if "provider" in made:  # a rollout asks for another revision: the same fake tier makes it
            return made["provider"].for_revision(revision)
        p = provider_cls(g.name, revision=revision, clock=clock.now, hosts=tuple(hosts), cpu_percent=50.0)
        if pre is not None:
            pre(p)
        made["provider"] = p
        return p

    def balancer_factory(g: Any, state_dir: Path) -> FakeBalancer:
        made["balancer"] = balancer_cls()
        return made["balancer"]

    controller = Controller(
        group_config(tmp_path / "state", **cfg),
        clock=clock,
        provider_factory=provider_factory,
        balancer_factory=balancer_factory,
        prober_factory=lambda g, p: FakeProber(p),  # type: ignore[arg-type]
    )
    tier = Tier(clock, controller, made["provider"], made["balancer"], controller.groups[GROUP])
    for obj in (tier.provider, tier.balancer):
        obj.tier_log = tier.order  # type: ignore[attr-defined]  # for the recording subclasses
    return tier


def run(tier: Tier, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(), 8)
        finally:
            await tier.gc.shutdown()

    try:
        asyncio.run(main())
    finally:
        tier.controller.close()


# ----------------------------------------------------------------------------------------------- victim order
def rep(rid: str, created_at: float) -> Replica:
    return Replica(id=rid, group=GROUP, address=f"h:{created_at:g}", state="running", created_at=created_at)


A, B, C, D = rep("a", 10.0), rep("b", 30.0), rep("c", 20.0), rep("d", 40.0)
LOAD = {"a": 90.0, "b": 10.0, "c": 50.0, "d": 70.0}


def stats(load: dict[str, float | None]) -> dict[str, ReplicaStats]:
    return {rid: ReplicaStats(cpu, 1000) for rid, cpu in load.items()}


@pytest.mark.parametrize(
    ("order", "ready", "load", "expected"),
    [
        ("newest", "abc", LOAD, "bca"),
        ("oldest", "abc", LOAD, "acb"),
        ("least_loaded", "abc", LOAD, "bca"),
        # Not ready serves nobody: it goes first whatever the order says.
        ("newest", "bc", LOAD, "abc"),
        ("oldest", "ac", LOAD, "bac"),
        ("least_loaded", "bc", LOAD, "abc"),
        # Several not ready: among them the order still applies.
        ("newest", "a", LOAD, "bca"),
        ("oldest", "b", LOAD, "acb"),
        ("least_loaded", "c", LOAD, "bac"),
        ("newest", "", LOAD, "bca"),
        # No sample, or a sample without CPU, counts as idle (a replica with no load is the cheapest to lose).
        ("least_loaded", "abc", {"a": 90.0, "c": 50.0}, "bca"),
        ("least_loaded", "abc", {"a": 90.0, "b": None, "c": 50.0}, "bca"),
        ("least_loaded", "abcd", LOAD, "bcda"),
        ("newest", "abcd", LOAD, "dbca"),
        ("oldest", "abd", LOAD, "cabd"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_victim_order(order: str, ready: str, load: dict[str, float | None], expected: str) -> None:
    candidates = [A, B, C, D] if "d" in expected else [A, B, C]
    got = victim_order(candidates, set(ready), stats(load), order)
    assert "".join(r.id for r in got) == expected


@pytest.mark.parametrize("order", ["newest", "oldest", "least_loaded"])
def test_victim_order_keeps_its_input(order: str) -> None:
    candidates = [A, B, C]
    victim_order(candidates, {"a"}, stats(LOAD), order)
    assert candidates == [A, B, C]


@pytest.mark.parametrize("order", ["oldest", "newest", "least_loaded"])
def test_scale_in_drains_a_starting_replica_first(tmp_path: Path, order: str) -> None:
    """In the loop: the one replica still starting is the victim, whatever the order would pick otherwise."""
    tier = make_tier(tmp_path, order=order)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        ready_before = tier.ready_ids()
        tier.provider.healthy_on_create = False
        tier.gc.set_manual(3)
        await tier.tick()
        await tier.tick()
        starting = set(tier.provider.replicas) - ready_before
        assert len(starting) == 1
        tier.gc.set_manual(2)
        await tier.tick()
        assert set(tier.provider.replicas) == ready_before
        assert [e.replica for e in tier.events("replica_deleted")] == list(starting)

    run(tier, scenario)


# --------------------------------------------------------------------------------------------- create backoff
@pytest.mark.parametrize(
    ("failures", "delays"),
    [
        (1, [1]),
        (3, [1, 2, 4]),
        (8, [1, 2, 4, 8, 16, 32, 60, 60]),  # capped at 60s
    ],
    ids=["one", "three", "capped"],
)
@pytest.mark.parametrize("error", [CreateRejected, TierUnavailable, ProviderError], ids=lambda e: e.__name__)
def test_create_failure_backs_off(
    tmp_path: Path, failures: int, delays: list[int], error: type[ProviderError]
) -> None:
    tier = make_tier(tmp_path, min_=1)

    async def scenario() -> None:
        await tier.gc.start()
        tier.gc.pause()  # hold desired at min: one create per pass, and no policy in the way
        tier.provider.fail_next("create", failures, error)
        for i, delay in enumerate(delays):
            attempt_at = tier.clock.now()
            await tier.tick(0)
            assert tier.provider.calls["create"] == i + 1
            assert tier.rt.create_backoff.not_before == attempt_at + delay
            # Nothing is tried before `not_before`, however many passes run meanwhile.
            for _ in range(3):
                tier.clock.advance(delay / 4)
                await tier.tick(0)
            assert tier.provider.calls["create"] == i + 1, f"create retried before {delay}s"
            tier.clock.advance(delay - 3 * delay / 4)
        failed = tier.events("create_failed")
        assert len(failed) == failures
        assert [e.message.rsplit("retry in ", 1)[1] for e in failed] == [f"{d}s" for d in delays]
        assert all(e.replica and e.data["error"] == "fake create failed (scripted)" for e in failed)
        assert not tier.provider.replicas
        # The tier recovers: the next attempt makes the replica and the backoff starts over.
        await tier.tick()
        assert tier.provider.calls["create"] == failures + 1
        assert len(tier.provider.replicas) == 1
        assert tier.rt.create_backoff.failures == 0
        assert tier.rt.create_backoff.not_before == 0.0
        assert tier.rt.creating == 0
        tier.provider.fail_next("create", 1, error)
        tier.gc.set_manual(2)
        await tier.tick(0)
        assert tier.events("create_failed")[-1].message.endswith("retry in 1s")

    run(tier, scenario)


def test_create_failure_of_a_batch(tmp_path: Path) -> None:
    """Three creates in one pass, two refused: the third still lands, the two missing are made later.

    (Whether the backoff holds after such a pass depends on which create finished last: the one that
    succeeded resets it. So only the outcome is checked here.)"""
    tier = make_tier(tmp_path, min_=1)

    async def scenario() -> None:
        await tier.gc.start()
        tier.gc.set_manual(3)
        tier.provider.fail_next("create", 2, CreateRejected)
        await tier.tick(0)
        assert tier.provider.calls["create"] == 3
        assert len(tier.provider.replicas) == 1
        assert len(tier.events("create_failed")) == 2
        for _ in range(3):
            await tier.tick(2)
        assert tier.provider.calls["create"] == 5
        assert len(tier.provider.replicas) == 3
        assert tier.rt.creating == 0

    run(tier, scenario)


# ---------------------------------------------------------------------------------------------- list failures
@pytest.mark.parametrize(
    "error", [TierUnavailable, ProviderTimeout, ProviderError], ids=["unavailable", "timeout", "error"]
)
@pytest.mark.parametrize("vanish_meanwhile", [False, True], ids=["steady", "vanish-meanwhile"])
def test_list_failure_keeps_the_last_view(
    tmp_path: Path, error: type[ProviderError], vanish_meanwhile: bool
) -> None:
    tier = make_tier(tmp_path, min_=1)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        view = dict(tier.rt.replicas)
        backends = tier.balancer.backends
        creates = tier.provider.calls["create"]
        tier.provider.fail_next("list", 3, error)
        if vanish_meanwhile:  # while the tier cannot be listed, a vanish cannot be seen either
            tier.provider.vanish(next(iter(view)))
        lists = tier.provider.calls["list"]
        expected_delays = [1, 2, 4]
        for i, delay in enumerate(expected_delays):
            await tier.tick(0)
            assert tier.provider.calls["list"] == lists + i + 1
            st = tier.gc.status()
            assert st.provider_ok is False
            assert st.last_error == "fake list failed (scripted)"
            assert {r.id for r in st.replicas} == set(view)
            assert tier.rt.replicas == view
            # No list before the backoff is over.
            tier.clock.advance(delay / 2)
            await tier.tick(0)
            assert tier.provider.calls["list"] == lists + i + 1
            tier.clock.advance(delay / 2)
        assert tier.balancer.backends == backends
        assert tier.provider.calls["create"] == creates
        assert not tier.events("replica_replaced")
        errors = [e.message for e in tier.events("provider_error")]
        assert errors == ["cannot list replicas: fake list failed (scripted); retrying in 1s"]
        # Reachable again: one event, the backoff reset, and only now is a vanished replica replaced.
        await tier.tick()
        assert tier.gc.status().provider_ok is True
        assert tier.gc.status().last_error is None
        assert tier.rt.list_backoff.failures == 0
        assert [e.message for e in tier.events("provider_error")][-1] == "provider reachable again"
        assert len(tier.events("replica_replaced")) == (1 if vanish_meanwhile else 0)
        await tier.tick()
        assert tier.provider.calls["create"] == creates + (1 if vanish_meanwhile else 0)
        assert len(tier.provider.replicas) == 2

    run(tier, scenario)


def start_with_list_failing(tmp_path: Path, found: int, min_: int) -> tuple[Tier, set[str]]:
    old = {f"r-old-{i}" for i in range(found)}

    def pre(p: FakeProvider) -> None:
        for rid in sorted(old):
            p.add(rid)
        p.fail_next("list", 2, TierUnavailable)

    return make_tier(tmp_path, min_=min_, max_=5, pre=pre), old


def test_list_failing_at_start_creates_nothing_blind(tmp_path: Path) -> None:
    """A controller that cannot list at start must not act blind: nothing is created while it fails."""
    tier, old = start_with_list_failing(tmp_path, found=2, min_=2)

    async def scenario() -> None:
        await tier.gc.start()
        assert tier.gc.status().provider_ok is False
        for _ in range(3):  # the listing fails twice (1s, then 2s of backoff)
            await tier.tick()
            assert tier.provider.calls["create"] == 0
            assert not tier.rt.draining
        for _ in range(3):
            await tier.tick()
        assert tier.gc.status().provider_ok is True
        assert tier.provider.calls["create"] == 0
        assert tier.provider.calls["delete"] == 0
        assert set(tier.provider.replicas) == set(tier.rt.replicas) == old
        assert len(tier.ready_ids()) == 2

    run(tier, scenario)


@pytest.mark.parametrize(("found", "min_"), [(2, 2), (3, 1)], ids=["found-equals-min", "found-above-min"])
def test_list_failing_at_start_still_adopts(tmp_path: Path, found: int, min_: int) -> None:
    """Once the tier answers, what it holds is adopted as at any start: desired is its count, none deleted."""
    tier, old = start_with_list_failing(tmp_path, found=found, min_=min_)

    async def scenario() -> None:
        await tier.gc.start()
        for _ in range(6):
            await tier.tick()
        assert tier.gc.status().provider_ok is True
        assert tier.provider.calls["delete"] == 0
        assert set(tier.provider.replicas) == old
        assert tier.gc.desired == found
        assert sorted(e.replica for e in tier.events("replica_adopted")) == sorted(old)

    run(tier, scenario)


# --------------------------------------------------------------------------------------------------- adoption
@pytest.mark.parametrize(
    ("found", "min_", "max_", "desired"),
    [
        (3, 1, 5, 3),
        (2, 2, 5, 2),
        (5, 1, 3, 3),  # more than max: clamped down
        (1, 2, 5, 2),  # fewer than min: clamped up
        (0, 1, 5, 1),
    ],
    ids=["within", "at-min", "above-max", "below-min", "none"],
)
def test_adoption_after_restart(tmp_path: Path, found: int, min_: int, max_: int, desired: int) -> None:
    def pre(p: FakeProvider) -> None:
        for i in range(found):  # of the template's revision: adoption alone (other revisions roll out)
            p.add(f"r-old-{i}", host=p.hosts[i % len(p.hosts)])

    tier = make_tier(tmp_path, min_=min_, max_=max_, hosts=("h1", "h2"), pre=pre)

    async def scenario() -> None:
        before = dict(tier.provider.replicas)
        await tier.gc.start()
        assert tier.gc.desired == desired
        assert tier.provider.calls["create"] == 0
        assert sorted(e.replica for e in tier.events("replica_adopted")) == sorted(before)
        st = tier.gc.status()
        assert {(r.id, r.revision, r.host) for r in st.replicas} == {
            (r.id, r.revision, r.host) for r in before.values()
        }
        # Adopted replicas that answer get traffic at start, before any pass.
        assert sorted(tier.balancer.backends or ()) == sorted(r.address for r in before.values())
        tier.gc.pause()
        await tier.tick()
        await tier.tick()
        assert tier.provider.calls["create"] == max(0, desired - found)
        assert len(tier.provider.replicas) == desired
        survivors = set(before) & set(tier.provider.replicas)
        assert len(survivors) == min(found, desired)

    run(tier, scenario)


def test_adoption_ignores_failed_replicas_in_the_count(tmp_path: Path) -> None:
    def pre(p: FakeProvider) -> None:
        for i in range(3):
            p.add(f"r-old-{i}")
        p.set_state("r-old-0", "failed")

    tier = make_tier(tmp_path, min_=1, pre=pre)

    async def scenario() -> None:
        await tier.gc.start()
        assert tier.gc.desired == 2
        assert len(tier.events("replica_adopted")) == 3
        tier.gc.pause()
        await tier.tick()
        assert "r-old-0" not in tier.provider.replicas
        assert tier.provider.calls["create"] == 0  # the failed one did not count toward desired

    run(tier, scenario)


# ----------------------------------------------------------------------------------------------------- vanish
@pytest.mark.parametrize("n", [1, 3], ids=["one-of-one", "one-of-three"])
def test_vanished_replica_is_replaced(tmp_path: Path, n: int) -> None:
    tier = make_tier(tmp_path, min_=1)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(n)
        gone = sorted(tier.rt.replicas)[0]
        gone_addr = tier.address(gone)
        creates = tier.provider.calls["create"]
        tier.provider.vanish(gone)
        await tier.tick()
        replaced = tier.events("replica_replaced")
        assert [(e.replica, e.data["reason"]) for e in replaced] == [(gone, "vanished")]
        assert tier.replacements("vanished") == 1
        assert tier.provider.calls["create"] == creates + 1
        assert gone not in tier.rt.replicas
        assert gone_addr not in (tier.balancer.backends or ())
        assert len(tier.provider.replicas) == n
        assert not tier.events("delete_failed")
        await tier.tick()
        assert len(tier.ready_ids()) == n
        assert tier.replacements("vanished") == 1  # counted once, not per pass

    run(tier, scenario)


class GatedDrainBalancer(FakeBalancer):
    """A drain that waits until the test lets it go (connections still open), logging the call order."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.on_drain: Callable[[str], None] | None = None

    def apply(self, backends: Any) -> Any:
        result = super().apply(backends)
        self.tier_log.append(("apply", tuple(backends) if result.ok else "rejected"))  # type: ignore[attr-defined]
        return result

    def wait_drained(self, address: str, timeout: float) -> bool:
        self.tier_log.append(("drain", address))  # type: ignore[attr-defined]
        if self.on_drain is not None:
            self.on_drain(address)
        self.entered.set()
        assert self.gate.wait(GATE_TIMEOUT)
        return super().wait_drained(address, timeout)


class LoggingProvider(FakeProvider):
    def delete(self, replica: Replica, grace: float) -> None:
        balancer = self.tier_balancer  # type: ignore[attr-defined]
        self.tier_log.append(("delete", replica.id, balancer.backends))  # type: ignore[attr-defined]
        super().delete(replica, grace)


def vanish_by_address(tier: Tier) -> Callable[[str], None]:
    def hook(address: str) -> None:
        rid = next(r.id for r in tier.provider.replicas.values() if r.address == address)
        tier.provider.vanish(rid)

    return hook


@pytest.mark.parametrize("listed_meanwhile", [False, True], ids=["gone-at-delete", "listed-while-draining"])
def test_vanish_mid_drain_is_not_an_error(tmp_path: Path, listed_meanwhile: bool) -> None:
    tier = make_tier(tmp_path, min_=1, balancer_cls=GatedDrainBalancer)
    balancer = tier.balancer
    assert isinstance(balancer, GatedDrainBalancer)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(3)
        creates = tier.provider.calls["create"]
        balancer.on_drain = vanish_by_address(tier)
        balancer.gate.clear()
        tier.gc.set_manual(2)
        await tier.gc.reconcile()  # spawns the drain; it stops in wait_drained, after the vanish
        assert await asyncio.to_thread(balancer.entered.wait, GATE_TIMEOUT)
        (victim,) = tier.rt.draining
        assert victim not in tier.provider.replicas
        if listed_meanwhile:
            await tier.gc.reconcile()  # the listing no longer shows the draining replica
            assert victim not in tier.rt.replicas
        balancer.gate.set()
        await tier.gc.settle()
        await tier.tick()
        await tier.tick()
        assert not tier.events("delete_failed")
        assert not tier.events("replica_replaced")
        assert tier.replacements("vanished") == 0
        assert tier.provider.calls["create"] == creates
        assert victim not in tier.rt.replicas and not tier.rt.draining
        assert len(tier.provider.replicas) == 2
        assert len(tier.ready_ids()) == 2

    run(tier, scenario)


# ------------------------------------------------------------------------------------------- exit / unhealthy
@pytest.mark.parametrize("which", [0, -1], ids=["oldest", "newest"])
def test_failed_replica_is_reaped_and_replaced(tmp_path: Path, which: int) -> None:
    tier = make_tier(tmp_path, min_=1)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        broken = sorted(tier.rt.replicas.values(), key=lambda r: r.created_at)[which].id
        broken_addr = tier.address(broken)
        creates = tier.provider.calls["create"]
        tier.provider.set_state(broken, "failed")
        await tier.tick()
        replaced = tier.events("replica_replaced")
        assert [(e.replica, e.data["reason"]) for e in replaced] == [(broken, "exited")]
        assert tier.replacements("exited") == 1
        assert broken not in tier.provider.replicas  # reaped: deleted from the tier
        assert tier.provider.calls["delete"] == 1
        assert tier.provider.calls["create"] == creates + 1
        assert broken_addr not in (tier.balancer.backends or ())
        await tier.tick()
        assert len(tier.ready_ids()) == 2
        assert tier.replacements("exited") == 1

    run(tier, scenario)


@pytest.mark.parametrize(
    ("was_ready", "unhealthy_after", "grace", "condemned_after"),
    [
        # Ready before: failures count at once, `unhealthy_after` rounds in a row.
        (True, 1, 30.0, 1),
        (True, 3, 30.0, 3),
        # Never ready: failures inside the grace do not count; the first that does is at its end.
        (False, 2, 4.0, 4 + 2 - 1),
        (False, 3, 0.0, 3),
    ],
    ids=["ready-1", "ready-3", "booting-grace-4s", "booting-no-grace"],
)
def test_unhealthy_replica_is_replaced(
    tmp_path: Path, was_ready: bool, unhealthy_after: int, grace: float, condemned_after: int
) -> None:
    tier = make_tier(tmp_path, min_=1, unhealthy_after=unhealthy_after, startup_grace=grace)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(1)
        good = next(iter(tier.rt.replicas))
        if not was_ready:
            tier.provider.healthy_on_create = False
        tier.gc.set_manual(2)
        await tier.gc.reconcile()
        await tier.gc.settle()
        (sick,) = set(tier.rt.replicas) - {good}
        created = tier.rt.replicas[sick].created_at
        tier.provider.healthy_on_create = True
        if was_ready:
            await tier.gc.health_rounds.probe_all()
            assert tier.address(sick) in (tier.balancer.backends or ())
        tier.provider.healthy[sick] = False
        sick_addr = tier.address(sick)
        rounds = 0
        while not tier.gc.ctx.health.is_unhealthy(sick):
            tier.clock.advance(1)
            await tier.gc.health_rounds.probe_all()
            rounds += 1
            assert rounds <= condemned_after, "not condemned in time"
            if rounds < condemned_after:  # failing, not condemned yet: a ready one still serves
                assert (sick_addr in (tier.balancer.backends or ())) is was_ready
        if was_ready:
            assert rounds == condemned_after
        else:
            assert tier.clock.now() - created == condemned_after
        assert [e.replica for e in tier.events("replica_unhealthy")] == [sick]
        assert tier.replacements("unhealthy") == 1
        # Taken out of the balancer at once (in the health round), then deleted and replaced.
        assert sick_addr not in (tier.balancer.backends or ())
        assert tier.address(good) in (tier.balancer.backends or ())
        assert tier.gc.status().current == 1
        creates = tier.provider.calls["create"]
        await tier.tick()
        assert sick not in tier.provider.replicas
        assert tier.provider.calls["create"] == creates + 1
        await tier.tick()
        assert len(tier.ready_ids()) == 2
        assert sick_addr not in (tier.balancer.backends or ())
        assert tier.replacements("unhealthy") == 1

    run(tier, scenario)


# -------------------------------------------------------------------------------------------- partial listing
@pytest.mark.parametrize(
    ("hosts", "down", "n"),
    [
        (("h1", "h2"), {"h2"}, 4),
        (("h1", "h2", "h3"), {"h2", "h3"}, 3),
    ],
    ids=["one-of-two-down", "two-of-three-down"],
)
def test_partial_listing_keeps_unseen_replicas(
    tmp_path: Path, hosts: tuple[str, ...], down: set[str], n: int
) -> None:
    tier = make_tier(tmp_path, min_=1, hosts=hosts)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(n)
        on_down = {r.id for r in tier.rt.replicas.values() if r.host in down}
        assert on_down, "the placement put nothing on the unreachable host(s)"
        ids = set(tier.rt.replicas)
        creates = tier.provider.calls["create"]
        tier.provider.unreachable = set(down)
        for _ in range(3):
            await tier.tick()
            assert set(tier.rt.replicas) == ids
            assert tier.provider.calls["create"] == creates
            assert tier.gc.status().current == n
        assert not tier.events("replica_replaced")
        assert tier.replacements("vanished") == 0
        (ev,) = [e for e in tier.events("provider_error") if "cannot list host" in e.message]
        assert all(h in ev.message for h in down)
        assert ev.data["hosts"] == sorted(down)
        assert tier.rt.unreachable_hosts == frozenset(down)
        tier.provider.unreachable = set()
        for _ in range(2):
            await tier.tick()
        assert set(tier.rt.replicas) == ids
        assert set(tier.provider.replicas) == ids
        assert tier.provider.calls["create"] == creates
        assert tier.rt.unreachable_hosts == frozenset()
        assert len(tier.ready_ids()) == n

    run(tier, scenario)


def test_vanish_on_an_unreachable_host_is_seen_when_it_returns(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, min_=1, hosts=("h1", "h2"))

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        (on_h2,) = [r.id for r in tier.rt.replicas.values() if r.host == "h2"]
        tier.provider.unreachable = {"h2"}
        await tier.tick()
        tier.provider.vanish(on_h2)
        await tier.tick()
        assert on_h2 in tier.rt.replicas  # unseen, not gone
        tier.provider.unreachable = set()
        await tier.tick()
        assert [e.replica for e in tier.events("replica_replaced")] == [on_h2]
        assert len(tier.provider.replicas) == 2

    run(tier, scenario)


# ---------------------------------------------------------------------------------------------- listing races
class GatedProvider(FakeProvider):
    """A listing that is taken, then held in flight, while a create or delete finishes beside it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hold_list = False
        self.list_entered = threading.Event()
        self.list_gate = threading.Event()
        self.op_gate = threading.Event()  # create and delete wait on this
        self.op_gate.set()

    def list(self) -> Listing:
        listing = super().list()
        if self.hold_list:
            self.hold_list = False
            self.list_entered.set()
            assert self.list_gate.wait(GATE_TIMEOUT)
        return listing

    def create(self, replica_id: str) -> Replica:
        assert self.op_gate.wait(GATE_TIMEOUT)
        return super().create(replica_id)

    def delete(self, replica: Replica, grace: float) -> None:
        assert self.op_gate.wait(GATE_TIMEOUT)
        super().delete(replica, grace)


async def race_a_listing(tier: Tier, race: str) -> str:
    """Pass A starts a create (or a drain) that stops at the tier; pass B takes a listing of the tier as
    it is and holds it in flight while the create (delete) finishes. Returns the replica that changed."""
    p = tier.provider
    assert isinstance(p, GatedProvider)
    before = set(p.replicas)
    p.op_gate.clear()
    tier.gc.set_manual(len(before) + 1 if race == "created-during-list" else len(before) - 1)
    await tier.gc.reconcile()
    p.hold_list = True
    p.list_gate.clear()
    pass_b = asyncio.ensure_future(tier.gc.reconcile())
    assert await asyncio.to_thread(p.list_entered.wait, GATE_TIMEOUT)
    p.op_gate.set()
    await tier.gc.settle()
    (changed,) = set(p.replicas) ^ before
    p.list_gate.set()
    await pass_b
    return changed


@pytest.mark.parametrize("race", ["created-during-list", "deleted-during-list"])
def test_listing_in_flight_races(tmp_path: Path, race: str) -> None:
    tier = make_tier(tmp_path, min_=1, provider_cls=GatedProvider)
    p = tier.provider

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        creates, deletes = p.calls["create"], p.calls["delete"]
        changed = await race_a_listing(tier, race)
        if race == "created-during-list":
            assert changed in tier.rt.replicas, "a replica created while listing was dropped"
        else:
            assert changed not in tier.rt.replicas, "a replica deleted while listing came back"
        await tier.gc.settle()
        assert not tier.events("replica_replaced")
        assert tier.replacements("vanished") == 0
        for _ in range(2):
            await tier.tick()
        want = 3 if race == "created-during-list" else 1
        assert p.calls["create"] == creates + (1 if want == 3 else 0)
        assert p.calls["delete"] == deletes + (1 if want == 1 else 0)
        assert len(p.replicas) == want
        assert not tier.events("replica_replaced")

    run(tier, scenario)


def test_deleted_during_list_leaves_no_health_state(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, min_=1, provider_cls=GatedProvider)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        changed = await race_a_listing(tier, "deleted-during-list")
        for _ in range(2):
            await tier.tick()
        assert changed not in tier.rt.replicas
        assert set(tier.gc.ctx.health.states) == set(tier.rt.replicas)

    run(tier, scenario)


# --------------------------------------------------------------------------------------------------- balancer
def test_balancer_rejection_keeps_the_last_good_backends(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, min_=1)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(2)
        good = tier.balancer.backends
        assert good is not None and len(good) == 2
        tier.balancer.reject_next = 1
        tier.gc.set_manual(3)
        await tier.tick()  # the new replica turns ready in the probe; its apply is rejected
        (failed,) = tier.events("balancer_failed")
        assert "fake balancer rejected the change" in failed.message
        assert tier.balancer.backends == good
        assert tier.rt.backends == good
        assert tier.balancer_reloads("failed") == 1
        st = tier.gc.status()
        assert st.balancer is not None and tuple(st.balancer.backends) == good
        new = next(r for r in st.replicas if r.address not in good)
        assert new.state == "starting"  # healthy, but the balancer does not send to it yet
        assert st.ready == 2
        # The next pass tries again.
        await tier.tick()
        assert tier.balancer.backends is not None and len(tier.balancer.backends) == 3
        assert set(good) < set(tier.balancer.backends)
        assert len(tier.ready_ids()) == 3
        assert tier.balancer_reloads("failed") == 1

    run(tier, scenario)


def test_only_ready_replicas_are_backends(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, min_=1, unhealthy_after=1, startup_grace=30.0)

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(3)
        ready, failing, exiting = sorted(tier.rt.replicas)
        assert set(tier.balancer.backends or ()) == {tier.address(r) for r in (ready, failing, exiting)}
        # A replica still booting (failing its checks inside the startup grace) is not sent to...
        tier.provider.healthy_on_create = False
        tier.gc.set_manual(4)
        await tier.gc.reconcile()
        await tier.gc.settle()
        (starting,) = set(tier.rt.replicas) - {ready, failing, exiting}
        # ...nor one condemned by its checks, nor one the tier says exited.
        tier.provider.healthy[failing] = False
        await tier.gc.health_rounds.probe_all()
        assert tier.gc.ctx.health.is_unhealthy(failing)
        assert not tier.gc.ctx.health.is_unhealthy(starting)
        assert set(tier.balancer.backends or ()) == {tier.address(ready), tier.address(exiting)}
        tier.provider.set_state(exiting, "failed")
        await tier.gc.reconcile()
        await tier.gc.settle()
        await tier.gc.health_rounds.probe_all()
        assert tier.balancer.backends == (tier.address(ready),)
        st = tier.gc.status()
        states = {r.id: r.state for r in st.replicas}
        assert states[ready] == "ready"
        assert states[starting] == "starting"
        assert failing not in states and exiting not in states  # reaped
        assert [r.state for r in st.replicas].count("starting") == 3  # the booting one and 2 replacements
        assert st.balancer is not None and st.balancer.backends == [tier.address(ready)]
        assert st.ready == 1

    run(tier, scenario)


def test_drained_replica_leaves_the_balancer_before_delete(tmp_path: Path) -> None:
    class Provider(LoggingProvider):
        pass

    tier = make_tier(tmp_path, min_=1, provider_cls=Provider, balancer_cls=GatedDrainBalancer)
    tier.provider.tier_balancer = tier.balancer  # type: ignore[attr-defined]

    async def scenario() -> None:
        await tier.gc.start()
        await tier.scale_to(3)
        addresses = {rid: tier.address(rid) for rid in tier.rt.replicas}
        assert set(tier.balancer.backends or ()) == set(addresses.values())
        tier.order.clear()
        tier.gc.set_manual(2)
        await tier.tick()
        (victim,) = set(addresses) - set(tier.provider.replicas)
        victim_addr = addresses[victim]
        steps = [s[0] for s in tier.order]
        assert steps.index("apply") < steps.index("drain") < steps.index("delete")
        apply = next(s for s in tier.order if s[0] == "apply")
        assert victim_addr not in apply[1]
        assert ("drain", victim_addr) in tier.order
        delete = next(s for s in tier.order if s[0] == "delete")
        assert delete[1] == victim
        assert victim_addr not in delete[2], "deleted while the balancer still sent to it"
        kinds = [e.kind for e in tier.events("replica_draining", "replica_drained", "replica_deleted")]
        assert kinds == ["replica_draining", "replica_drained", "replica_deleted"]

    run(tier, scenario)


@pytest.mark.parametrize(
    ("revisions", "mismatched"),
    [(("TARGET", "TARGET"), 0), (("TARGET", "old-1"), 1), (("", "old-1", "old-2"), 3)],
    ids=["all-current", "one-old", "unmarked-and-old"],
)
def test_adopting_another_revision_is_an_event(
    tmp_path: Path, revisions: tuple[str, ...], mismatched: int
) -> None:
    """Replicas made from another template are named at adoption, with the revisions and the target."""
    target = settings_for(group_config(tmp_path / "state", min_=1).groups[0]).revision

    def pre(p: FakeProvider) -> None:
        for i, rev in enumerate(revisions):
            p.add(f"r-old-{i}", revision=target if rev == "TARGET" else rev)

    tier = make_tier(tmp_path, min_=1, pre=pre)

    async def scenario() -> None:
        await tier.gc.start()
        events = tier.events("revision_mismatch")
        if not mismatched:
            assert events == []
            return
        assert len(events) == 1
        data = events[0].data
        assert data["target"] == target
        assert len(data["replicas"]) == mismatched
        assert set(data["revisions"]) == {r or "unmarked" for r in revisions if r != "TARGET"}
        assert tier.gc.desired == len(revisions)  # adopted and kept, not replaced

    run(tier, scenario)
