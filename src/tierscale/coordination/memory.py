"""A lease store in memory, with time from a callable: the fake tier of leader election.

Leases expire exactly `ttl` seconds after their last grant or keepalive on the given clock, and `cut()`
makes every call fail as an unreachable etcd does, so the election's fencing can be tested to the second.
One instance is shared by the "controllers" of a test, as one etcd cluster is.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from tierscale.coordination.base import StoreUnavailable


class MemoryLeaseStore:
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._leases: dict[int, tuple[float, int]] = {}  # id -> (expiry, ttl)
        self._keys: dict[str, tuple[str, int | None]] = {}
        self.reachable = True
        self.calls = 0

    def cut(self) -> None:
        self.reachable = False

    def restore(self) -> None:
        self.reachable = True

    def _enter(self) -> None:
        if not self.reachable:
            raise StoreUnavailable("memory store cut")
        self.calls += 1
        now = self._now()
        for lease, (expiry, _) in list(self._leases.items()):
            if expiry <= now:
                del self._leases[lease]
                self._keys = {k: v for k, v in self._keys.items() if v[1] != lease}

    def grant(self, ttl: int) -> int:
        with self._lock:
            self._enter()
            lease = next(self._ids)
            self._leases[lease] = (self._now() + ttl, ttl)
            return lease

    def keepalive(self, lease: int) -> float:
        with self._lock:
            self._enter()
            if lease not in self._leases:
                return -1.0
            ttl = self._leases[lease][1]
            self._leases[lease] = (self._now() + ttl, ttl)
            return float(ttl)

    def revoke(self, lease: int) -> None:
        with self._lock:
            self._enter()
            self._leases.pop(lease, None)
            self._keys = {k: v for k, v in self._keys.items() if v[1] != lease}

    def create(self, key: str, value: str, lease: int) -> bool:
        with self._lock:
            self._enter()
            if key in self._keys or lease not in self._leases:
                return False
            self._keys[key] = (value, lease)
            return True

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        with self._lock:
            self._enter()
            self._keys[key] = (value, lease)

    def get(self, key: str) -> str | None:
        with self._lock:
            self._enter()
            held = self._keys.get(key)
            return held[0] if held else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        with self._lock:
            self._enter()
            return {k: v for k, (v, _) in sorted(self._keys.items()) if k.startswith(prefix)}

    def delete_if(self, key: str, value: str) -> bool:
        with self._lock:
            self._enter()
            held = self._keys.get(key)
            if held is None or held[0] != value:
                return False
            del self._keys[key]
            return True

    def close(self) -> None:
        pass
