"""Keep the balancer pointed at exactly the ready replicas, and notice when it died."""

from __future__ import annotations

import asyncio

from tierscale.balancer.base import BalancerError
from tierscale.controller.context import GroupContext


class BalancerSync:
    def __init__(self, ctx: GroupContext) -> None:
        self.ctx = ctx
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        ctx = self.ctx
        if ctx.balancer is None or ctx.dry_run:
            return
        backends = ctx.ready_backends()
        if ctx.holder is not None:
            ctx.holder.set_backends(backends)
        try:
            await ctx.call(ctx.balancer.ensure_running, list(backends))
            ctx.rt.backends = backends
        except BalancerError as exc:
            ctx.tm.balancer_reloads.labels(ctx.s.name, "failed").inc()
            ctx.event("balancer_failed", f"balancer did not start: {exc}", error=str(exc))
            raise

    async def check(self) -> None:
        """A balancer that died (OOM killer, an operator's kill -9) is noticed within one tick; nginx's
        orphaned workers keep serving meanwhile, and the next `apply` retires them."""
        ctx = self.ctx
        if ctx.balancer is None or ctx.rt.backends is None:
            return
        if await ctx.call(ctx.balancer.is_running):
            return
        ctx.event("balancer_restarted", "balancer is gone; starting a new one")
        ctx.rt.backends = None  # whatever the dead one served, the next apply must start one

    async def sync(self) -> None:
        ctx = self.ctx
        if ctx.balancer is None or ctx.dry_run:
            return
        if ctx.holder is not None:
            # Held requests go to a replica the moment it is ready, while nginx is still reloading.
            ctx.holder.set_backends(ctx.ready_backends())
        async with self._lock:
            backends = ctx.ready_backends()
            if backends == ctx.rt.backends:
                return
            result = await ctx.call(ctx.balancer.apply, list(backends))
            if result.ok:
                ctx.rt.backends = backends
                if result.changed:
                    ctx.tm.balancer_reloads.labels(ctx.s.name, "ok").inc()
                    ctx.event(
                        "balancer_reloaded",
                        f"balancer now sends to {len(backends)} replica(s)",
                        backends=list(backends),
                    )
            else:
                ctx.tm.balancer_reloads.labels(ctx.s.name, "failed").inc()
                ctx.event(
                    "balancer_failed",
                    f"balancer config rejected, keeping the last good one: {result.error}",
                    error=result.error,
                )
