"""The small handle the API holds: read a group's status, scale, pause, resume, steer its rollout, and
hand the controller a new config — nothing else.

The API is started beside the controller (not from inside it) and never reaches into a group loop's
memory, so the loop can change without the API noticing, and the API can be tested on a fake handle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from tierscale.controller.group import GroupController
from tierscale.controller.host_book import HostBook
from tierscale.controller.host_view import HostRow, host_action, host_rows
from tierscale.controller.status_model import GroupStatus, RolloutView
from tierscale.eventstore import Event, EventStore, history_rows

if TYPE_CHECKING:
    from tierscale.config.models import Config
    from tierscale.controller.live_config import ConfigDiff


class Applier(Protocol):
    """What the handle needs of the controller (the runner), without importing it."""

    config: Config

    async def apply(self, config: Config) -> ConfigDiff: ...


StatusListener = Callable[[float, GroupStatus], None]


class GroupHandle:
    def __init__(self, gc: GroupController) -> None:
        self._gc = gc

    @property
    def name(self) -> str:
        return self._gc.s.name

    @property
    def min(self) -> int:
        return self._gc.s.min

    @property
    def max(self) -> int:
        return self._gc.s.max

    @property
    def sync_period(self) -> float:
        return self._gc.s.sync_period

    @property
    def paused(self) -> bool:
        return self._gc.paused

    def now(self) -> float:
        return self._gc.ctx.clock.now()

    def status(self) -> GroupStatus:
        return self._gc.status()

    def scale(self, replicas: int) -> None:
        self._gc.set_manual(replicas)

    def pause(self) -> None:
        self._gc.pause()

    def resume(self) -> None:
        self._gc.resume()

    def rollout(self) -> RolloutView:
        return self._gc.rollout_view()

    def rollout_action(self, action: str) -> RolloutView:
        """pause | resume | promote | undo; RolloutError when it does not apply now."""
        getattr(self._gc.rollouts, action)()
        return self._gc.rollout_view()

    def add_status_listener(self, listener: StatusListener) -> None:
        self._gc.status_listeners.append(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        if listener in self._gc.status_listeners:
            self._gc.status_listeners.remove(listener)


class ControllerHandle:
    def __init__(
        self,
        groups: Mapping[str, GroupController],
        store: EventStore,
        registry: CollectorRegistry,
        controller: Applier | None = None,
        hosts: HostBook | None = None,
    ) -> None:
        self._groups = groups  # the controller's own dict: `apply` adds and removes groups in it
        self._handles: dict[int, GroupHandle] = {}
        self._store = store
        self.registry = registry
        self._controller = controller
        self._hosts = hosts or HostBook(store)

    @property
    def groups(self) -> dict[str, GroupHandle]:
        # One handle per loop, so listeners registered through it stay with the group.
        out = {}
        for name, gc in self._groups.items():
            h = self._handles.get(id(gc))
            if h is None or h._gc is not gc:
                h = self._handles[id(gc)] = GroupHandle(gc)
            out[name] = h
        return out

    @property
    def config(self) -> Config | None:
        return self._controller.config if self._controller else None

    async def apply(self, config: Config) -> ConfigDiff:
        """ApplyError / ControllerError (a group owned by another controller) when it cannot be taken."""
        if self._controller is None:
            raise RuntimeError("this handle cannot take a new config")
        return await self._controller.apply(config)

    def events(self, group: str, since: float, limit: int, kinds: tuple[str, ...]) -> list[Event]:
        return self._store.events(group, since, limit, kinds)

    def history(self, group: str | None, since: float | None, limit: int) -> list[dict[str, Any]]:
        return history_rows(self._store, group, since, limit)

    def standby_of(self) -> tuple[str, str] | None:
        """With `ha:` on a standby: (leader name, its API address) — changes go there. None: we act."""
        ld = getattr(self._controller, "leadership", None)
        if ld is None or ld.leading:  # a leader whose acts wait for a renew takes changes: they wait too
            return None
        return (ld.leader.name, ld.leader.api) if ld.leader else ("(none yet)", "")

    def hosts(self) -> list[HostRow]:
        return host_rows(self._groups, self._hosts)

    def host_action(self, host: str, action: str) -> HostRow:
        """cordon | uncordon | drain; HostError when `host` names no host of any group."""
        return host_action(self._groups, self._hosts, host, action)
