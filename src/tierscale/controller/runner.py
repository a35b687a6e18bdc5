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
from tierscale.balancer.haproxy import HAProxyBalancer
from tierscale.balancer.nginx import NginxBalancer
from tierscale.config.models import Config, GroupBase
from tierscale.config.settings import settings_for
from tierscale.controller.clock import Clock, WallClock
from tierscale.controller.file_sd import PrometheusTargets
from tierscale.controller.group import GroupController
from tierscale.controller.handle import ControllerHandle
from tierscale.controller.host_book import HostBook
from tierscale.controller.leadership import Leadership, renew_deadline
from tierscale.controller.live_config import ConfigDiff, diff
from tierscale.controller.locks import ControllerError, group_dir, group_lock
from tierscale.controller.prober import Prober
from tierscale.controller.reconfigure import KEEP, NewParts, reconfigure
from tierscale.controller.revisions import StoredTemplates
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.private_dirs import make_private_dir
from tierscale.providers import make_provider
from tierscale.providers.base import EventSink, Provider, retire

# Seams for tests and benchmarks: build a group's provider, balancer or prober some other way.
ProviderFactory = Callable[[GroupBase, Path, EventSink], Provider]
BalancerFactory = Callable[[GroupBase, Path], Balancer | None]
ProberFactory = Callable[[GroupBase, Provider], Prober | None]


def make_balancer(group: GroupBase, state_dir: Path) -> Balancer | None:
    b, home = group.balancer, group_dir(state_dir, group.name)
    if b.type == "haproxy":
        return HAProxyBalancer(group.name, b.listen, b.algorithm, home / "haproxy")
    if b.type != "nginx":
        return None
    return NginxBalancer(group.name, b.listen, b.algorithm, home / "nginx")


