"""CPU utilization from cumulative CPU-time counters, per replica, against an allotment.

Every tier reads a counter that only grows (a process's CPU times, a cgroup's usage, QEMU's `cpu.time`,
Nova's diagnostics): utilization is the CPU time used between two readings over the wall time between
them, as a percent of the replica's allotment (100 % = the allotment fully used; it can exceed 100 when
nothing enforces the allotment).

- First sight (or a counter that went backwards: a restarted process): no interval yet. With the replica's
  lifetime known, its lifetime average is the best one-reading estimate; without it, no value (None).
- A reading sooner than `min_interval` after the kept one is mostly noise: the last value stands and the
  older reading stays the baseline, so a controller that asks twice in a row does not lose the interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuReading:
    cpu_seconds: float  # cumulative CPU time
    at: float  # time.monotonic() of the reading


class CpuRate:
    def __init__(self, min_interval: float = 0.2) -> None:
        self.min_interval = min_interval
        self._prev: dict[str, CpuReading] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def percent(
        self,
        key: str,
        cpu_seconds: float,
        allotment_milli: int,
        at: float | None = None,
        lifetime: float | None = None,
        previous: CpuReading | None = None,
    ) -> float | None:
        """Utilization of `allotment_milli` since the kept reading of `key`, in percent.

        `lifetime`: seconds the replica has run (enables the first-sight estimate); `previous`: a reading
        the tier itself kept (the Docker engine's `precpu_stats`), used when there is none of ours."""
        now = time.monotonic() if at is None else at
        reading = CpuReading(float(cpu_seconds), now)
        with self._lock:
            prev = self._prev.get(key) or previous
            if prev is not None and reading.cpu_seconds >= prev.cpu_seconds:
                dt = now - prev.at
                if dt < self.min_interval:
                    if key in self._last:
                        return self._last[key]  # too soon: the last value stands, the baseline stays
                    if key in self._prev:
                        return None
                used: float | None = (reading.cpu_seconds - prev.cpu_seconds) / max(dt, 1e-3)
            elif lifetime is not None and lifetime > 0:
                used = reading.cpu_seconds / max(1e-3, lifetime)
            else:
                used = None
            self._prev[key] = reading
            if used is None:
                self._last.pop(key, None)
                return None
            pct = max(0.0, 100.0 * used * 1000.0 / max(1, allotment_milli))
            self._last[key] = pct
            return pct

    def forget(self, key: str) -> None:
        with self._lock:
            self._prev.pop(key, None)
            self._last.pop(key, None)

    def retain(self, keys: Iterable[str]) -> None:
        """Drop the readings of every key not in `keys` (replicas that are gone)."""
        keep = set(keys)
        with self._lock:
            for k in set(self._prev) - keep:
                self._prev.pop(k, None)
                self._last.pop(k, None)

    def clear(self) -> None:
        with self._lock:
            self._prev.clear()
            self._last.clear()
