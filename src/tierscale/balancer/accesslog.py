"""Incremental reader of the balancer's JSON access log: per-replica rps, p95 latency, errors, retries.

nginx's format and HAProxy's (balancer/haproxy.py's log-format, told apart by its `server_ip`) alike.
Timestamps are nginx's ``$msec`` or HAProxy's accept time (wall clock), so ``now`` arguments are
``time.time()`` values.
Only a bounded time window of samples is kept (the largest window ever asked for, at least
``retention``), plus a hard cap on the count so a traffic spike cannot exhaust memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tierscale.addresses import format_address

# nginx joins per-attempt values with ", " (retries to the next upstream) and " : " (internal redirects
# to another upstream group). Addresses themselves contain ":" but never " : ".
_LIST_SPLIT_RE = re.compile(r",\s*|\s+:\s+")
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class UpstreamStats:
    requests: int  # requests whose final attempt went to this upstream
    rps: float  # requests / window
    p95_ms: float | None  # this upstream's response time ($upstream_response_time) of those requests
    errors: int  # attempts at this upstream answered 5xx (or failed), including ones retried elsewhere
    retries: int  # extra attempts the requests that ended here needed before reaching it


@dataclass(frozen=True)
class TotalStats:
    rps: float
    p95_ms: float | None  # client-side latency ($request_time)
    errors: int  # responses with a 5xx status sent to clients
    requests: int


@dataclass(frozen=True, slots=True)
class _Sample:
    ts: float
    status: int
    request_ms: float | None
    upstream: str | None  # the address of the last attempt; None when nginx answered by itself
    upstream_ms: float | None
    retries: int
    failed: tuple[str, ...]  # upstreams of attempts answered 5xx, the last attempt included


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    # Nearest-rank: the smallest value with at least 95 % of the samples at or below it.
    return values[max(0, math.ceil(0.95 * len(values)) - 1)]


def _split(value: object) -> list[str]:
    if not isinstance(value, str) or not value or value == "-":
        return []
    return [v.strip() for v in _LIST_SPLIT_RE.split(value) if v.strip()]


def _seconds_to_ms(value: str | None) -> float | None:
    if value is None or value in ("", "-"):
        return None
    try:
        return float(value) * 1000.0
    except ValueError:
        return None


def _parse(line: bytes) -> _Sample | None:
    try:
        rec = json.loads(line)
        ts = float(rec["msec"])
        status = int(rec["status"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    if not math.isfinite(ts):
        return None
    if "server_ip" in rec:
        return _parse_haproxy(rec, ts, status)
    addrs = _split(rec.get("upstream_addr"))
    statuses = _split(rec.get("upstream_status"))
    times = _split(rec.get("upstream_response_time"))
    # Only "host:port" (or unix:) entries are replicas; nginx puts the upstream group's name there when
    # no server of the group was available.
    attempts = [i for i, a in enumerate(addrs) if ":" in a]
    # Only a 5xx (502 = refused/reset, 504 = timed out) is the replica's fault; a missing status is
    # usually the client giving up (499).
    failed = tuple(
        addrs[i] for i in attempts if i < len(statuses) and statuses[i].isdigit() and int(statuses[i]) >= 500
    )
    last = attempts[-1] if attempts else None
    request_time = rec.get("request_time")
    return _Sample(
        ts=ts,
        status=status,
        request_ms=_seconds_to_ms(request_time if isinstance(request_time, str) else None),
        upstream=addrs[last] if last is not None else None,
        upstream_ms=_seconds_to_ms(times[last]) if last is not None and last < len(times) else None,
        retries=max(0, len(attempts) - 1),
        failed=failed,
    )


def _ms(value: object) -> float | None:
    """HAProxy's timers: milliseconds, -1 when the phase never happened."""
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def _parse_haproxy(rec: dict[str, object], ts: float, status: int) -> _Sample | None:
    """balancer/haproxy.py's log-format: one attempt's server (the last), its timers in ms, the retry
    count (`%rc`, "+N" when redispatched to another server)."""
    ip, port = str(rec.get("server_ip") or "-"), str(rec.get("server_port") or "-")
    upstream = format_address(ip, port) if ip not in ("-", "") and port not in ("-", "", "0") else None
    try:
        retries = max(0, int(str(rec.get("retries", "0")).lstrip("+")))
    except ValueError:
        retries = 0
    return _Sample(
        ts=ts,
        status=status,
        request_ms=_ms(rec.get("request_ms")),
        upstream=upstream,
        upstream_ms=_ms(rec.get("upstream_response_ms")) if upstream else None,
        retries=retries,
        failed=(upstream,) if upstream and status >= 500 else (),
    )


