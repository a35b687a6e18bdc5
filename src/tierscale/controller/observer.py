"""Observe: list the infrastructure, read the tier's stats and every metric source, build the snapshot.

The listing is the truth, with two races handled: a replica we deleted may still show in a listing that
was in flight (it stays deleted), and one we created while the listing was in flight is not in it yet
(it is kept, not called vanished). Replicas on a host the provider could not list are unseen, not gone.
"""

from __future__ import annotations

from tierscale.balancer.accesslog import AccessLogReader
from tierscale.controller.context import GroupContext
from tierscale.controller.hosts import track_hosts
from tierscale.controller.metric_watch import watch
from tierscale.controller.peer_traffic import from_wire, merge, to_wire
from tierscale.controller.state import policy_phase, replica_state
from tierscale.metrics.base import MetricSource, Observation, Traffic
from tierscale.policy.types import GroupSnapshot, ReplicaStatus
from tierscale.providers.base import Listing, ProviderError, Replica


class Observer:
    def __init__(
        self, ctx: GroupContext, sources: tuple[MetricSource, ...], traffic_log: AccessLogReader | None
    ) -> None:
        self.ctx = ctx
        self.sources = sources
        self.traffic_log = traffic_log

    async def refresh(self) -> bool:
        """List the group's replicas; False when the tier could not be listed (the last view stays)."""
        ctx, rt = self.ctx, self.ctx.rt
        now = ctx.clock.now()
        if now < rt.list_backoff.not_before:
            return False
        known_before = set(rt.replicas)
        try:
            listed: Listing = await ctx.call(ctx.provider.list, timeout=ctx.observe_timeout)
        except ProviderError as exc:
            delay = rt.list_backoff.fail(now)
            if rt.provider_ok:
                ctx.event(
                    "provider_error", f"cannot list replicas: {exc}; retrying in {delay:.0f}s", error=str(exc)
                )
            rt.provider_ok = False
            rt.last_error = str(exc)
            return False
        if not rt.provider_ok:
            ctx.event("provider_error", "provider reachable again")
        rt.provider_ok = True
        rt.last_error = None
        rt.list_backoff.ok()
        unreachable = listed.unreachable
        if unreachable != rt.unreachable_hosts:
            if unreachable:
                hosts = ", ".join(sorted(unreachable))
                ctx.event(
                    "provider_error",
                    f"cannot list host(s) {hosts}; keeping their replicas as they are",
                    hosts=sorted(unreachable),
                )
            rt.unreachable_hosts = frozenset(unreachable)
        rt.deleted &= {r.id for r in listed}
        seen = {r.id: r for r in listed if r.id not in rt.deleted}
        for rid, r in rt.replicas.items():
            if rid in seen:
                continue
            created_meanwhile = rid not in known_before
            if created_meanwhile or r.host in unreachable:
                seen[rid] = r
        for rid in list(rt.replicas):
            if rid not in seen:
                if rid not in rt.draining:
                    ctx.tm.replacements.labels(ctx.s.name, "vanished").inc()
                    ctx.event(
                        "replica_replaced", f"replica {rid} vanished; replacing it", rid, reason="vanished"
                    )
                ctx.health.forget(rid)
                rt.draining.discard(rid)
        rt.replicas = seen
        track_hosts(ctx, listed)
        for r in listed:
            if r.id not in rt.deleted:
                ctx.health.track(r.id, r.created_at)
        return True

    async def snapshot(self, now: float) -> GroupSnapshot:
        ctx, rt = self.ctx, self.ctx.rt
        active = ctx.active()
        running = [r for r in active if r.state == "running"]
        try:
            rt.stats = await ctx.call(ctx.provider.stats, running, timeout=ctx.observe_timeout)
        except ProviderError as exc:
            rt.stats = {}
            ctx.event("provider_error", f"cannot read replica stats: {exc}", error=str(exc))
        traffic = await self.traffic(now)
        obs = Observation(
            now=now,
            window=ctx.s.sync_period,
            replicas=active,
            ready=frozenset(r.id for r in active if ctx.health.is_ready(r.id)),
            stats=rt.stats,
            traffic=traffic,
        )
        read = [await source.read(obs) for source in self.sources]
        metrics = watch(ctx, [source.spec for source in self.sources], read, now)
        for mi in metrics:
            ctx.tm.metric_target.labels(ctx.s.name, mi.name).set(mi.target)
        serving = ctx.serving()
        statuses = tuple(self._status(r, serving) for r in rt.replicas.values())
        return GroupSnapshot(
            now=now,
            current_replicas=rt.desired or 0,
            min_replicas=ctx.s.min,
            max_replicas=ctx.s.max,
            replicas=statuses,
            metrics=metrics,
        )

    async def traffic(self, now: float) -> Traffic | None:
        """Our balancer's log over the metric window, shared with the other controllers (ha), plus
        theirs; None without a balancer log."""
        if self.traffic_log is None:
            return None
        ctx = self.ctx
        await ctx.call(self.traffic_log.poll, now)
        window = ctx.s.metric_window
        own = Traffic(self.traffic_log.stats(window, now), self.traffic_log.totals(window, now).rps)
        ctx.share_traffic(to_wire(own))
        peers = [t for t in (from_wire(body) for body in ctx.peer_traffic()) if t is not None]
        return merge(own, peers)

    def _status(self, r: Replica, serving: frozenset[str] | None) -> ReplicaStatus:
        ctx = self.ctx
        st = ctx.health.states.get(r.id)
        stats = ctx.rt.stats.get(r.id)
        state = replica_state(r, ctx.health, r.id in ctx.rt.draining, serving, not ctx.reachable(r))
        return ReplicaStatus(
            id=r.id,
            phase=policy_phase(state, r),
            ready=bool(st.ready) if st else False,
            ready_changed_at=st.ready_changed_at if st and st.ready_changed_at is not None else r.created_at,
            started_at=r.created_at,
            cpu_allotment_milli=stats.cpu_allotment_milli if stats else 1000,
        )
