"""Which replicas to create and which to remove this pass: the rolling-replacement rule, pure.

The input is the group's settled view (replicas that are not leaving, failed or condemned, each with its
revision and readiness) and the desired count the policy computed; the output is a count to create (of
the target revision: scale-outs during a rollout make the new version) and the replicas to remove,
oldest revision first. With every replica on the target revision this is plain convergence on `desired`.

During a rollout, as a Deployment does:
- at most `desired + surge` replicas exist (creates in flight included);
- at least `desired - unavailable` are available: an old replica when ready, a new one once it has been
  ready for `min_healthy_time`;
- old replicas that are not ready serve nobody and go first, at no cost to availability;
- with canaries (not yet promoted) only `canary` new replicas are made, beside all the old ones, and
  nothing old is removed but a scale-in surplus;
- on hold (paused, failed) only what keeps the count at `desired` happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    id: str
    revision: str
    ready: bool
    healthy: bool  # ready for at least min_healthy_time (what counts as available for a new replica)


@dataclass(frozen=True)
class RolloutInput:
    desired: int
    target: str
    members: Sequence[Member]  # in removal preference: the first are removed first within a revision
    creating: int  # creates in flight; they will be of the target revision
    surge: int
    unavailable: int
    canary: int = 0  # canaries still to be promoted (0: none, or promoted)
    hold: bool = False  # paused or failed: keep the count, replace nothing


@dataclass(frozen=True)
class RolloutPlan:
    create: int
    remove: tuple[str, ...]
    rolling: bool  # replicas of another revision remain
    canaries_ready: bool = False  # every canary is healthy: waiting for promote


def plan(inp: RolloutInput) -> RolloutPlan:
    new = [m for m in inp.members if m.revision == inp.target]
    old = [m for m in inp.members if m.revision != inp.target]
    d = inp.desired
    if not old:
        have = len(new) + inp.creating
        if have < d:
            return RolloutPlan(d - have, (), False)
        if have > d and inp.creating == 0:
            return RolloutPlan(0, tuple(m.id for m in new[: len(new) - d]), False)
        return RolloutPlan(0, (), False)

    total = len(inp.members) + inp.creating
    floor = max(0, d - total)
    if inp.hold:
        cap = d + max(inp.surge, inp.canary)
        return RolloutPlan(floor, _surplus(old, new, total - cap), True)
    if inp.canary:
        return _canary(inp, old, new, total, floor)

    available = sum(m.ready for m in old) + sum(m.healthy for m in new)
    budget = available - (d - inp.unavailable)
    remove: list[str] = []
    for m in sorted(old, key=lambda m: m.ready):  # stable: keeps the caller's order within each kind
        if not m.ready:
            remove.append(m.id)
        elif budget > 0:
            remove.append(m.id)
            budget -= 1
    # What is removed now is leaving (as a Deployment ignores terminating pods): its surge slot is free
    # for the next new replica in this same pass, instead of one pass later.
    old_left = len(old) - len(remove)
    total -= len(remove)
    floor = max(0, d - total)
    cap = d + inp.surge
    create = max(floor, min(max(0, d - len(new) - inp.creating), cap - total))
    extra_new = len(new) - d  # a scale-in below what is already new
    if extra_new > 0:
        remove.extend(m.id for m in new[:extra_new])
    return RolloutPlan(create, tuple(remove), old_left > 0)


def _canary(inp: RolloutInput, old: list[Member], new: list[Member], total: int, floor: int) -> RolloutPlan:
    create = max(floor, inp.canary - len(new) - inp.creating)
    # Canaries ride beside the whole old set; only a scale-in below the old count removes anything.
    remove = [m.id for m in old[: max(0, len(old) - inp.desired)]]
    ready = sum(m.healthy for m in new) >= inp.canary
    return RolloutPlan(max(0, create), tuple(remove), True, canaries_ready=ready)


def _surplus(old: list[Member], new: list[Member], n: int) -> tuple[str, ...]:
    """`n` replicas above the cap: old ones first."""
    if n <= 0:
        return ()
    return tuple(m.id for m in [*old, *new][:n])
