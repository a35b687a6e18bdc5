"""The balancer interface the controller drives: point traffic at exactly the ready replicas, drain one.

nginx (`balancer/nginx.py`) is the implementation for users; `balancer/fake.py` is the one for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tierscale.balancer.accesslog import AccessLogReader


class BalancerError(Exception):
    """The balancer could not be started, validated or reloaded; the message is its own one-line error."""


@dataclass(frozen=True)
class ApplyResult:
    changed: bool  # the live config was replaced and the balancer now sends to the new set
    ok: bool  # False: the new set was rejected; the previous one is still in place and serving
    error: str | None = None
    old_workers: set[int] = field(default_factory=set)  # nginx: workers now finishing their requests


class Balancer(Protocol):
    @property
    def url(self) -> str:
        """Where clients send their requests."""
        ...

    def ensure_running(self, backends: Sequence[str]) -> None:
        """Start (or adopt a running) balancer serving `backends`; BalancerError if it cannot."""
        ...

    def apply(self, backends: Sequence[str]) -> ApplyResult:
        """Send traffic to exactly `backends` from now on; a rejected change keeps the last good one."""
        ...

    def is_running(self) -> bool: ...

    def hold_at(self, address: str | None, timeout: float = 30.0) -> None:
        """scale_to_zero: while no replica is ready, send requests to `address` (the controller's holding
        endpoint, which answers within `timeout`) instead of answering 503; None: stop doing so. Takes
        effect with the next `ensure_running`/`apply`."""
        ...

    def wait_drained(self, address: str, timeout: float) -> bool:
        """Block until no connection to `address` is open (True) or `timeout` passed (False)."""
        ...

    def traffic_log(self) -> AccessLogReader | None:
        """The per-request log the request-rate and latency metrics read; None if it keeps none."""
        ...

    def stop(self) -> None: ...