class Controller:
    """All groups of one config, each an independent loop in one event loop; `apply` changes the set."""

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
        self.hosts = HostBook(self.store)
        self.clock = clock or WallClock()
        self.telemetry = telemetry or Telemetry()
        self.dry_run = dry_run
        self.provider_factory = provider_factory
        self.balancer_factory = balancer_factory
        self.prober_factory = prober_factory
        self.groups: dict[str, GroupController] = {}
        self.templates: dict[str, StoredTemplates] = {}
        self._locks: dict[str, contextlib.ExitStack] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._apply_lock = asyncio.Lock()
        self.leadership = make_leadership(config, self._leadership_changed)
        self._leader_changes_seen = 0
        for g in config.groups:
            self.groups[g.name] = self._build(g)

    def _provider(self, g: GroupBase, sink: list[EventSink]) -> Provider:
        # The provider's events go through the group's recorder, which exists only once the group does:
        # bind late.
        return self.provider_factory(g, self.state_dir, lambda k, m, d: sink[0](k, m, d))

    def _build(self, g: GroupBase) -> GroupController:
        sink: list[EventSink] = []
        provider = self._provider(g, sink)
        templates = StoredTemplates(g, self.store, lambda old: self._provider(old, sink))
        gc = GroupController(
            settings_for(g),
            provider,
            self.balancer_factory(g, self.state_dir),
            self.store,
            self.clock,
            self.telemetry,
            dry_run=self.dry_run,
            prober=self.prober_factory(g, provider) if self.prober_factory else None,
            templates=templates,
            leadership=self.leadership,
        )
        sink.append(gc.ctx.provider_event)
        gc.ctx.hosts = self.hosts
        if not self.dry_run:
            gc.status_listeners.append(PrometheusTargets(self.state_dir, g.name, g.tier))
        self.templates[g.name] = templates
        self.telemetry.init_group(g.name, g.tier)
        if self.leadership is not None:
            self.telemetry.leader.labels(g.name, self.leadership.name).set(0)
        return gc

    # ---- ha
    def _leadership_changed(self, leading: bool, why: str) -> None:
        ld = self.leadership
        assert ld is not None
        kind = "leader_elected" if leading else "leader_lost"
        data = {} if leading else {"acting_until": ld.lost_until}
        for name, gc in self.groups.items():
            self.telemetry.leader.labels(name, ld.name).set(1 if leading else 0)
            gc.ctx.event(kind, f"{ld.name}: {why}", instance=ld.name, **data)
            gc.ctx.wake.set()  # a new leader acts at once, not at the next sync period

    async def _ha_loop(self, stop: asyncio.Event) -> None:
        ld = self.leadership
        assert ld is not None
        shared_seen = ld.shared_version
        while not stop.is_set():
            await ld.step()
            if ld.shared_version != shared_seen:  # a standby follows a drain now, not next period
                shared_seen = ld.shared_version
                for gc in self.groups.values():
                    gc.ctx.wake.set()
            if ld.changes > self._leader_changes_seen:
                self.telemetry.leader_changes.inc(ld.changes - self._leader_changes_seen)
                self._leader_changes_seen = ld.changes
            if ld.leading and ld.past_deadline():  # the local deadline passed between two tries
                ld.lost_until = ld.deadline_wall()
                ld.leading = False
                self._leadership_changed(False, "lease not renewed in time: stopped acting")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ld.interval)

    def handle(self) -> ControllerHandle:
        return ControllerHandle(self.groups, self.store, self.telemetry.registry, self, self.hosts)

    def _lock(self, name: str) -> None:
        if name in self._locks:  # taken already (by `apply` before `run`): a second flock would refuse it
            return
        stack = contextlib.ExitStack()
        stack.enter_context(group_lock(self.state_dir, name))
        self._locks[name] = stack

    def _unlock(self, name: str) -> None:
        stack = self._locks.pop(name, None)
        if stack is not None:
            stack.close()

    def _lock_all(self) -> contextlib.ExitStack:
        locks = contextlib.ExitStack()
        # Every lock held when it closes, the groups `apply` added meanwhile included.
        locks.callback(lambda: [self._unlock(name) for name in list(self._locks)])
        try:
            for name in self.groups:
                self._lock(name)
        except BaseException:
            locks.close()
            raise
        return locks

    def _start_group(self, name: str) -> None:
        self.store.record_event(name, "controller_started", f"controller started (pid {os.getpid()})")
        stop = self._stops[name] = asyncio.Event()
        self._tasks[name] = asyncio.create_task(self.groups[name].run(stop), name=f"group-{name}")

    async def run(self, stop: asyncio.Event, started: Callable[[], object] | None = None) -> None:
        """Every group's loop until `stop`; `started` is called once the locks are held."""
        with self._lock_all():
            if started is not None:
                await _maybe_await(started())
            ha_stop = asyncio.Event()
            ha_task = asyncio.create_task(self._ha_loop(ha_stop)) if self.leadership else None
            for name in list(self.groups):
                self._start_group(name)
            stopped = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    await asyncio.wait({stopped, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
                    for name, task in list(self._tasks.items()):
                        if task.done() and not self._stops[name].is_set():
                            task.result()  # a group that ended on its own: its error ends the run
            finally:
                stopped.cancel()
                for ev in self._stops.values():
                    ev.set()
                if self._tasks:
                    await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                if ha_task is not None and self.leadership is not None:
                    # After the groups: nothing acts once the key is gone, and a standby takes over now.
                    ha_stop.set()
                    await asyncio.gather(ha_task, return_exceptions=True)
                    await asyncio.to_thread(self.leadership.resign)
                for name in self.groups:
                    self.store.record_event(
                        name, "controller_stopped", "controller stopped; replicas keep running"
                    )

    async def apply(self, config: Config) -> ConfigDiff:
        """Take a new config while running: all of it, or (ApplyError, ControllerError) none of it."""
        async with self._apply_lock:
            change = diff(self.config, config)
            built: dict[str, GroupController] = {}
            parts: dict[str, NewParts] = {}
            try:
                for name in change.added:
                    self._lock(name)  # another controller owning it refuses here
                    built[name] = self._build(config.group(name))
                for name in change.changed:
                    parts[name] = self._new_parts(self.groups[name], config.group(name), change)
            except BaseException:
                for name, gc in built.items():
                    gc.provider.close()
                    self.groups.pop(name, None)
                    self.telemetry.forget_group(name)
                for name in change.added:
                    self._unlock(name)
                for p in parts.values():
                    if p.provider is not None:
                        retire(p.provider)  # the group's running provider and its pool stay whole
                raise
            for name, p in parts.items():
                self.templates[name].declare(config.group(name))
                await reconfigure(self.groups[name], p)
                gc = self.groups[name]
                gc.ctx.event(
                    "config_applied",
                    f"new config: {', '.join(change.changed[name])} changed",
                    changed=list(change.changed[name]),
                )
            for name in change.removed:
                await self._release(name)
            self.config = config
            for name, gc in built.items():
                self.groups[name] = gc
                gc.ctx.event("config_applied", "new group from the applied config")
                if self._stops or self._tasks:  # running: start it now (otherwise `run` will)
                    self._start_group(name)
            return change

    def _new_parts(self, gc: GroupController, g: GroupBase, change: ConfigDiff) -> NewParts:
        keys = change.changed[gc.name]
        provider = None
        if "template" in keys or "warm_pool" in keys:
            sink: list[EventSink] = [gc.ctx.provider_event]
            provider = self._provider(g, sink)
        balancer: object = KEEP
        if "balancer" in keys:
            try:
                balancer = self.balancer_factory(g, self.state_dir)
            except BaseException:
                if provider is not None:
                    retire(provider)
                raise
        # A controller built with a prober factory (tests, benchmarks) keeps probing through it.
        prober = None
        if self.prober_factory is not None and "health" in keys:
            prober = self.prober_factory(g, provider or gc.provider)
        return NewParts(settings_for(g), provider, balancer, prober)

    async def _release(self, name: str) -> None:
        """A group the new config no longer names: its loop stops, its replicas and balancer stay."""
        gc = self.groups.pop(name)
        stop, task = self._stops.pop(name, None), self._tasks.pop(name, None)
        if stop is not None:
            stop.set()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        gc.ctx.event(
            "group_unmanaged",
            "no longer in the config: not managed any more; its replicas keep running "
            "(`tierscale down` removes them)",
        )
        gc.provider.close()
        for listener in gc.status_listeners:
            if isinstance(listener, PrometheusTargets):  # nobody keeps its targets current any more
                listener.remove()
        self.store.clear_status(name)
        self.telemetry.forget_group(name)
        self._unlock(name)

    async def run_once(self) -> None:
        with self._lock_all():
            if self.leadership is not None:
                await self.leadership.step()  # one pass acts only with the lease, as `run` does
            for gc in self.groups.values():
                await gc.start()
                await gc.reconcile()
                # Creates and drains started by this pass finish before we exit, so nothing is half-made.
                await gc.shutdown()
                await gc.balancing.sync()

    def close(self) -> None:
        for gc in self.groups.values():
            gc.provider.close()
        if self.leadership is not None:
            self.leadership.resign()
            self.leadership.store.close()
        self.store.close()


def make_leadership(config: Config, on_change: Callable[[bool, str], None]) -> Leadership | None:
    ha = config.ha
    if ha is None:
        return None
    try:  # only with ha: etcd3gw is not needed otherwise
        from tierscale.coordination.etcd import EtcdLeaseStore
    except ImportError as exc:
        raise ControllerError(f"ha: needs the etcd client ({exc}): pip install 'tierscale[etcd]'") from None

    # Each call is bounded well under the renew deadline, so a dead endpoint costs a try, not the lease.
    timeout = max(0.5, min(2.0, renew_deadline(ha.lease_ttl) / (2 * len(ha.endpoints))))
    store = EtcdLeaseStore(list(ha.endpoints), timeout=timeout)
    api = ha.advertise or config.api.listen
    return Leadership(store, ha.name, api, ha.lease_ttl, ha.prefix, on_change=on_change)


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value