class AccessLogReader:
    """Tails one access log across truncation and rename-rotation, keeping a bounded window of samples."""

    def __init__(
        self, path: str | os.PathLike[str], retention: float = 120.0, max_samples: int = 1_000_000
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self._samples: deque[_Sample] = deque(maxlen=max_samples)
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._offset = 0  # just past the last complete line consumed
        self.skipped = 0  # garbage lines seen (not JSON, missing fields)
        self.last_request_at: float | None = None  # the newest request read, however old (idle timers)

    @property
    def sample_count(self) -> int:
        """Requests currently held in memory (bounded by retention and max_samples)."""
        return len(self._samples)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._ident = None

    def __enter__(self) -> AccessLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, now: float | None = None) -> int:
        """Read every complete new line; returns how many requests were added."""
        now = time.time() if now is None else now
        added = 0
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fd is not None and (st is None or (st.st_dev, st.st_ino) != self._ident):
            # Renamed away (rotation) or replaced: finish what was written to the old file first.
            added += self._read_new(now)
            if st is not None:
                self.close()
        if self._fd is None and st is not None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return added
            fst = os.fstat(self._fd)
            self._ident = (fst.st_dev, fst.st_ino)
            self._offset = 0
        if self._fd is not None:
            if os.fstat(self._fd).st_size < self._offset:
                self._offset = 0  # truncated in place (copytruncate or "> access.log")
            added += self._read_new(now)
        self._trim(now)
        return added

    def _read_new(self, now: float) -> int:
        assert self._fd is not None
        added = 0
        cutoff = now - self.retention
        pending = b""
        while True:
            chunk = os.pread(self._fd, _READ_CHUNK, self._offset + len(pending))
            if not chunk:
                break
            data = pending + chunk
            end = data.rfind(b"\n")
            if end < 0:
                pending = data  # a line longer than one chunk, or a partial last line
                continue
            for line in data[:end].split(b"\n"):
                if not line.strip():
                    continue
                sample = _parse(line)
                if sample is None:
                    self.skipped += 1
                    continue
                if self.last_request_at is None or sample.ts > self.last_request_at:
                    self.last_request_at = sample.ts
                if sample.ts >= cutoff:
                    self._samples.append(sample)
                    added += 1
            self._offset += end + 1
            pending = data[end + 1 :]
        # A partial last line stays unread (offset not advanced) until nginx finishes writing it.
        return added

    def _trim(self, now: float) -> None:
        cutoff = now - self.retention
        samples = self._samples
        while samples and samples[0].ts < cutoff:
            samples.popleft()

    def _window(self, window: float, now: float | None) -> tuple[list[_Sample], float]:
        if window <= 0:
            raise ValueError("window must be positive")
        now = time.time() if now is None else now
        # Keep enough history for the largest window anyone asks for.
        self.retention = max(self.retention, window)
        start = now - window
        return [s for s in self._samples if start < s.ts <= now], window

    def stats(self, window: float, now: float | None = None) -> dict[str, UpstreamStats]:
        samples, window = self._window(window, now)
        requests: dict[str, int] = {}
        latencies: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        retries: dict[str, int] = {}
        for s in samples:
            for addr in s.failed:
                errors[addr] = errors.get(addr, 0) + 1
            if s.upstream is None:
                continue
            requests[s.upstream] = requests.get(s.upstream, 0) + 1
            retries[s.upstream] = retries.get(s.upstream, 0) + s.retries
            if s.upstream_ms is not None:
                latencies.setdefault(s.upstream, []).append(s.upstream_ms)
        return {
            addr: UpstreamStats(
                requests=requests.get(addr, 0),
                rps=requests.get(addr, 0) / window,
                p95_ms=_p95(latencies.get(addr, [])),
                errors=errors.get(addr, 0),
                retries=retries.get(addr, 0),
            )
            for addr in sorted(requests.keys() | errors.keys())
        }

    def first_request_to(self, addresses: set[str], after: float) -> float | None:
        """When the first request after `after` went to one of `addresses` (how soon a new replica
        gets traffic), or None if none did yet."""
        return min((s.ts for s in self._samples if s.ts > after and s.upstream in addresses), default=None)

    def totals(self, window: float, now: float | None = None) -> TotalStats:
        samples, window = self._window(window, now)
        return TotalStats(
            rps=len(samples) / window,
            p95_ms=_p95([s.request_ms for s in samples if s.request_ms is not None]),
            errors=sum(1 for s in samples if s.status >= 500),
            requests=len(samples),
        )
