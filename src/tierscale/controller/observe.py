"""Turn what was observed (replicas, health, provider stats, balancer log) into the policy's snapshot."""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from tierscale.balancer.accesslog import UpstreamStats
from tierscale.controller.health import HealthTracker
from tierscale.policy.types import MetricInput, ReplicaStatus
from tierscale.providers.base import Replica, ReplicaStats


@dataclass(frozen=True)
class MetricSpec:
    type: str
    target: float
    url: str | None = None
    query: str | None = None


def replica_status(
    r: Replica, health: HealthTracker, draining: bool, stats: Mapping[str, ReplicaStats]
) -> ReplicaStatus:
    """Map a replica onto the HPA's pod model: provisioning = Pending, leaving = deleted."""
    st = health.states.get(r.id)
    allot = stats[r.id].cpu_allotment_milli if r.id in stats else 1000
    if draining:
        phase = "deleted"
    elif r.state == "failed" or health.is_unhealthy(r.id):
        phase = "failed"
    elif r.state == "provisioning" or r.address is None:
        phase = "pending"
    else:
        phase = "running"
    ready = bool(st.ready) if st else False
    return ReplicaStatus(
        id=r.id,
        phase=phase,  # type: ignore[arg-type]
        ready=ready,
        ready_changed_at=st.ready_changed_at if st and st.ready_changed_at is not None else r.created_at,
        started_at=r.created_at,
        cpu_allotment_milli=allot,
    )


def metric_inputs(
    specs: Iterable[MetricSpec],
    replicas: Iterable[Replica],
    health: HealthTracker,
    stats: Mapping[str, ReplicaStats],
    upstream: Mapping[str, UpstreamStats],
    total_rps: float | None,
    prometheus_values: Mapping[str, float | None],
    now: float,
    window: float,
) -> tuple[MetricInput, ...]:
    reps = list(replicas)
    out: list[MetricInput] = []
    for spec in specs:
        if spec.type == "cpu":
            per = {
                r.id: stats[r.id].cpu_percent * stats[r.id].cpu_allotment_milli / 100.0
                for r in reps
                if r.id in stats and stats[r.id].cpu_percent is not None  # type: ignore[operator]
            }
            out.append(
                MetricInput("cpu", "resource", spec.target, per, sample_time=now, sample_window=window)
            )
        elif spec.type == "requests_per_replica":
            # Requests are measured at the balancer for the whole group; the average over ready replicas
            # times their count is the total, so the HPA External/AverageValue form is exact here.
            out.append(MetricInput("requests_per_replica", "total", spec.target, total=total_rps))
        elif spec.type == "latency_p95_ms":
            per_lat: dict[str, float | None] = {}
            for r in reps:
                u = upstream.get(r.address or "")
                if health.is_ready(r.id) and u is not None and u.p95_ms is not None:
                    per_lat[r.id] = u.p95_ms
            out.append(MetricInput("latency_p95_ms", "per_replica", spec.target, per_lat))
        elif spec.type == "prometheus":
            key = f"{spec.url}|{spec.query}"
            out.append(MetricInput("prometheus", "total", spec.target, total=prometheus_values.get(key)))
    return tuple(out)


async def query_prometheus(
    session: aiohttp.ClientSession, url: str, query: str, timeout: float
) -> float | None:
    """Instant query; anything but a scalar or a one-element vector makes the metric invalid."""
    full = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        async with session.get(full, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            body = json.loads(await resp.text())
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    data = body.get("data", {}) if isinstance(body, dict) else {}
    data = data if isinstance(data, dict) else {}
    result = data.get("result")
    value: float | None = None
    try:
        if data.get("resultType") == "scalar":
            value = float(result[1])
        elif data.get("resultType") == "vector" and isinstance(result, list) and len(result) == 1:
            value = float(result[0]["value"][1])
    except (TypeError, ValueError, KeyError, IndexError):
        return None
    # A total to divide among replicas is finite and not negative; NaN, ±Inf or -5 is a broken exporter
    # or query, and acting on it would scale the group to an extreme.
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value
