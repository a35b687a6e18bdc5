"""A running group takes a new config: everything but the template applies at the next pass, untouched
replicas and all; a new template starts a rollout.

Everything that can fail (building a provider, a balancer) is built by the caller before this runs, so
a config that cannot be applied has changed nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

from tierscale.balancer.base import Balancer, BalancerError
from tierscale.config.settings import GroupSettings
from tierscale.controller.group import GroupController
from tierscale.controller.prober import Prober, make_prober
from tierscale.metrics.registry import SourceDeps, make_sources
from tierscale.providers.base import Provider

KEEP = object()  # "the balancer did not change"


@dataclass(frozen=True)
class NewParts:
    settings: GroupSettings
    provider: Provider | None  # None: the template did not change
    balancer: Balancer | object | None = KEEP  # KEEP, or the new balancer (None: the group has none now)
    prober: Prober | None = None  # from the controller's prober factory; None: built from the settings


async def reconfigure(gc: GroupController, parts: NewParts) -> None:
    ctx = gc.ctx
    old = ctx.s
    new = parts.settings
    new_version = new.revision != gc.rollouts.declared
    # A provider comes with a new template, or with a new way to reach the tier (a Docker host, a
    # libvirt URI: the same revision, no rollout).
    if parts.provider is not None and (new_version or old.revision == new.revision):
        ctx.swap_provider(parts.provider)
        ctx.s = new
        if new_version:
            gc.rollouts.declare(new.revision, "the template changed")
    else:
        # Same template: the revision in effect stays (it differs from the config's after a rollback).
        ctx.s = replace(new, revision=old.revision)
    h = ctx.health
    h.healthy_after, h.unhealthy_after, h.startup_grace = (
        new.healthy_after,
        new.unhealthy_after,
        new.startup_grace,
    )
    if parts.prober is not None:
        gc.health_rounds.prober = parts.prober
    elif (new.health_type, new.health_path, new.health_timeout, new.console_marker, new.health_command) != (
        old.health_type,
        old.health_path,
        old.health_timeout,
        old.console_marker,
        old.health_command,
    ):
        gc.health_rounds.prober = make_prober(ctx, gc.http)
    if parts.balancer is not KEEP:
        await _swap_balancer(gc, parts.balancer)  # type: ignore[arg-type]
    elif new.scale_to_zero != old.scale_to_zero:
        await gc.holding.start()  # on, off, or new limits; a group at zero is re-pointed at the next sync
        ctx.rt.backends = None
    gc.observer.sources = make_sources(new.metrics, SourceDeps(gc.http, new.health_timeout * 2))
    ctx.wake.set()


async def _swap_balancer(gc: GroupController, balancer: Balancer | None) -> None:
    ctx = gc.ctx
    old = ctx.balancer
    if old is not None and balancer is None and not ctx.dry_run:
        await ctx.call(old.stop)
    ctx.balancer = balancer
    ctx.rt.backends = None
    gc.traffic_log = balancer.traffic_log() if balancer else None
    gc.observer.traffic_log = gc.traffic_log
    # The same prefix directory: a running nginx is adopted and reloaded onto its new listen address.
    # A failure is recorded (balancer_failed) by `start` and the next pass's sync tries again; raising
    # here would leave the config half applied (the groups before this one reconfigured, the rest not).
    await gc.holding.start()
    with contextlib.suppress(BalancerError):
        await gc.balancing.start()
