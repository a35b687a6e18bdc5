"""The one small interface every tier implements.

A provider owns create / delete / list and the tier's raw metrics. It marks what it creates (pid records,
labels, domain metadata, server metadata) with the group, the replica id, the revision and the host, so
that `list` after a controller restart returns the same replicas: state lives in the infrastructure, not
in the controller's memory.

Optional features are named in `capabilities` (never found with `hasattr`); failures are typed
`ProviderError` subclasses (never told apart by their message); what a provider wants on the record goes
through the `EventSink` it was built with (a provider never writes to the event store itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

# What the tier says of a replica. The controller's own view (ready, draining, ...) is
# `tierscale.controller.state.ReplicaState`, derived from this plus health and drain.
TierState = Literal["provisioning", "running", "stopped", "failed"]


class Capability(StrEnum):
    """Optional provider features the controller may rely on when, and only when, they are listed."""

    CONSOLE = "console"  # console_output(replica) -> str: readiness from the boot log (health type console)
    HOSTS = "hosts"  # hosts() -> list[HostInfo], set_cordoned(names): the provider places over several hosts
    COUNT = "count"  # the tier places replicas itself (Swarm): scale_to(n), spec_count(), busy(); no create
    EXEC = "exec"  # exec_check(replica, argv, timeout) -> (exit code, output): health type exec


@dataclass(frozen=True)
class Replica:
    id: str  # unique within the group, e.g. "r-3f9a1c"
    group: str
    address: str | None  # "host:port" the balancer forwards to; None until known
    state: TierState
    created_at: float  # wall-clock seconds (time.time())
    revision: str = ""  # the template revision it was made from ("" for replicas made before revisions)
    host: str = ""  # where it runs: the engine, hypervisor or compute host, as the tier names it
    ref: str = ""  # the tier's own handle: pid, container id, domain name, server id
    # Tier-private typed data (a frozen dataclass of the provider that made it); only that provider reads it.
    tier_data: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ReplicaStats:
    cpu_percent: float | None  # utilization of the replica's CPU allotment, 0..100 (can exceed if unlimited)
    cpu_allotment_milli: int  # the allotment the percent refers to
    memory_bytes: int | None = None


@dataclass(frozen=True)
class HostInfo:
    """One host a provider places on, as `hosts()` reports it (capacity from the tier's own API)."""

    name: str  # as `Replica.host` names it: the engine URL, the libvirt URI
    reachable: bool
    cpus: float | None = None  # docker info NCPU, virNodeGetInfo cpus; None: not known
    memory_bytes: int | None = None  # docker info MemTotal, virNodeGetInfo memory
    free_memory_bytes: int | None = None  # virNodeGetFreeMemory where the tier says it; None: not known
    error: str | None = None  # why it is not reachable


class Listing(list[Replica]):
    """What `list` found. `unreachable` names hosts that could not be listed this time: replicas known
    on them are not gone, only unseen (a provider with one host raises `TierUnavailable` instead)."""

    def __init__(self, replicas: Iterable[Replica] = (), unreachable: Iterable[str] = ()) -> None:
        super().__init__(replicas)
        self.unreachable: frozenset[str] = frozenset(unreachable)


class ProviderError(Exception):
    """A tier operation failed in a way the controller should record and retry later."""


class TierUnavailable(ProviderError):
    """The tier's API (engine, libvirtd, cloud) did not answer or refused the connection."""


class ProviderTimeout(TierUnavailable):
    """A call did not return within the controller's deadline (the tier is hung, not refusing)."""


class ReplicaGone(ProviderError):
    """The replica no longer exists in the tier (a delete of it has nothing left to do)."""


class CreateRejected(ProviderError):
    """The tier refused this create: quota, no capacity, an image or flavor it does not have."""


class TemplateError(ProviderError):
    """The template cannot work on this tier as configured; retrying will not help until it changes."""


EventSink = Callable[[str, str, Mapping[str, Any]], None]  # (kind, message, data)


def no_events(kind: str, message: str, data: Mapping[str, Any]) -> None:
    """The sink of a provider built outside a controller (`down`, tests, benchmarks)."""


class Provider(Protocol):
    tier: str
    capabilities: frozenset[Capability]

    def list(self) -> Listing:
        """Every replica this group owns, found from the marks in the infrastructure."""
        ...

    def create(self, replica_id: str) -> Replica:
        """Start one replica; returns once the tier accepted it (it may still be booting)."""
        ...

    def delete(self, replica: Replica, grace: float) -> None:
        """Stop (SIGTERM / shutdown, then kill after `grace` seconds) and remove every trace of it.

        A replica that is already gone is not an error."""
        ...

    def stats(self, replicas: list[Replica]) -> dict[str, ReplicaStats]:
        """CPU (and memory) per replica id, for all of them in one pass. Missing ids: no sample."""
        ...

    def console_output(self, replica: Replica) -> str:
        """The replica's console log; only called when `Capability.CONSOLE` is listed."""
        ...

    def close(self) -> None: ...


class Execs(Protocol):
    """What a provider listing Capability.EXEC has too."""

    def exec_check(self, replica: Replica, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run `argv` in (or beside) the replica: its exit code and the end of its output."""
        ...


def retire(provider: Provider) -> None:
    """Let go of a provider that another one of the same group replaces (a rollout, a new config, one
    built for a config that was then refused): without tearing down what the group's other provider
    uses. A provider with shared group resources (libvirt: its warm pool's overlays and storage pool)
    says how with a `retire` method; for the rest closing is the same thing."""
    getattr(provider, "retire", provider.close)()


class NoConsole:
    """Mixin for tiers without a console log: the method exists, the capability is not listed."""

    def console_output(self, replica: Replica) -> str:
        raise TemplateError(f"the {getattr(self, 'tier', '?')} tier has no console log")
