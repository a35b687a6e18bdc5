"""The rolling-replacement rule, pure: `plan()` tables, a simulated rollout checked against its bounds at
every step, and the Kubernetes rounding of `max_surge` / `max_unavailable` (`RolloutSpec.limits`,
`parse_amount`).

Members are written as short strings: `o1` an old replica (revision OLD) that is ready, `o1-` one that is
not ready; `n1` a new replica (revision NEW) ready for min_healthy_time, `n1~` ready but not yet healthy,
`n1-` not ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tierscale.config.rollout import Amount, RolloutSpec, parse_amount
from tierscale.controller.rollout_plan import Member, RolloutInput, RolloutPlan, plan

OLD, NEW = "rev-old", "rev-new"


def member(text: str) -> Member:
    rid = text.rstrip("-~")
    revision = OLD if rid.startswith("o") else NEW
    ready = not text.endswith("-")
    healthy = ready and not text.endswith("~")
    return Member(rid, revision, ready, healthy)


def inp(
    desired: int,
    members: str = "",
    creating: int = 0,
    surge: int = 1,
    unavailable: int = 0,
    canary: int = 0,
    hold: bool = False,
) -> RolloutInput:
    return RolloutInput(
        desired,
        NEW,
        [member(t) for t in members.split()],
        creating,
        surge,
        unavailable,
        canary=canary,
        hold=hold,
    )


def P(create: int, remove: str = "", rolling: bool = True, canaries_ready: bool = False) -> RolloutPlan:
    return RolloutPlan(create, tuple(remove.split()), rolling, canaries_ready)


def check(i: RolloutInput, expected: RolloutPlan) -> None:
    got = plan(i)
    assert got == expected
    # Whatever the case: only members are removed, each once, and nothing is created and removed blindly.
    ids = [m.id for m in i.members]
    assert len(set(got.remove)) == len(got.remove)
    assert set(got.remove) <= set(ids)
    assert got.create >= 0


# ------------------------------------------------------------------------------------------ plain convergence
@pytest.mark.parametrize(
    ("i", "expected"),
    [
        (inp(3), P(3, rolling=False)),
        (inp(3, "n1"), P(2, rolling=False)),
        (inp(3, "n1", creating=1), P(1, rolling=False)),
        (inp(3, "n1", creating=2), P(0, rolling=False)),
        (inp(3, "n1- n2~ n3"), P(0, rolling=False)),  # readiness does not matter without old replicas
        (inp(1, "n1 n2 n3"), P(0, "n1 n2", rolling=False)),  # the first in the caller's order go
        (inp(2, "n3 n1 n2"), P(0, "n3", rolling=False)),
        # A surplus is not removed while creates are in flight (they were asked for by an earlier pass).
        (inp(1, "n1 n2", creating=1), P(0, rolling=False)),
        # Surge and unavailable play no part in plain convergence.
        (inp(4, "n1", surge=0, unavailable=0), P(3, rolling=False)),
        (inp(0, "n1 n2"), P(0, "n1 n2", rolling=False)),
        (inp(0), P(0, rolling=False)),
    ],
    ids=[
        "empty-scale-out",
        "scale-out",
        "scale-out-creating",
        "creates-cover-it",
        "at-desired",
        "scale-in",
        "scale-in-order",
        "scale-in-waits-for-creates",
        "no-limits-apply",
        "to-zero",
        "nothing",
    ],
)
def test_plain_convergence(i: RolloutInput, expected: RolloutPlan) -> None:
    check(i, expected)


# ------------------------------------------------------------------------------------------------- rolling
@pytest.mark.parametrize(
    ("i", "expected"),
    [
        # surge 1, unavailable 0: one new at a time; an old one goes only once a new one is healthy.
        (inp(4, "o1 o2 o3 o4"), P(1)),
        (inp(4, "o1 o2 o3 o4", creating=1), P(0)),
        (inp(4, "o1 o2 o3 o4 n1-"), P(0)),
        (inp(4, "o1 o2 o3 o4 n1~"), P(0)),  # ready is not enough: min_healthy_time first
        (inp(4, "o1 o2 o3 o4 n1"), P(1, "o1")),  # its slot is free at once: the next one starts
        (inp(4, "o2 o3 o4 n1"), P(1)),
        (inp(4, "o2 o3 o4 n1", creating=1), P(0)),
        (inp(4, "o2 o3 o4 n1 n2"), P(1, "o2")),
        (inp(4, "o4 n1 n2 n3 n4"), P(0, "o4", rolling=False)),
        (inp(4, "o4 n1 n2 n3 n4~"), P(0)),
        # Lost replicas: made again at once, new ones, up to the cap.
        (inp(4, "o1 o2"), P(3)),
        (inp(4, "o1 o2", creating=1), P(2)),
        # unavailable > 0: old ones go before any new one is healthy, down to desired - unavailable.
        (inp(4, "o1 o2 o3 o4", surge=0, unavailable=1), P(1, "o1")),
        (inp(4, "o2 o3 o4", surge=0, unavailable=1), P(1)),
        (inp(4, "o2 o3 o4", creating=1, surge=0, unavailable=1), P(0)),
        (inp(4, "o2 o3 o4 n1~", surge=0, unavailable=1), P(0)),
        (inp(4, "o2 o3 o4 n1", surge=0, unavailable=1), P(1, "o2")),
        (inp(4, "o1 o2 o3 o4", surge=1, unavailable=1), P(2, "o1")),
        (inp(4, "o1 o2 o3 o4", surge=2, unavailable=2), P(4, "o1 o2")),
        (inp(10, " ".join(f"o{k}" for k in range(10)), surge=3, unavailable=2), P(5, "o0 o1")),
        # The cap desired + surge counts creates in flight.
        (inp(4, "o1 o2 o3 o4", creating=1, surge=2), P(1)),
        (inp(4, "o1 o2 o3 o4", creating=2, surge=2), P(0)),
        (inp(4, "o1 o2 o3 o4 n1-", creating=1, surge=2), P(0)),
        (inp(4, "o1 o2 o3 o4 n1- n2-", surge=1), P(0)),  # above the cap: nothing made, nothing lost
    ],
    ids=[
        "s1-start",
        "s1-create-in-flight",
        "s1-new-not-ready",
        "s1-new-not-healthy",
        "s1-new-healthy",
        "s1-next",
        "s1-next-in-flight",
        "s1-second-healthy",
        "s1-last-old",
        "s1-last-not-healthy",
        "lost-replicas",
        "lost-replicas-in-flight",
        "u1-start",
        "u1-refill",
        "u1-refill-in-flight",
        "u1-new-not-healthy",
        "u1-new-healthy",
        "s1u1",
        "s2u2",
        "ten-25pct",
        "cap-with-creating",
        "cap-full-with-creating",
        "cap-full-mixed",
        "above-cap",
    ],
)
def test_rolling(i: RolloutInput, expected: RolloutPlan) -> None:
    # What a pass removes is leaving: its slot under the cap is taken by a create in the same pass.
    check(i, expected)


@pytest.mark.parametrize(
    ("i", "expected"),
    [
        # Not ready serves nobody: it goes at once, before the ready ones, without touching the budget.
        (inp(4, "o1 o2- o3 o4"), P(2, "o2")),
        (inp(4, "o1- o2- o3 o4"), P(3, "o1 o2")),
        (inp(4, "o1- o2- o3- o4-"), P(4, "o1 o2 o3 o4", rolling=False)),
        (inp(4, "o1 o2- o3 o4", surge=0, unavailable=1), P(1, "o2")),
        # With a budget left the ready ones follow, in the caller's order.
        (inp(3, "o1 o2- o3 o4", surge=0, unavailable=1), P(1, "o2 o1")),
        (inp(4, "o1 o2 o3 o4- n1", surge=1, unavailable=1), P(2, "o4 o1")),
    ],
    ids=["one", "two", "all", "with-unavailable", "then-budget", "then-budget-from-new"],
)
def test_unready_old_replicas_go_first_at_no_cost(i: RolloutInput, expected: RolloutPlan) -> None:
    check(i, expected)


# --------------------------------------------------------------------------------------------------- canary
@pytest.mark.parametrize(
    ("i", "expected"),
    [
        (inp(4, "o1 o2 o3 o4", canary=1), P(1)),
        (inp(4, "o1 o2 o3 o4", canary=1, creating=1), P(0)),
        (inp(4, "o1 o2 o3 o4 n1-", canary=1), P(0)),
        (inp(4, "o1 o2 o3 o4 n1~", canary=1), P(0)),
        (inp(4, "o1 o2 o3 o4 n1", canary=1), P(0, canaries_ready=True)),
        # More canaries than the surge: all of them, beside every old replica (the budget plays no part).
        (inp(4, "o1 o2 o3 o4", canary=2, surge=1), P(2)),
        (inp(4, "o1 o2 o3 o4 n1", canary=2, surge=1, unavailable=3), P(1)),
        (inp(4, "o1 o2 o3 o4 n1 n2~", canary=2), P(0)),
        (inp(4, "o1 o2 o3 o4 n1 n2", canary=2), P(0, canaries_ready=True)),
        # Unready old replicas are kept too: only a scale-in surplus is removed while canaries run.
        (inp(4, "o1- o2 o3 o4", canary=1), P(1)),
        (inp(2, "o1 o2 o3 o4", canary=1), P(1, "o1 o2")),
        (inp(2, "o1 o2 o3 o4 n1", canary=1), P(0, "o1 o2", canaries_ready=True)),
        # A scale-out makes new replicas (of the target revision), whatever the canary count.
        (inp(6, "o1 o2 o3 o4", canary=1), P(2)),
    ],
    ids=[
        "start",
        "in-flight",
        "not-ready",
        "not-healthy",
        "ready",
        "two-over-surge",
        "two-one-made",
        "two-one-not-healthy",
        "two-ready",
        "unready-old-kept",
        "scale-in-surplus",
        "scale-in-surplus-ready",
        "scale-out",
    ],
)
def test_canary(i: RolloutInput, expected: RolloutPlan) -> None:
    check(i, expected)


# ----------------------------------------------------------------------------------------------------- hold
@pytest.mark.parametrize(
    ("i", "expected"),
    [
        (inp(4, "o1 o2 o3 o4", hold=True), P(0)),
        (inp(4, "o1 o2 o3 n1-", hold=True), P(0)),  # an unready new one is not replaced either
        (inp(4, "o1 o2 o3 o4 n1", hold=True), P(0)),  # the surge replica may stay
        (inp(4, "o1 o2- o3 o4 n1~", hold=True), P(0)),  # nor is an unready old one removed
        # Only the floor: lost replicas are made again...
        (inp(4, "o1 o2 n1", hold=True), P(1)),
        (inp(4, "o1 o2 n1", creating=1, hold=True), P(0)),
        # ...and what is above desired + surge goes, old first.
        (inp(4, "o1 o2 o3 o4 n1 n2", hold=True), P(0, "o1")),
        (inp(2, "o1 o2 o3 n1", hold=True), P(0, "o1")),
        (inp(1, "o1 n1 n2", surge=0, hold=True), P(0, "o1 n1")),
    ],
    ids=[
        "steady",
        "unready-new",
        "surge-stays",
        "unready-old",
        "floor",
        "floor-in-flight",
        "cap",
        "scale-in",
        "deep",
    ],
)
def test_hold(i: RolloutInput, expected: RolloutPlan) -> None:
    check(i, expected)


# ---------------------------------------------------------------------------------------- scale in, desired 0
@pytest.mark.parametrize(
    ("i", "expected"),
    [
        # Old go first, as many as availability allows; new ones stay.
        (inp(2, "o1 o2 o3 n1 n2"), P(0, "o1 o2 o3", rolling=False)),
        (inp(2, "o1 o2 o3 o4 n1~"), P(0, "o1 o2")),
        (inp(2, "o1 o2 o3 o4 n1~", creating=1), P(0, "o1 o2")),
        # Below what is already new: the surplus new go too (after every old one).
        (inp(1, "o1 o2 n1 n2 n3"), P(0, "o1 o2 n1 n2", rolling=False)),
        (inp(0, "o1 o2 n1"), P(0, "o1 o2 n1", rolling=False)),
        (inp(0, "o1- o2"), P(0, "o1 o2", rolling=False)),
        (inp(0, "o1", surge=0, unavailable=1), P(0, "o1", rolling=False)),
    ],
    ids=[
        "old-first",
        "old-first-budget",
        "old-first-in-flight",
        "new-surplus",
        "zero",
        "zero-unready",
        "zero-u1",
    ],
)
def test_scale_in_during_a_rollout(i: RolloutInput, expected: RolloutPlan) -> None:
    check(i, expected)


# ------------------------------------------------------------------------------------- a simulated rollout
@dataclass
class Sim:
    """A fake tier the plan drives: a create lands the next pass (ready), and is healthy one pass later."""

    desired: int
    surge: int
    unavailable: int
    members: list[Member] = field(default_factory=list)
    creating: int = 0
    serial: int = 0

    def step(self) -> RolloutPlan:
        # Creates of the last pass land, ready but not healthy; those ready since the last pass are healthy.
        self.members = [Member(m.id, m.revision, m.ready, m.ready) for m in self.members]
        for _ in range(self.creating):
            self.serial += 1
            self.members.append(Member(f"n{self.serial}", NEW, True, False))
        self.creating = 0
        p = plan(RolloutInput(self.desired, NEW, list(self.members), 0, self.surge, self.unavailable))
        gone = set(p.remove)
        self.members = [m for m in self.members if m.id not in gone]
        self.creating = p.create
        return p

    def available(self) -> int:
        return sum(m.ready if m.revision == OLD else m.healthy for m in self.members)


@pytest.mark.parametrize(
    ("desired", "spec"),
    [
        (4, RolloutSpec()),
        (4, RolloutSpec(max_surge=Amount(1), max_unavailable=Amount(0))),
        (4, RolloutSpec(max_surge=Amount(0), max_unavailable=Amount(1))),
        (4, RolloutSpec(max_surge=Amount(2), max_unavailable=Amount(2))),
        (3, RolloutSpec(max_surge=Amount(25, True), max_unavailable=Amount(25, True))),
        (1, RolloutSpec()),
        (1, RolloutSpec(max_surge=Amount(0), max_unavailable=Amount(1))),
        (10, RolloutSpec(max_surge=Amount(25, True), max_unavailable=Amount(25, True))),
        (10, RolloutSpec(max_surge=Amount(100, True), max_unavailable=Amount(0))),
    ],
    ids=["default", "s1u0", "s0u1", "s2u2", "3-25pct", "one", "one-s0u1", "ten-25pct", "ten-blue-green"],
)
def test_a_rollout_stays_within_its_bounds(desired: int, spec: RolloutSpec) -> None:
    surge, unavailable = spec.limits(desired)
    sim = Sim(desired, surge, unavailable, [Member(f"o{k}", OLD, True, True) for k in range(desired)])
    for passes in range(1, 4 * desired + 10):
        p = sim.step()
        assert len(sim.members) + sim.creating <= desired + surge, f"over the cap at pass {passes}"
        assert sim.available() >= desired - unavailable, f"too few available at pass {passes}"
        if not p.rolling and sim.creating == 0 and len(sim.members) == desired:
            break
    else:
        raise AssertionError(f"the rollout did not finish: {sim.members}")
    assert {m.revision for m in sim.members} == {NEW}
    assert sim.serial == desired  # each old replica replaced once, nothing made twice


# ------------------------------------------------------------------------------------------------- limits
PCT25 = Amount(25, percent=True)


@pytest.mark.parametrize(
    ("desired", "surge", "unavailable"),
    [(1, 1, 0), (2, 1, 0), (3, 1, 0), (4, 1, 1), (10, 3, 2), (0, 0, 1)],
)
def test_limits_25_percent(desired: int, surge: int, unavailable: int) -> None:
    """Surge rounds up, unavailable rounds down; both 0 (only at desired 0 here) allows one missing."""
    assert RolloutSpec(max_surge=PCT25, max_unavailable=PCT25).limits(desired) == (surge, unavailable)


@pytest.mark.parametrize(
    ("spec", "desired", "expected"),
    [
        (RolloutSpec(), 1, (1, 0)),  # the default: 25 % surge, none unavailable
        (RolloutSpec(), 4, (1, 0)),
        (RolloutSpec(), 5, (2, 0)),
        (RolloutSpec(), 0, (0, 1)),
        # Both 0 after rounding: one may be missing, or nothing could ever be replaced.
        (RolloutSpec(max_surge=Amount(0), max_unavailable=PCT25), 1, (0, 1)),
        (RolloutSpec(max_surge=Amount(0), max_unavailable=PCT25), 3, (0, 1)),
        (RolloutSpec(max_surge=Amount(0), max_unavailable=PCT25), 4, (0, 1)),
        (RolloutSpec(max_surge=Amount(0), max_unavailable=PCT25), 8, (0, 2)),
        (RolloutSpec(max_surge=Amount(0), max_unavailable=Amount(0)), 4, (0, 1)),
        # Counts are counts, whatever desired is.
        (RolloutSpec(max_surge=Amount(3), max_unavailable=Amount(2)), 1, (3, 2)),
        (RolloutSpec(max_surge=Amount(100, True), max_unavailable=Amount(100, True)), 3, (3, 3)),
        (RolloutSpec(max_surge=Amount(33, True), max_unavailable=Amount(33, True)), 10, (4, 3)),
    ],
)
def test_limits(spec: RolloutSpec, desired: int, expected: tuple[int, int]) -> None:
    assert spec.limits(desired) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Amount(0)),
        (3, Amount(3)),
        ("3", Amount(3)),
        (" 3 ", Amount(3)),
        ("25%", Amount(25, True)),
        (" 25 %", Amount(25, True)),
        ("0%", Amount(0, True)),
        ("100%", Amount(100, True)),
    ],
)
def test_parse_amount(value: object, expected: Amount) -> None:
    assert parse_amount(value) == expected
    assert parse_amount(str(expected)) == expected  # str() is what the config dumps: it reads back


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must not be negative"),
        (True, "must be a count or a percent"),
        (False, "must be a count or a percent"),
        (1.5, "must be a count or a percent"),
        (None, "must be a count or a percent"),
        ([1], "must be a count or a percent"),
        ("", "must be a count or a percent"),
        ("%", "must be a count or a percent"),
        ("abc", "must be a count or a percent"),
        ("-1", "must be a count or a percent"),
        ("+1", "must be a count or a percent"),
        ("2.5%", "must be a count or a percent"),
        ("25%%", "must be a count or a percent"),
        ("%25", "must be a count or a percent"),
        ("101%", "must be at most 100%"),
        ("1000%", "must be at most 100%"),
    ],
)
def test_parse_amount_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(value)
