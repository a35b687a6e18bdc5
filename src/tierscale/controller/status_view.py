"""The status view: one group's `GroupStatus` from the loop's memory and the balancer's log."""

from __future__ import annotations

from collections import Counter

from tierscale.balancer.accesslog import AccessLogReader
from tierscale.controller.context import GroupContext
from tierscale.controller.rollout import Rollouts
from tierscale.controller.state import ReplicaState, replica_state
from tierscale.controller.status_model import (
    BalancerView,
    DecisionView,
    GroupStatus,
    ProposalView,
    ReplicaView,
    RolloutView,
)
from tierscale.policy.types import Decision


def decision_view(d: Decision) -> DecisionView:
    return DecisionView(
        ts=d.now,
        policy=d.policy,
        current=d.current,
        desired=d.desired,
        recommended=d.recommended,
        limits=list(d.limits),
        reason=d.reason,
        proposals=[
            ProposalView(metric=p.metric, value=p.value, target=p.target, replicas=p.replicas, error=p.error)
            for p in d.proposals
        ],
    )


def group_status(ctx: GroupContext, traffic_log: AccessLogReader | None) -> GroupStatus:
    s, rt, now = ctx.s, ctx.rt, ctx.clock.now()
    upstream = traffic_log.stats(s.metric_window, now) if traffic_log else {}
    serving = ctx.serving()
    replicas = []
    for r in sorted(rt.replicas.values(), key=lambda r: r.created_at):
        st = ctx.health.states.get(r.id)
        stats = rt.stats.get(r.id)
        up = upstream.get(r.address or "")
        replicas.append(
            ReplicaView(
                id=r.id,
                address=r.address,
                state=replica_state(r, ctx.health, r.id in rt.draining, serving, not ctx.reachable(r)),
                health="ok" if st and st.ready else (st.last_error if st and st.last_error else "pending"),
                cpu=round(stats.cpu_percent, 1) if stats and stats.cpu_percent is not None else None,
                memory_bytes=stats.memory_bytes if stats else None,
                rps=round(up.rps, 2) if up else 0.0,
                p95_ms=round(up.p95_ms, 1) if up and up.p95_ms is not None else None,
                age=round(now - r.created_at, 1),
                revision=r.revision,
                host=r.host,
            )
        )
    totals = traffic_log.totals(s.metric_window, now) if traffic_log else None
    return GroupStatus(
        group=s.name,
        tier=s.tier,
        policy=s.policy,
        min=s.min,
        max=s.max,
        desired=rt.desired,
        current=len(ctx.active()),
        ready=sum(1 for r in replicas if r.state == ReplicaState.READY),
        paused=rt.paused,
        manual_replicas=rt.manual_desired if rt.paused else None,
        dry_run=ctx.dry_run,
        sync_period=s.sync_period,
        provider_ok=rt.provider_ok,
        last_error=rt.last_error,
        revision=s.revision,
        balancer=BalancerView(url=ctx.balancer.url, backends=list(rt.backends or ()))
        if ctx.balancer
        else None,
        rps=round(totals.rps, 2) if totals else None,
        p95_ms=round(totals.p95_ms, 1) if totals and totals.p95_ms is not None else None,
        replicas=replicas,
        last_decision=None if rt.last_decision is None else decision_view(rt.last_decision),
    )


def rollout_view(ro: Rollouts) -> RolloutView:
    ctx, rec = ro.ctx, ro.rec
    now = ctx.clock.now()
    active = ctx.active()
    members = ro.members(active, now)
    surge, unavailable = ctx.s.rollout.limits(ctx.rt.desired or 0)
    return RolloutView(
        group=ctx.s.name,
        state=rec.state,
        target=rec.target,
        previous=rec.previous,
        declared=ro.declared,
        rejected=rec.rejected,
        reason=rec.reason,
        started_at=rec.started_at,
        canary=ctx.s.rollout.canary,
        promoted=rec.promoted,
        max_surge=surge,
        max_unavailable=unavailable,
        replicas=dict(Counter(r.revision or "unmarked" for r in active)),
        updated=sum(m.revision == rec.target for m in members),
        healthy=sum(m.revision == rec.target and m.healthy for m in members),
    )
