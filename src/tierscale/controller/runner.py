"""Build the group loops from a config and run them until told to stop.

State directory layout (everything tierscale writes):
    <state_dir>/events.db                       decisions, events, last status per group
    <state_dir>/groups/<group>/controller.lock  one controller per group (flock)
    <state_dir>/groups/<group>/replicas/        process tier pid files
    <state_dir>/groups/<group>/nginx/           the group's own nginx prefix

The API is not started here: `tierscale.service` starts it beside the controller, on a handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from tierscale.balancer.base import Balancer
from tierscale.balancer.nginx import NginxBalancer
from tierscale.config.models import Config, GroupBase
from tierscale.config.settings import settings_for
from tierscale.controller.clock import Clock, WallClock
from tierscale.controller.group import GroupController
from tierscale.controller.handle import ControllerHandle
from tierscale.controller.locks import group_dir, group_lock
from tierscale.controller.prober import Prober
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.private_dirs import make_private_dir
from tierscale.providers import make_provider
from tierscale.providers.base import EventSink, Provider

# Seams for tests and benchmarks: build a group's provider, balancer or prober some other way.
ProviderFactory = Callable[[GroupBase, Path, EventSink], Provider]
BalancerFactory = Callable[[GroupBase, Path], Balancer | None]
ProberFactory = Callable[[GroupBase, Provider], Prober | None]


def make_balancer(group: GroupBase, state_dir: Path) -> NginxBalancer | None:
    if group.balancer.type != "nginx":
        return None
    return NginxBalancer(
        group.name,
        group.balancer.listen,
        group.balancer.algorithm,
        group_dir(state_dir, group.name) / "nginx",
    )


class Controller:
    """All groups of one config, each an independent loop in one event loop."""

    def __init__(
        self,
        config: Config,
        dry_run: bool = False,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
        provider_factory: ProviderFactory = make_provider,
        balancer_factory: BalancerFactory = make_balancer,
        prober_factory: ProberFactory | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        make_private_dir(self.state_dir)
        self.store = EventStore(self.state_dir / "events.db")
        self.clock = clock or WallClock()
        self.telemetry = telemetry or Telemetry()
        self.dry_run = dry_run
        self.groups: dict[str, GroupController] = {}
        for g in config.groups:
            settings = settings_for(g)
            # The provider's events go through the group's recorder, which exists only once the group
            # does: bind late.
            sink: list[EventSink] = []
            provider = provider_factory(g, self.state_dir, lambda k, m, d, sink=sink: sink[0](k, m, d))
            gc = GroupController(
                settings,
                provider,
                balancer_factory(g, self.state_dir),
                self.store,
                self.clock,
                self.telemetry,
                dry_run=dry_run,
                prober=prober_factory(g, provider) if prober_factory else None,
            )
            sink.append(gc.ctx.provider_event)
            self.groups[g.name] = gc
            self.telemetry.init_group(g.name, g.tier)

    def handle(self) -> ControllerHandle:
        return ControllerHandle(self.groups, self.store, self.telemetry.registry)

    def _lock_all(self) -> contextlib.ExitStack:
        locks = contextlib.ExitStack()
        try:
            for name in self.groups:
                locks.enter_context(group_lock(self.state_dir, name))
        except BaseException:
            locks.close()
            raise
        return locks

    async def run(self, stop: asyncio.Event, started: Callable[[], object] | None = None) -> None:
        """Every group's loop until `stop`; `started` is called once the locks are held."""
        with self._lock_all():
            if started is not None:
                await _maybe_await(started())
            for name in self.groups:
                self.store.record_event(name, "controller_started", f"controller started (pid {os.getpid()})")
            tasks = [
                asyncio.create_task(gc.run(stop), name=f"group-{name}") for name, gc in self.groups.items()
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for name in self.groups:
                    self.store.record_event(
                        name, "controller_stopped", "controller stopped; replicas keep running"
                    )

    async def run_once(self) -> None:
        with self._lock_all():
            for gc in self.groups.values():
                await gc.start()
                await gc.reconcile()
                # Creates and drains started by this pass finish before we exit, so nothing is half-made.
                await gc.shutdown()
                await gc.balancing.sync()

    def close(self) -> None:
        for gc in self.groups.values():
            gc.provider.close()
        self.store.close()


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value
