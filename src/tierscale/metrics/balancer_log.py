"""`requests_per_replica` and `latency_p95_ms`: read from the balancer's request log."""

from __future__ import annotations

from dataclasses import dataclass

from tierscale.config.settings import MetricSpec
from tierscale.metrics.base import Observation
from tierscale.policy.types import MetricInput


@dataclass(frozen=True)
class RequestRateSource:
    spec: MetricSpec

    async def read(self, obs: Observation) -> MetricInput:
        # Requests are measured at the balancer for the whole group; the average over ready replicas
        # times their count is the total, so the HPA External/AverageValue form is exact here.
        total = obs.traffic.total_rps if obs.traffic is not None else None
        return MetricInput("requests_per_replica", "total", self.spec.target, total=total)


@dataclass(frozen=True)
class LatencySource:
    spec: MetricSpec

    async def read(self, obs: Observation) -> MetricInput:
        per: dict[str, float | None] = {}
        upstream = obs.traffic.upstream if obs.traffic is not None else {}
        for r in obs.replicas:
            u = upstream.get(r.address or "")
            if r.id in obs.ready and u is not None and u.p95_ms is not None:
                per[r.id] = u.p95_ms
        return MetricInput("latency_p95_ms", "per_replica", self.spec.target, per)
