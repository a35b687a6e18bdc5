"""The one small interface every tier implements.

A provider owns create / delete / list and the tier's raw metrics. It marks what it creates (pid files,
labels, domain metadata, server metadata) so that `list` after a controller restart returns the same
replicas: state lives in the infrastructure, not in the controller's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

ReplicaState = Literal["provisioning", "running", "stopped", "failed"]


@dataclass(frozen=True)
class Replica:
    id: str  # unique within the group, e.g. "r-3f9a1c"
    group: str
    address: str | None  # "host:port" the balancer forwards to; None until known
    state: ReplicaState
    created_at: float  # wall-clock seconds (time.time())
    detail: dict[str, str] = field(default_factory=dict)  # tier-specific: pid, container id, domain name


@dataclass(frozen=True)
class ReplicaStats:
    cpu_percent: float | None  # utilization of the replica's CPU allotment, 0..100 (can exceed if unlimited)
    cpu_allotment_milli: int  # the allotment the percent refers to
    memory_bytes: int | None = None


class ProviderError(Exception):
    """A tier operation failed in a way the controller should record and retry later."""


class Provider(Protocol):
    tier: str

    def list(self) -> list[Replica]:
        """Every replica this group owns, found from the marks in the infrastructure."""
        ...

    def create(self, replica_id: str) -> Replica:
        """Start one replica; returns once the tier accepted it (it may still be booting)."""
        ...

    def delete(self, replica: Replica, grace: float) -> None:
        """Stop (SIGTERM / shutdown, then kill after `grace` seconds) and remove every trace of it."""
        ...

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        """CPU (and memory) per replica id, for all of them in one pass. Missing ids: no sample."""
        ...

    def close(self) -> None: ...
