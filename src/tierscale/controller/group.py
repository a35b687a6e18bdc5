"""One group's loop, thin: observe → decide → act → balance → record, each step its own module.

Two tasks per group: health rounds every `health.interval` (a replica enters the balancer the moment it
turns healthy) and the reconcile pass every `sync_period`. Blocking provider and balancer calls run in
threads so a slow tier never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

import aiohttp

from tierscale.balancer.base import Balancer
from tierscale.config.settings import GroupSettings
from tierscale.controller.balancing import BalancerSync
from tierscale.controller.clock import Clock
from tierscale.controller.context import GroupContext
from tierscale.controller.group_term import GroupTerm
from tierscale.controller.holding import QUICK_PROBE_TIMEOUT, Holding
from tierscale.controller.leadership import Leadership
from tierscale.controller.metric_watch import views as metric_views
from tierscale.controller.observer import Observer
from tierscale.controller.prober import HealthRounds, Prober, make_prober
from tierscale.controller.reconciler import Reconciler
from tierscale.controller.revisions import Templates
from tierscale.controller.rollout import Rollouts
from tierscale.controller.status_model import GroupStatus, HaView, RolloutView
from tierscale.controller.status_view import group_status, rollout_view
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.metrics.registry import SourceDeps, make_sources
from tierscale.policy.schedule import apply_schedule
from tierscale.policy.strategy import policy_step
from tierscale.policy.types import Decision, GroupSnapshot
from tierscale.providers.base import Provider

log = logging.getLogger("tierscale.controller")

StatusListener = Callable[[float, GroupStatus], None]


class GroupController:
    def __init__(
        self,
        settings: GroupSettings,
        provider: Provider,
        balancer: Balancer | None,
        store: EventStore,
        clock: Clock,
        telemetry: Telemetry,
        dry_run: bool = False,
        prober: Prober | None = None,
        templates: Templates | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.ctx = ctx = GroupContext(settings, provider, balancer, store, clock, telemetry, dry_run)
        self.rollouts = Rollouts(ctx, templates)
        self.term = GroupTerm(ctx, self.rollouts, leadership)
        ctx.may_act = self.term.acting
        ctx.drained_everywhere = self.term.everyone_drained
        if leadership is not None:
            ctx.share_traffic = lambda body: leadership.share_traffic(settings.name, body)
            ctx.peer_traffic = lambda: leadership.peer_traffic(settings.name)
        self._session: aiohttp.ClientSession | None = None
        self.traffic_log = balancer.traffic_log() if balancer else None
        sources = make_sources(settings.metrics, SourceDeps(self.http, settings.health_timeout * 2))
        self.observer = Observer(ctx, sources, self.traffic_log)
        self.balancing = BalancerSync(ctx)
        self.reconciler = Reconciler(ctx, self.balancing.sync, self.rollouts)
        self.health_rounds = HealthRounds(ctx, prober or make_prober(ctx, self.http), self.balancing.sync)
        self.holding = Holding(ctx)
        # Called with (now, status) after every pass: the API keeps its chart series here.
        self.status_listeners: list[StatusListener] = []

    # ---- what other layers read
    @property
    def s(self) -> GroupSettings:
        return self.ctx.s

    @property
    def name(self) -> str:
        return self.ctx.s.name

    @property
    def provider(self) -> Provider:
        return self.ctx.provider

    @property
    def dry_run(self) -> bool:
        return self.ctx.dry_run

    def http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
        return self._session

    def status(self) -> GroupStatus:
        status = group_status(self.ctx, self.traffic_log)
        status.rollout = self.rollout_view()
        status.scale_to_zero = self.holding.view(self._last_request())
        if self.term.leadership is not None:
            status.ha = HaView.model_validate(self.term.leadership.view())
        status.metric_sources = metric_views(self.ctx, self.ctx.clock.now())
        return status

    def _last_request(self) -> float | None:
        return self.traffic_log.last_request_at if self.traffic_log else None

    def rollout_view(self) -> RolloutView:
        return rollout_view(self.rollouts)

    # ---- lifecycle
    async def start(self) -> None:
        """Adopt what the infrastructure already holds, and make sure the balancer runs."""
        if not self.ctx.dry_run:
            self.rollouts.load()
        if await self.observer.refresh():
            self._adopt()
        # Adopted replicas that answer get traffic at once instead of after the first health round.
        await self.health_rounds.probe_all()
        await self.holding.start()
        await self.balancing.start()

    def _adopt(self) -> None:
        """On the first listing that works (not before: a tier down at start must not look empty)."""
        ctx, rt = self.ctx, self.ctx.rt
        adopted = list(rt.replicas.values())
        rt.adopted = {r.id for r in adopted}
        for r in adopted:
            ctx.event("replica_adopted", f"adopted replica {r.id} at {r.address}", r.id, state=r.state)
        count = len([r for r in adopted if r.state != "failed"])
        if self.rollouts.rec.state != "complete":
            # Mid-rollout the listing holds surge replicas too: the count the last pass decided is the
            # group's size (as a Deployment's spec is), not what happens to exist.
            last = ctx.store.decisions(ctx.s.name, limit=1)
            if last:
                count = last[0].desired
        rt.desired = max(ctx.s.min, min(ctx.s.max, count))
        other = [r for r in adopted if r.revision != ctx.s.revision]
        if other:
            # Made from another template (or before replicas carried revisions): say so, never silently
            # mix versions. They keep serving; new replicas are made from the current template.
            seen = sorted({r.revision or "unmarked" for r in other})
            ctx.event(
                "revision_mismatch",
                f"{len(other)} adopted replica(s) run revision {', '.join(seen)}, "
                f"not the template's {ctx.s.revision}",
                revisions=seen,
                target=ctx.s.revision,
                replicas=sorted(r.id for r in other),
            )

    async def run(self, stop: asyncio.Event) -> None:
        ctx = self.ctx
        await self.start()
        health_task = ctx.spawn(self._health_loop(stop))
        try:
            while not stop.is_set():
                started = ctx.clock.now()
                ctx.wake.clear()  # before the pass: a wake-up set during it must not be lost
                try:
                    await self.reconcile()
                except Exception as exc:  # one bad pass must not end the loop; it is recorded
                    log.exception("%s: reconcile failed", ctx.s.name)
                    ctx.event("provider_error", f"reconcile failed: {exc}", error=str(exc))
                elapsed = ctx.clock.now() - started
                ctx.tm.reconcile_seconds.labels(ctx.s.name).observe(elapsed)
                wait = ctx.s.sync_period - elapsed
                due = self.rollouts.next_due(ctx.clock.now())
                if due is not None:  # a new replica finishes its min_healthy_time: act on it then
                    wait = min(wait, due - ctx.clock.now() + 0.05)
                await self._sleep(stop, max(0.0, wait))
        finally:
            health_task.cancel()
            await self.shutdown()

    async def _sleep(self, stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Until the next pass is due, or a wake-up (readiness change, manual scale, a held request), or
        stop."""
        waiters = [
            asyncio.ensure_future(self.ctx.clock.sleep(seconds)),
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future((wake or self.ctx.wake).wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the loop itself is cancelled: no waiter may outlive it
            for w in waiters:
                w.cancel()

    async def _health_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.ctx.probe_soon.clear()
            # While requests are held, a new replica is probed every 50 ms, each probe giving up quickly:
            # it serves the moment it can.
            waking = self.holding.probe_interval() < self.s.health_interval
            self.health_rounds.quick_timeout = QUICK_PROBE_TIMEOUT if waking else None
            try:
                await self.health_rounds.probe_all()
            except Exception:
                log.exception("%s: health round failed", self.ctx.s.name)
            await self._sleep(stop, self.holding.probe_interval(), self.ctx.probe_soon)

    async def shutdown(self) -> None:
        # In-flight drains and creates finish so nothing is left half-made; replicas keep running.
        ctx = self.ctx
        await self.holding.stop()  # requests still waiting get 503 + Retry-After
        pending = [t for t in ctx.tasks if not t.done() and t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=ctx.s.drain_timeout + ctx.s.stop_grace + 5)
        if self._session is not None:
            await self._session.close()

    async def settle(self) -> None:
        """Wait for the creates and drains in flight (tests and `run --once`)."""
        pending = [t for t in self.ctx.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending)

    # ---- one pass
    async def reconcile(self) -> Decision | None:
        ctx, rt = self.ctx, self.ctx.rt
        listed = await self.observer.refresh()
        now = ctx.clock.now()
        acting = ctx.dry_run or self.term.begin()
        ctx.health.readmit = not acting
        if rt.desired is None:
            if not listed:
                return None  # nothing is known yet: neither adopt nor create blind
            self._adopt()
        if not acting:  # an ha standby: balance what the leader made, act on nothing
            await self.observer.traffic(now)  # our balancer's share goes to the leader
            self.term.follow()
            await self.balancing.check()
            await self.balancing.sync()
            self.term.acked()
            self._publish(now)
            return None
        self.reconciler.reap_failed()
        snap = await self.observer.snapshot(now)
        held, last = self.holding.demand(self._last_request())
        snap = replace(snap, held_requests=held, last_request_at=last)
        decision = self.decide(snap)
        self._record(decision, now)
        if not ctx.dry_run:
            rt.desired = decision.desired
            if listed:
                self.rollouts.step(now)
                self.rollouts.after(self.reconciler.converge())
            await self.balancing.check()
            await self.balancing.sync()
        self.term.publish()
        self._publish(now)
        return decision

    def decide(self, snap: GroupSnapshot) -> Decision:
        rt, s = self.ctx.rt, self.ctx.s
        current = rt.desired or 0
        if rt.paused:
            want = rt.manual_desired if rt.manual_desired is not None else current
            want = max(s.min, min(s.max, want))
            return Decision(
                "manual",
                snap.now,
                current,
                want,
                (),
                want,
                ("paused",),
                f"paused: holding manual count {want}",
            )
        # The same step the simulator takes: schedule, strategy, and the scale recorded in the history.
        decision, rt.policy_state = policy_step(s.plan, snap, rt.policy_state)
        bounds, _ = apply_schedule(s.plan.schedule, snap)
        self.ctx.tm.min_replicas.labels(s.name).set(bounds.min_replicas)
        self.ctx.tm.max_replicas.labels(s.name).set(bounds.max_replicas)
        return decision

    def _record(self, decision: Decision, now: float) -> None:
        ctx, rt = self.ctx, self.ctx.rt
        rt.last_decision = decision
        ctx.store.record_decision(ctx.s.name, decision)
        self.holding.record(decision)
        for p in decision.proposals:
            if p.value is not None:
                ctx.tm.metric_value.labels(ctx.s.name, p.metric).set(p.value)
        if decision.desired == decision.current:
            return
        direction = "up" if decision.desired > decision.current else "down"
        ctx.tm.scale_events.labels(ctx.s.name, direction).inc()
        ctx.event(
            "scaled",
            f"scale {direction} {decision.current} → {decision.desired}: {decision.reason}",
            current=decision.current,
            desired=decision.desired,
            reason=decision.reason,
        )

    def _publish(self, now: float) -> None:
        ctx = self.ctx
        status = self.status()
        ctx.tm.set_replica_counts(ctx.s.name, [r.state for r in status.replicas])
        ctx.tm.desired.labels(ctx.s.name).set(ctx.rt.desired or 0)
        ctx.store.write_status(ctx.s.name, status.model_dump(mode="json"), ts=now)
        for listener in self.status_listeners:
            listener(now, status)

    # ---- manual control
    def set_manual(self, replicas: int) -> None:
        rt = self.ctx.rt
        rt.paused = True
        rt.manual_desired = replicas
        self.ctx.event("manual", f"manual scale to {replicas}; policy paused until resume", replicas=replicas)
        self.ctx.wake.set()

    def pause(self) -> None:
        rt = self.ctx.rt
        rt.paused = True
        rt.manual_desired = rt.desired
        self.ctx.event("manual", "policy paused")

    def resume(self) -> None:
        rt = self.ctx.rt
        rt.paused = False
        rt.manual_desired = None
        self.ctx.event("manual", "policy resumed")
        self.ctx.wake.set()

    @property
    def paused(self) -> bool:
        return self.ctx.rt.paused

    @property
    def desired(self) -> int | None:
        return self.ctx.rt.desired
