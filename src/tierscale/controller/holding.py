"""The group's side of scale_to_zero: its holder's lifecycle, what the holder tells the loop, and the
demand the policy sees (requests held, the last request seen).

The holder listens before the balancer starts, so a balancer adopted at zero is pointed at a live
holding endpoint at once; its port is kept in the event store so that a restarted controller takes the
same one and the balancer's config stays valid even before it is rewritten.
"""

from __future__ import annotations

from tierscale.balancer.holder import Holder, HoldHooks
from tierscale.controller.context import GroupContext
from tierscale.controller.status_model import ScaleToZeroView
from tierscale.policy.types import Decision

_PORT_KEY = "hold_port"
FAST_PROBE = 0.05  # seconds between health rounds while requests wait for a replica
QUICK_PROBE_TIMEOUT = 0.5  # and how long each probe of a replica not yet ready may take then


class Holding:
    def __init__(self, ctx: GroupContext) -> None:
        self.ctx = ctx
        self.started_at = ctx.clock.now()  # the idle timer's start when no request was ever seen

    @property
    def wanted(self) -> bool:
        ctx = self.ctx
        return ctx.s.scale_to_zero is not None and ctx.balancer is not None and not ctx.dry_run

    async def start(self) -> None:
        """Listen (or take the new settings) before the balancer is started or applied."""
        ctx, spec = self.ctx, self.ctx.s.scale_to_zero
        if not self.wanted or spec is None or ctx.balancer is None:
            await self.stop()
            return
        holder = ctx.holder
        if holder is None:
            saved = ctx.store.get_state(ctx.s.name, _PORT_KEY) or {}
            holder = Holder(
                ctx.s.name,
                hold_timeout=spec.hold_timeout,
                max_pending=spec.max_pending,
                replica_concurrency=spec.replica_concurrency,
                hooks=HoldHooks(wake=self._wake, cold_start=self._cold_start, held=self._held),
                port=int(saved.get("port", 0)),
                wall=ctx.clock.now,
            )
            await holder.start()
            ctx.store.put_state(ctx.s.name, _PORT_KEY, {"port": int(holder.address.rsplit(":", 1)[1])})
            ctx.holder = holder
            ctx.tm.held_requests.labels(ctx.s.name).set(0)
            ctx.tm.cold_start_seconds.labels(ctx.s.name, ctx.s.tier)
        holder.hold_timeout = spec.hold_timeout
        holder.max_pending = spec.max_pending
        holder.replica_concurrency = spec.replica_concurrency
        ctx.balancer.hold_at(holder.address, spec.hold_timeout)

    async def stop(self) -> None:
        ctx = self.ctx
        if ctx.holder is not None:
            await ctx.holder.stop()
            ctx.holder = None
        if ctx.balancer is not None:
            ctx.balancer.hold_at(None)

    # ---- hooks (in the event loop)
    def _wake(self) -> None:
        self.ctx.wake.set()
        self.ctx.probe_soon.set()

    def _cold_start(self, seconds: float) -> None:
        ctx = self.ctx
        ctx.tm.cold_start_seconds.labels(ctx.s.name, ctx.s.tier).observe(seconds)
        ctx.event("cold_start", f"first held request answered after {seconds:.2f}s", seconds=seconds)

    def _held(self, count: int) -> None:
        self.ctx.tm.held_requests.labels(self.ctx.s.name).set(count)

    # ---- what the loop reads
    def demand(self, log_last: float | None) -> tuple[int, float | None]:
        """(requests held now, when the last request arrived); None when scale_to_zero is off."""
        holder = self.ctx.holder
        if self.ctx.s.scale_to_zero is None:
            return 0, None
        seen = [t for t in (log_last, holder.last_request_at if holder else None) if t is not None]
        # Nothing seen since this controller started: the timer starts now, not at the epoch.
        return (holder.held if holder else 0), max([*seen, self.started_at])

    def view(self, log_last: float | None) -> ScaleToZeroView | None:
        spec = self.ctx.s.scale_to_zero
        if spec is None:
            return None
        held, last = self.demand(log_last)
        idle = None if last is None else round(max(0.0, self.ctx.clock.now() - last), 1)
        return ScaleToZeroView(
            idle_after=spec.idle_after,
            hold_timeout=spec.hold_timeout,
            max_pending=spec.max_pending,
            held=held,
            last_request_at=last,
            idle_for=idle,
        )

    def probe_interval(self) -> float:
        holder = self.ctx.holder
        if holder is not None and holder.held and not self.ctx.ready_backends():
            return FAST_PROBE
        return self.ctx.s.health_interval

    def record(self, decision: Decision) -> None:
        ctx = self.ctx
        if decision.policy == "scale_to_zero" and decision.current == 0 and decision.desired > 0:
            ctx.event("woke", decision.reason, desired=decision.desired)
        elif "idle_after" in decision.limits and decision.desired == 0 and decision.current > 0:
            ctx.event("scaled_to_zero", decision.reason, current=decision.current)
