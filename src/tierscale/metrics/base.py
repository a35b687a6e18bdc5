"""The `MetricSource` interface: turn one pass's observation into the policy's `MetricInput`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tierscale.balancer.accesslog import UpstreamStats
from tierscale.config.settings import MetricSpec
from tierscale.policy.types import MetricInput
from tierscale.providers.base import Replica, ReplicaStats


@dataclass(frozen=True)
class Traffic:
    """What the balancer's request log says over the metric window."""

    upstream: Mapping[str, UpstreamStats] = field(default_factory=dict)  # by replica address
    total_rps: float | None = None


@dataclass(frozen=True)
class Observation:
    """Everything one pass has seen, shared by every source so none of them lists or polls twice."""

    now: float
    window: float  # seconds the per-replica CPU samples cover (the sync period)
    replicas: Sequence[Replica]  # the replicas that count toward the group
    ready: frozenset[str]  # ids of those that pass their health checks
    stats: Mapping[str, ReplicaStats]
    traffic: Traffic | None  # None: the group has no balancer log


class MetricSource(Protocol):
    spec: MetricSpec

    async def read(self, obs: Observation) -> MetricInput: ...
