"""What `tierscale hosts` and `GET /api/hosts` show, and the cordon / uncordon / drain they send.

A host is listed once however many groups place on it (the same engine URL in two groups' `hosts:`):
reachability and capacity from the providers' last listing (no I/O here: the API never waits on a
host), the replicas of every group on it, and its mark from the controller's `HostBook`.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from tierscale.controller.group import GroupController
from tierscale.controller.host_book import HostBook, HostMark, match_host
from tierscale.providers.base import Capability, HostInfo

HOST_ACTIONS: dict[str, HostMark | None] = {"cordon": "cordoned", "uncordon": None, "drain": "draining"}


_SAID = {
    "cordon": "cordoned: no new replicas",
    "uncordon": "uncordoned",
    "drain": "draining: its replicas move to other hosts one at a time",
}


class HostRow(BaseModel):
    host: str
    reachable: bool
    error: str | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    free_memory_bytes: int | None = None
    replicas: dict[str, int]  # group -> its replicas on this host
    mark: HostMark | None = None  # cordoned: no new replicas; draining: replicas moved off too


def _infos(gc: GroupController) -> list[HostInfo]:
    hosts = getattr(gc.provider, "hosts", None)
    if Capability.HOSTS not in gc.provider.capabilities or hosts is None:
        return []
    return list(hosts())


def host_rows(groups: Mapping[str, GroupController], book: HostBook) -> list[HostRow]:
    rows: dict[str, HostRow] = {}
    for name, gc in groups.items():
        for info in _infos(gc):
            row = rows.get(info.name)
            if row is None:
                row = rows[info.name] = HostRow(
                    host=info.name,
                    reachable=info.reachable,
                    error=info.error,
                    cpus=info.cpus,
                    memory_bytes=info.memory_bytes,
                    free_memory_bytes=info.free_memory_bytes,
                    replicas={},
                    mark=book.marks.get(info.name),
                )
            elif not info.reachable:  # two groups disagree: the one that could not reach it says why
                row.reachable, row.error = False, info.error
            on_host = [r for r in gc.ctx.rt.replicas.values() if r.host == info.name]
            row.replicas[name] = len(on_host)
    return [rows[h] for h in sorted(rows)]


def host_action(groups: Mapping[str, GroupController], book: HostBook, host: str, action: str) -> HostRow:
    """Cordon, uncordon or drain `host` (a full URL or its host[:port]); HostError when it names none."""
    known = [info.name for gc in groups.values() for info in _infos(gc)]
    name = match_host(host, known)
    mark = HOST_ACTIONS[action]
    book.set(name, mark)
    for gc in groups.values():
        if name in (info.name for info in _infos(gc)):
            gc.ctx.event(f"host_{action}", f"host {name} {_SAID[action]}", host=name)
            gc.ctx.wake.set()
    return next(r for r in host_rows(groups, book) if r.host == name)
