"""Converge for a tier that places its replicas itself (Swarm): set the service's count, pick no replica.

The tier chooses where a new task runs and which task leaves on a scale-in; tierscale's part is the
number. It is written only when it differs from the service's spec and never while an update that
someone else started is running or paused (the tier says `busy`): a count change mid-update would cancel
that update's rollout. One call at a time; the next pass checks again.
"""

from __future__ import annotations

from typing import Any, Protocol

from tierscale.controller.context import GroupContext
from tierscale.controller.rollout_plan import RolloutPlan
from tierscale.providers.base import ProviderError

NOTHING = RolloutPlan(create=0, remove=(), rolling=False)


class CountedTier(Protocol):
    def spec_count(self) -> int: ...
    def busy(self) -> str | None: ...
    def scale_to(self, count: int) -> None: ...


class ServiceCount:
    def __init__(self, ctx: GroupContext) -> None:
        self.ctx = ctx
        self._in_flight = False
        self._deferred: str | None = None  # the busy reason last told, so it is told once per spell
        self._failed: str | None = None

    def converge(self) -> RolloutPlan:
        if not self._in_flight and not self.ctx.dry_run:
            self._in_flight = True
            self.ctx.spawn(self._set(self.ctx.rt.desired or 0))
        return NOTHING

    async def _set(self, want: int) -> None:
        ctx = self.ctx
        tier: Any = ctx.provider
        try:
            busy = await ctx.call(tier.busy)
            if busy is not None:
                if busy != self._deferred:
                    ctx.event("scale_deferred", f"{busy}: the count stays until it ends", reason=busy)
                self._deferred = busy
                return
            self._deferred = None
            have = await ctx.call(tier.spec_count)
            if have != want:
                await ctx.call(tier.scale_to, want)
                ctx.event("service_scaled", f"service count {have} -> {want}", previous=have, count=want)
            self._failed = None
        except ProviderError as exc:
            if str(exc) != self._failed:  # the same failure every pass is one event, not one a second
                ctx.event("scale_failed", f"cannot set the service's count to {want}: {exc}", error=str(exc))
            self._failed = str(exc)
        finally:
            self._in_flight = False
