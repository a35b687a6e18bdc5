"""Cordons and drains of hosts, one book for the whole controller (a host can carry several groups).

The marks are kept in the event store, not only in memory, so a restarted controller keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

from tierscale.eventstore import EventStore

HostMark = Literal["cordoned", "draining"]
_BOOK_GROUP, _BOOK_KEY = "*", "hosts"  # the event store's state rows are per group; hosts span groups


class HostError(ValueError):
    """A cordon / drain named a host that no group places on, or one that several names match."""


class HostBook:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        saved = store.get_state(_BOOK_GROUP, _BOOK_KEY) or {}
        marks = saved.get("hosts") if isinstance(saved.get("hosts"), dict) else {}
        self.marks: dict[str, HostMark] = {h: m for h, m in marks.items() if m in ("cordoned", "draining")}

    def closed(self) -> frozenset[str]:
        """Hosts that take no new replica."""
        return frozenset(self.marks)

    def draining(self) -> frozenset[str]:
        return frozenset(h for h, m in self.marks.items() if m == "draining")

    def replace(self, marks: dict[str, str]) -> None:
        """All marks at once (ha: the leader's, as it published them); written only when they differ."""
        clean: dict[str, HostMark] = {}
        for h, m in marks.items():
            if m == "cordoned" or m == "draining":
                clean[str(h)] = m
        if clean != self.marks:
            self.marks = clean
            self.store.put_state(_BOOK_GROUP, _BOOK_KEY, {"hosts": dict(self.marks)})

    def set(self, host: str, mark: HostMark | None) -> None:
        if mark is None:
            self.marks.pop(host, None)
        else:
            self.marks[host] = mark
        self.store.put_state(_BOOK_GROUP, _BOOK_KEY, {"hosts": dict(self.marks)})


def match_host(name: str, known: Iterable[str]) -> str:
    """The host `name` means: itself, or the one host whose URL has that host[:port] part."""
    hosts = sorted(set(known))
    if name in hosts:
        return name
    short = [h for h in hosts if name in (_netloc(h), urlsplit(h).hostname)]
    if len(short) == 1:
        return short[0]
    if short:
        raise HostError(f"host {name!r} matches several hosts ({', '.join(short)}): give the full URL")
    listed = ", ".join(hosts) or "none"
    raise HostError(f"no group places replicas on host {name!r} (hosts: {listed})")


def _netloc(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1] if parts.netloc else url
