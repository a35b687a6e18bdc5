"""Build the group loops from a config and run them until a signal; also `down`.

State directory layout (everything tierscale writes):
    <state_dir>/events.db                       decisions, events, last status per group
    <state_dir>/groups/<group>/controller.lock  one controller per group (flock)
    <state_dir>/groups/<group>/replicas/        process tier pid files
    <state_dir>/groups/<group>/nginx/           the group's own nginx prefix
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tierscale.balancer.nginx import NginxBalancer
from tierscale.config.to_policy import hpa_params, predictive_params, schedule_entries, threshold_params
from tierscale.controller.clock import Clock, WallClock
from tierscale.controller.group import GroupController, GroupSettings
from tierscale.controller.observe import MetricSpec
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.private_dirs import make_private_dir
from tierscale.providers import Provider, make_provider

log = logging.getLogger("tierscale.controller")


class ControllerError(Exception):
    """A condition that stops `run` or `down` with a one-line message (exit 1)."""


def group_dir(state_dir: Path, group: str) -> Path:
    return Path(state_dir) / "groups" / group


def settings_for(group: Any) -> GroupSettings:
    h = group.health
    return GroupSettings(
        name=group.name,
        tier=group.tier,
        min=group.min,
        max=group.max,
        sync_period=group.sync_period,
        health_path=h.path,
        health_interval=h.interval,
        health_timeout=h.timeout,
        healthy_after=h.healthy_after,
        unhealthy_after=h.unhealthy_after,
        startup_grace=h.startup_grace,
        health_type=h.type,
        console_marker=h.console_marker,
        policy=group.policy,
        metrics=tuple(
            MetricSpec(
                type=m.type,
                target=float(m.target if m.type != "prometheus" else m.target_per_replica),
                url=getattr(m, "url", None),
                query=getattr(m, "query", None),
            )
            for m in group.metrics
        ),
        hpa=hpa_params(group),
        threshold=threshold_params(group),
        forecast=predictive_params(group),
        schedule=schedule_entries(group),
        scale_in_order=group.scale_in_order,
        drain_timeout=group.drain_timeout,
        # Balancer metrics are averaged over a few sync periods: long enough to be stable, short enough
        # that a load step shows within seconds.
        metric_window=min(30.0, max(5.0, 3 * group.sync_period)),
    )


def make_balancer(group: Any, state_dir: Path) -> NginxBalancer | None:
    if group.balancer.type != "nginx":
        return None
    return NginxBalancer(
        group.name,
        group.balancer.listen,
        group.balancer.algorithm,
        group_dir(state_dir, group.name) / "nginx",
    )


@contextlib.contextmanager
def group_lock(state_dir: Path, group: str) -> Iterator[None]:
    """One controller per group: a second `run` (or a `down` during a run) refuses with a clear message."""
    d = group_dir(state_dir, group)
    make_private_dir(d)
    path = d / "controller.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ControllerError(
                f"group {group} is already managed by another tierscale process (pid {holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class Controller:
    """All groups of one config, each an independent loop in one event loop."""

    def __init__(
        self,
        config: Any,
        dry_run: bool = False,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
        api: str = "optional",
        api_token: str | None = None,
    ) -> None:
        # api: "required" (`run`: a clash on an explicit api.listen stops it), "optional" (logged, the
        # loops run on: tests, demo), or "off" (no HTTP server at all: benchmarks of what it costs).
        self.api_mode = api
        self.api: Any = None  # the running tierscale.api.ApiServer, if any
        self.api_token = api_token  # None: read from api.token_env when the server starts
        self.config = config
        self.state_dir = Path(config.state_dir)
        make_private_dir(self.state_dir)
        self.store = EventStore(self.state_dir / "events.db")
        self.clock = clock or WallClock()
        self.telemetry = telemetry or Telemetry()
        self.dry_run = dry_run
        self.groups: dict[str, GroupController] = {}
        for g in config.groups:
            provider = make_provider(g, self.state_dir)
            self.groups[g.name] = GroupController(
                settings_for(g),
                provider,
                make_balancer(g, self.state_dir),
                self.store,
                self.clock,
                self.telemetry,
                dry_run=dry_run,
            )
            self.telemetry.init_group(g.name, g.tier)

    async def _start_api(self) -> None:
        if self.api_mode == "off":
            return
        from tierscale.api import ApiServer, ApiStartError

        server = ApiServer(self, token=self.api_token)
        try:
            await server.start()
        except ApiStartError as exc:
            # A listen address the user wrote down must work; the default one is best effort, so that a
            # second controller on the same host (another config) still scales, saying why it has no API.
            explicit = "api" in self.config.model_fields_set and "listen" in self.config.api.model_fields_set
            if self.api_mode == "required" and explicit:
                raise ControllerError(f"{exc} (another tierscale run?)") from None
            log.error("%s: running without the API and dashboard (set api.listen to a free port)", exc)
            return
        self.api = server

    async def run(self, stop: asyncio.Event) -> None:
        with contextlib.ExitStack() as locks:
            for name in self.groups:
                locks.enter_context(group_lock(self.state_dir, name))
            await self._start_api()
            for name in self.groups:
                self.store.record_event(name, "controller_started", f"controller started (pid {os.getpid()})")
            tasks = [
                asyncio.create_task(gc.run(stop), name=f"group-{name}") for name, gc in self.groups.items()
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                if self.api is not None:
                    await self.api.stop()
                    self.api = None
                for name in self.groups:
                    self.store.record_event(
                        name, "controller_stopped", "controller stopped; replicas keep running"
                    )

    async def run_once(self) -> None:
        with contextlib.ExitStack() as locks:
            for name in self.groups:
                locks.enter_context(group_lock(self.state_dir, name))
            for gc in self.groups.values():
                await gc.start()
                await gc.reconcile()
                # Creates and drains started by this pass finish before we exit, so nothing is half-made.
                await gc.shutdown()
                await gc.balance()

    def close(self) -> None:
        for gc in self.groups.values():
            gc.provider.close()
        self.store.close()


def run_controller(config: Any, dry_run: bool = False, once: bool = False) -> int:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Provider calls (docker, libvirt, openstack SDKs) block; a roomy pool keeps groups independent.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="tierscale"))
    # Taken out of the environment before anything is started: replicas of the process tier and nginx
    # inherit the controller's environment, and a workload that prints its own must not show the token.
    token = os.environ.pop(config.api.token_env, None)
    controller = Controller(config, dry_run=dry_run, api="required", api_token=token)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if once:
            loop.run_until_complete(controller.run_once())
        else:
            loop.run_until_complete(controller.run(stop))
    finally:
        controller.close()
        loop.close()
    return 0


def down(config: Any) -> list[str]:
    """Delete every replica the config's groups own, stop their balancers, remove their files.

    The event store stays: it is the history of what happened.
    """
    state_dir = Path(config.state_dir)
    store = EventStore(state_dir / "events.db") if state_dir.exists() else None
    report: list[str] = []
    try:
        for g in config.groups:
            with group_lock(state_dir, g.name):
                provider: Provider = make_provider(g, state_dir)
                balancer = make_balancer(g, state_dir)
                # The balancer is ours and local: it goes even when the tier cannot be reached, so a
                # second `down` after the tier returns has only replicas left to remove.
                if balancer is not None:
                    balancer.stop()
                replicas = provider.list()
                with ThreadPoolExecutor(max_workers=max(1, min(16, len(replicas)))) as pool:
                    list(pool.map(lambda r, p=provider: p.delete(r, 5.0), replicas))
                left = provider.list()
                provider.close()
                if left:
                    raise ControllerError(f"group {g.name}: {len(left)} replica(s) could not be deleted")
                report.append(f"{g.name}: deleted {len(replicas)} replica(s), balancer stopped")
                if store is not None:
                    store.record_event(g.name, "replica_deleted", f"down: deleted {len(replicas)} replica(s)")
                    store.clear_status(g.name)
            shutil.rmtree(group_dir(state_dir, g.name), ignore_errors=True)
    finally:
        if store is not None:
            store.close()
    groups_root = state_dir / "groups"
    if groups_root.is_dir() and not any(groups_root.iterdir()):
        groups_root.rmdir()
    return report
