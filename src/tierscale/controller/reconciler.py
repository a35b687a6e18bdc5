"""Act: converge the group on `desired` — replace what failed, create what is missing, drain the surplus.

Every step is idempotent: the infrastructure is listed afresh each pass and compared with `desired`;
creates and drains run as tasks so a slow tier never holds up the loop.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace

from tierscale.controller.context import GroupContext
from tierscale.controller.hosts import drain_members, removal_order
from tierscale.controller.rollout import Rollouts
from tierscale.controller.rollout_plan import RolloutInput, RolloutPlan, plan
from tierscale.controller.service_count import ServiceCount
from tierscale.providers.base import Capability, ProviderError, Replica, ReplicaGone, ReplicaStats

log = logging.getLogger("tierscale.controller")


def victim_order(
    candidates: Sequence[Replica],
    ready: Collection[str],
    stats: Mapping[str, ReplicaStats],
    order: str,
) -> list[Replica]:
    """Scale-in order: replicas that serve nobody yet (not ready) first, then by `scale_in_order`."""

    def load(r: Replica) -> float:
        st = stats.get(r.id)
        return st.cpu_percent if st and st.cpu_percent is not None else 0.0

    if order == "oldest":
        return sorted(candidates, key=lambda r: (r.id in ready, r.created_at))
    if order == "least_loaded":
        return sorted(candidates, key=lambda r: (r.id in ready, load(r)))
    return sorted(candidates, key=lambda r: (r.id in ready, -r.created_at))


class Reconciler:
    def __init__(
        self, ctx: GroupContext, rebalance: Callable[[], Awaitable[None]], rollouts: Rollouts
    ) -> None:
        self.ctx = ctx
        self.rebalance = rebalance  # takes a leaving replica out of the balancer before it is drained
        self.rollouts = rollouts
        self._drained: set[str] = set()  # draining hosts this group has emptied (host_drained told once)
        self.count = ServiceCount(ctx) if Capability.COUNT in ctx.provider.capabilities else None

    def reap_failed(self) -> None:
        """Replicas that exited or were condemned by health checks are removed; `converge` replaces them."""
        ctx, rt = self.ctx, self.ctx.rt
        if ctx.dry_run or self.count is not None:  # a counted tier replaces its failed tasks itself
            return
        for r in list(rt.replicas.values()):
            if r.id in rt.draining or not ctx.reachable(r):  # a delete there would only hang
                continue
            if r.state == "failed":
                ctx.tm.replacements.labels(ctx.s.name, "exited").inc()
                ctx.event("replica_replaced", f"replica {r.id} exited; replacing it", r.id, reason="exited")
                self.rollouts.replica_lost(r, "exited")
            elif ctx.health.is_unhealthy(r.id):
                self.rollouts.replica_lost(r, "failed its health checks")
            else:
                continue
            rt.draining.add(r.id)
            ctx.spawn(self.delete(r, drain=False))

    def converge(self) -> RolloutPlan:
        """Create and remove toward `desired`, by the rolling-replacement rule while revisions differ."""
        if self.count is not None:
            return self.count.converge()
        ctx, rt = self.ctx, self.ctx.rt
        active = ctx.active()
        ready = {r.id for r in active if ctx.health.is_ready(r.id)}
        ordered = victim_order(active, ready, rt.stats, ctx.s.scale_in_order)
        now = ctx.clock.now()
        if Capability.HOSTS in ctx.provider.capabilities:
            ordered = removal_order(ctx, ordered, ctx.s.placement.strategy)
        members = self.rollouts.members(ordered, now)
        inp = self.rollouts.input(rt.desired or 0, members, rt.creating)
        if Capability.HOSTS in ctx.provider.capabilities:
            inp = self._drain_input(inp)
        p = plan(inp)
        if p.create and now >= rt.create_backoff.not_before:
            for _ in range(p.create):
                rt.creating += 1
                ctx.spawn(self.create())
        for rid in p.remove:
            victim = rt.replicas[rid]
            rt.draining.add(rid)
            ctx.spawn(self.delete(victim, drain=True))
        return p

    def _drain_input(self, inp: RolloutInput) -> RolloutInput:
        """Tell the fleet which hosts are closed, and hand a draining host's replicas to the rollout rule.

        Without a rollout of its own the drain goes one replica at a time (surge 1, unavailable 0): a
        replacement elsewhere is ready before a drained replica leaves."""
        ctx, rt = self.ctx, self.ctx.rt
        book = ctx.hosts
        closed = book.closed() if book else frozenset()
        draining = book.draining() if book else frozenset()
        set_cordoned = getattr(ctx.provider, "set_cordoned", None)
        if set_cordoned is not None:
            set_cordoned(closed)
        for host in draining - self._drained:
            if not any(r.host == host for r in rt.replicas.values()):
                self._drained.add(host)
                ctx.event("host_drained", f"host {host} holds none of the group's replicas", host=host)
        self._drained &= draining
        members = drain_members(list(inp.members), rt.replicas, draining)
        if members == list(inp.members):
            return inp
        if self.rollouts.rec.state == "complete":
            return replace(inp, members=members, surge=1, unavailable=0, canary=0, hold=False)
        return replace(inp, members=members)

    async def create(self) -> None:
        ctx, rt = self.ctx, self.ctx.rt
        rid = "r-" + secrets.token_hex(4)
        try:
            if not ctx.may_act():
                ctx.event("fenced", f"not creating {rid}: this controller does not hold the lease now", rid)
                return
            replica = await ctx.call(ctx.provider.create, rid)
        except Exception as exc:
            delay = rt.create_backoff.fail(ctx.clock.now())
            if not isinstance(exc, ProviderError):  # a bug in a provider, not a tier refusing
                log.exception("%s: create crashed", ctx.s.name)
            ctx.event(
                "create_failed",
                f"cannot create replica {rid}: {exc}; retry in {delay:.0f}s",
                rid,
                error=str(exc),
            )
            self.rollouts.create_failed(exc)
            return
        finally:
            rt.creating -= 1
        rt.create_backoff.ok()
        self.rollouts.created()
        rt.replicas[replica.id] = replica
        ctx.health.track(replica.id, replica.created_at)
        ctx.event(
            "replica_created",
            f"created replica {replica.id} at {replica.address}",
            replica.id,
            address=replica.address,
        )

    async def delete(self, replica: Replica, drain: bool) -> None:
        ctx, rt = self.ctx, self.ctx.rt
        try:
            if drain:
                ctx.event("replica_draining", f"draining replica {replica.id}", replica.id)
            await self.rebalance()  # it is in `draining`, so this takes it out of the upstream first
            if drain and ctx.balancer and replica.address and not ctx.dry_run:
                timeout = ctx.s.drain_timeout
                drained = await ctx.call(ctx.balancer.wait_drained, replica.address, timeout)
                ctx.event(
                    "replica_drained",
                    f"replica {replica.id} drained"
                    if drained
                    else f"replica {replica.id} still had connections after {timeout:g}s",
                    replica.id,
                    clean=drained,
                )
                await self._drained_everywhere(replica.id, timeout)
            if not ctx.may_act():
                ctx.event("fenced", f"not deleting {replica.id}: this controller does not hold the lease now")
                return
            # Gone already (it vanished mid-drain) is what a delete wants anyway.
            with contextlib.suppress(ReplicaGone):
                await ctx.call(ctx.provider.delete, replica, ctx.s.stop_grace)
            ctx.event("replica_deleted", f"deleted replica {replica.id}", replica.id)
            rt.deleted.add(replica.id)
            rt.replicas.pop(replica.id, None)
            ctx.health.forget(replica.id)
        except ProviderError as exc:
            ctx.event(
                "delete_failed", f"cannot delete replica {replica.id}: {exc}", replica.id, error=str(exc)
            )
        finally:
            rt.draining.discard(replica.id)
            ctx.wake.set()  # a slot is free (a rollout's next replica, a replacement): act on it now

    async def _drained_everywhere(self, replica: str, timeout: float) -> None:
        """ha: the other controllers' balancers let it go too (they ack from their next pass), or timeout."""
        ctx = self.ctx
        end = ctx.clock.now() + timeout
        while not ctx.drained_everywhere(replica) and ctx.clock.now() < end:
            await ctx.clock.sleep(0.1)
