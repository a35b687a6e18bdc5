"""The small handle the API holds: read a group's status, scale, pause, resume — nothing else.

The API is started beside the controller (not from inside it) and never reaches into a group loop's
memory, so the loop can change without the API noticing, and the API can be tested on a fake handle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from tierscale.controller.group import GroupController
from tierscale.controller.status_model import GroupStatus
from tierscale.eventstore import Event, EventStore, history_rows

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

    def add_status_listener(self, listener: StatusListener) -> None:
        self._gc.status_listeners.append(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        if listener in self._gc.status_listeners:
            self._gc.status_listeners.remove(listener)


class ControllerHandle:
    def __init__(
        self, groups: Mapping[str, GroupController], store: EventStore, registry: CollectorRegistry
    ) -> None:
        self.groups: dict[str, GroupHandle] = {name: GroupHandle(gc) for name, gc in groups.items()}
        self._store = store
        self.registry = registry

    def events(self, group: str, since: float, limit: int, kinds: tuple[str, ...]) -> list[Event]:
        return self._store.events(group, since, limit, kinds)

    def history(self, group: str | None, since: float | None, limit: int) -> list[dict[str, Any]]:
        return history_rows(self._store, group, since, limit)
