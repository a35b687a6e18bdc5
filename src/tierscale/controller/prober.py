"""Health rounds: probe every running replica, admit the healthy to the balancer, condemn the broken.

How one replica is probed is a `Prober`: an HTTP GET (the default), a TCP connect, the tier's console log
(clouds whose instances the controller cannot reach), the tier's own running state (queue workers), a
command run in the container or beside the process (exec), or in tests the fake tier's own switch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import aiohttp

from tierscale.controller.context import GroupContext
from tierscale.controller.health import probe
from tierscale.providers.base import Capability, Execs, ProviderError, Replica, TemplateError


class Prober(Protocol):
    async def __call__(self, r: Replica) -> tuple[bool, str | None]: ...


class HttpProber:
    def __init__(self, session: Callable[[], aiohttp.ClientSession], path: str, timeout: float) -> None:
        self.session, self.path, self.timeout = session, path, timeout

    async def __call__(self, r: Replica) -> tuple[bool, str | None]:
        return await probe(self.session(), r.address or "", self.path, self.timeout)


class ConsoleProber:
    """Ready once the marker shows in the console log; then healthy while the tier reports it running
    (the marker is a boot event: re-reading the console would only cost API calls)."""

    def __init__(self, ctx: GroupContext) -> None:
        if Capability.CONSOLE not in ctx.provider.capabilities:
            raise TemplateError(f"groups[{ctx.s.name}].health.type: tier {ctx.s.tier} has no console log")
        self.ctx = ctx

    async def __call__(self, r: Replica) -> tuple[bool, str | None]:
        ctx = self.ctx
        if ctx.health.is_ready(r.id):
            return True, None
        try:
            log_text = await ctx.call(ctx.provider.console_output, r)
        except ProviderError as exc:
            return False, str(exc)
        if ctx.s.console_marker and ctx.s.console_marker in log_text:
            return True, None
        return False, "console marker not seen yet"


class RunningProber:
    """Healthy while the tier reports it running: a queue worker has nothing else to probe. The probe
    rounds only ever see running replicas, so this answers yes; a replica that exits is the tier's
    `failed`, and replaced as such."""

    async def __call__(self, r: Replica) -> tuple[bool, str | None]:
        return (True, None) if r.state == "running" else (False, f"state {r.state}")


class TcpProber:
    """Healthy when the replica's address accepts a connection (a service that speaks no HTTP)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def __call__(self, r: Replica) -> tuple[bool, str | None]:
        host, _, port = (r.address or "").rpartition(":")
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), self.timeout
            )
        except (OSError, ValueError, TimeoutError) as exc:
            return False, f"tcp {r.address}: {exc or type(exc).__name__}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, None


class ExecProber:
    """Healthy when the health command exits 0 in (docker) or beside (process) the replica."""

    def __init__(self, ctx: GroupContext) -> None:
        if Capability.EXEC not in ctx.provider.capabilities:
            raise TemplateError(f"groups[{ctx.s.name}].health.type: tier {ctx.s.tier} cannot run a command")
        self.ctx = ctx

    async def __call__(self, r: Replica) -> tuple[bool, str | None]:
        ctx = self.ctx
        provider = cast(Execs, ctx.provider)
        timeout = ctx.s.health_timeout
        try:
            code, out = await ctx.call(
                provider.exec_check, r, ctx.s.health_command, timeout, timeout=timeout + 1.0
            )
        except ProviderError as exc:
            return False, str(exc)
        if code == 0:
            return True, None
        tail = " ".join(out.split())[-160:]
        return False, f"health command exited {code}" + (f": {tail}" if tail else "")


def make_prober(ctx: GroupContext, session: Callable[[], aiohttp.ClientSession]) -> Prober:
    """The prober for the group's `health.type`."""
    s = ctx.s
    if s.health_type == "console":
        return ConsoleProber(ctx)
    if s.health_type == "running":
        return RunningProber()
    if s.health_type == "tcp":
        return TcpProber(s.health_timeout)
    if s.health_type == "exec":
        return ExecProber(ctx)
    return HttpProber(session, s.health_path, s.health_timeout)


class HealthRounds:
    def __init__(self, ctx: GroupContext, prober: Prober, on_change: Callable[[], Awaitable[None]]) -> None:
        self.ctx = ctx
        self.prober = prober
        self.on_change = on_change  # a replica turned ready or unhealthy: rebalance now
        # Set while requests wait for a replica (scale_to_zero): probes of replicas not yet ready give up
        # after this many seconds, so one sent while a guest's network is still down (no answer, not
        # even a reset) does not hold the next probe back for the full health timeout.
        self.quick_timeout: float | None = None

    async def _probe(self, r: Replica) -> tuple[bool, str | None]:
        quick = self.quick_timeout
        if quick is None or self.ctx.health.is_ready(r.id):
            return await self.prober(r)
        try:
            return await asyncio.wait_for(self.prober(r), quick)
        except TimeoutError:
            return False, f"no answer within {quick:g}s (waking)"

    async def probe_all(self) -> None:
        ctx = self.ctx
        console = ctx.s.health_type in ("console", "running", "exec")
        # Console, running and exec readiness need no address: the tier's API answers them.
        # A replica whose host does not answer keeps the health it had: a cut link would otherwise
        # condemn it (and replace it) before host_timeout says the host is lost.
        candidates = ctx.active()
        if ctx.health.readmit:  # an ha standby keeps probing what it condemned: it may come back
            candidates += [
                r
                for r in ctx.rt.replicas.values()
                if ctx.health.is_unhealthy(r.id) and r.id not in ctx.rt.draining
            ]
        targets = [
            r for r in candidates if (r.address or console) and r.state == "running" and ctx.reachable(r)
        ]
        if not targets:
            return
        results = await asyncio.gather(*(self._probe(r) for r in targets))
        now = ctx.clock.now()
        changed = False
        for r, (ok, err) in zip(targets, results, strict=True):
            tr = ctx.health.observe(r.id, r.created_at, ok, now, err)
            if tr == "ready":
                changed = True
                st = ctx.health.states[r.id]
                took = (st.first_ready_at or now) - r.created_at
                if r.id not in ctx.rt.adopted:  # an adopted replica's age is not a provision time
                    ctx.tm.provision_seconds.labels(ctx.s.name, ctx.s.tier).observe(max(0.0, took))
                ctx.event("replica_ready", f"replica {r.id} healthy after {took:.2f}s", r.id, seconds=took)
            elif tr == "unhealthy":
                changed = True
                standby = ctx.health.readmit
                if not standby:
                    ctx.tm.replacements.labels(ctx.s.name, "unhealthy").inc()
                then = (
                    "out of our balancer until it answers again"
                    if standby
                    else "taking it out and replacing it"
                )
                ctx.event("replica_unhealthy", f"replica {r.id} unhealthy ({err}); {then}", r.id, error=err)
        if changed:
            await self.on_change()
            ctx.wake.set()
