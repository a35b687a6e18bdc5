"""The pieces of one group loop that its observer, reconciler, prober and balancer sync all share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tierscale.balancer.base import Balancer
from tierscale.balancer.holder import Holder
from tierscale.config.settings import GroupSettings
from tierscale.controller.clock import Clock
from tierscale.controller.health import HealthTracker
from tierscale.controller.host_book import HostBook
from tierscale.controller.state import GroupRuntime, ReplicaState, replica_state
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.providers.base import Provider, ProviderTimeout, Replica, retire

log = logging.getLogger("tierscale.controller")
T = TypeVar("T")


@dataclass
class GroupContext:
    s: GroupSettings
    provider: Provider
    balancer: Balancer | None
    store: EventStore
    clock: Clock
    tm: Telemetry
    dry_run: bool = False
    rt: GroupRuntime = field(default_factory=GroupRuntime)
    health: HealthTracker = field(init=False)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a pass should run now
    probe_soon: asyncio.Event = field(default_factory=asyncio.Event)  # a health round should run now
    holder: Holder | None = None  # scale_to_zero: where requests wait while no replica is ready
    hosts: HostBook | None = None  # cordons and drains, shared by every group of the controller
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # ha: whether this controller may act now (checked right before every create and delete), and
    # whether every other controller's balancer has let a draining replica go.
    may_act: Callable[[], bool] = lambda: True
    drained_everywhere: Callable[[str], bool] = lambda replica: True
    # ha: our balancer's traffic out to the other controllers, and theirs in (wire form: peer_traffic.py).
    share_traffic: Callable[[dict[str, Any]], None] = lambda body: None
    peer_traffic: Callable[[], list[Any]] = lambda: []

    def __post_init__(self) -> None:
        s = self.s
        self.health = HealthTracker(s.healthy_after, s.unhealthy_after, s.startup_grace)

    # ---- recording
    def event(self, kind: str, message: str, replica: str | None = None, **data: Any) -> None:
        self.store.record_event(self.s.name, kind, message, replica, data or None, ts=self.clock.now())
        # The fields ride along for `--log-format json`; the human format shows only the message.
        extra = {"group": self.s.name, "event": kind, "replica": replica, "data": data or None}
        log.info("%s: %s", self.s.name, message, extra=extra)

    def provider_event(self, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """The provider's `EventSink`: what a tier wants on the record (a fallback, a boot it saw)."""
        self.event(kind, message, None, **dict(data))

    # ---- running things
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """A blocking provider/balancer call in a thread; with `timeout`, a hung tier cannot stall the tick.

        (The thread itself cannot be killed; it finishes in the background and its result is dropped.)
        """
        if timeout is None:
            return await asyncio.to_thread(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
        except TimeoutError:
            name = getattr(fn, "__name__", "call")
            raise ProviderTimeout(f"{self.s.tier} {name} did not answer within {timeout:g}s") from None

    @property
    def observe_timeout(self) -> float:
        return max(10.0, 2 * self.s.sync_period)

    def swap_provider(self, provider: Provider) -> None:
        """Use `provider` from now on; the old one is retired once what it started has finished (a libvirt
        provider stops its warm pool; the new one replaces the pool's members with the new revision)."""
        old, self.provider = self.provider, provider
        pending = [t for t in self.tasks if not t.done()]

        async def close_later() -> None:
            if pending:
                await asyncio.wait(pending)
            await asyncio.to_thread(retire, old)

        if old is not provider:
            self.spawn(close_later())

    # ---- views of the replicas
    def active(self) -> list[Replica]:
        """Replicas that count toward the group: not leaving, not failed, not condemned. One on a host
        that does not answer counts as it was last seen until the host is lost (host_timeout)."""
        rt = self.rt
        out = []
        for r in rt.replicas.values():
            if r.id in rt.draining or r.host in rt.lost_hosts:
                continue
            if r.host in rt.unreachable_hosts or (r.state != "failed" and not self.health.is_unhealthy(r.id)):
                out.append(r)
        return out

    def reachable(self, r: Replica) -> bool:
        return r.host not in self.rt.unreachable_hosts

    def ready_backends(self) -> tuple[str, ...]:
        # A replica on a host that does not answer leaves the balancer at once, long before it is replaced.
        return tuple(
            sorted(
                r.address
                for r in self.active()
                if r.address and self.health.is_ready(r.id) and self.reachable(r)
            )
        )

    def serving(self) -> frozenset[str] | None:
        """Addresses that really get traffic (what the balancer was last told); None without a balancer."""
        if self.balancer is None or self.dry_run:
            return None
        return frozenset(self.rt.backends or ())

    def state_of(self, r: Replica) -> ReplicaState:
        return replica_state(r, self.health, r.id in self.rt.draining, self.serving(), not self.reachable(r))
