"""An in-memory balancer for tests and benchmarks: records what it was told, drains at once (or never)."""

from __future__ import annotations

from collections.abc import Sequence

from tierscale.balancer.accesslog import AccessLogReader
from tierscale.balancer.base import ApplyResult, BalancerError


class FakeBalancer:
    def __init__(self, url: str = "http://fake-balancer") -> None:
        self._url = url
        self.backends: tuple[str, ...] | None = None  # None: not running
        self.applied: list[tuple[str, ...]] = []  # every accepted change, in order
        self.reject_next: int = 0  # the next N applies are rejected (the last good set stays)
        self.fail_start: bool = False
        self.open_connections: set[str] = set()  # addresses a drain waits on until they leave this set
        self.drains: list[str] = []
        self.hold_address: str | None = None

    @property
    def url(self) -> str:
        return self._url

    def ensure_running(self, backends: Sequence[str]) -> None:
        if self.fail_start:
            raise BalancerError("fake balancer refused to start")
        if self.backends is None:
            self.backends = tuple(backends)
            self.applied.append(self.backends)

    def apply(self, backends: Sequence[str]) -> ApplyResult:
        if self.reject_next > 0:
            self.reject_next -= 1
            return ApplyResult(changed=False, ok=False, error="fake balancer rejected the change")
        new = tuple(backends)
        if new == self.backends:
            return ApplyResult(changed=False, ok=True)
        self.backends = new
        self.applied.append(new)
        return ApplyResult(changed=True, ok=True)

    def hold_at(self, address: str | None, timeout: float = 30.0) -> None:
        self.hold_address = address

    def is_running(self) -> bool:
        return self.backends is not None

    def wait_drained(self, address: str, timeout: float) -> bool:
        self.drains.append(address)
        return address not in self.open_connections

    def traffic_log(self) -> AccessLogReader | None:
        return None

    def stop(self) -> None:
        self.backends = None
