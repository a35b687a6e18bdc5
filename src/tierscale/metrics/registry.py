"""Metric sources by `type`: adding a metric is one class and one entry here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from tierscale.config.settings import MetricSpec
from tierscale.metrics.balancer_log import LatencySource, RequestRateSource
from tierscale.metrics.base import MetricSource
from tierscale.metrics.cpu import CpuSource
from tierscale.metrics.prometheus import PrometheusSource
from tierscale.metrics.queues import RabbitmqSource, RedisSource


@dataclass(frozen=True)
class SourceDeps:
    """What sources may need from the controller: its HTTP session and the query timeout."""

    session: Callable[[], aiohttp.ClientSession]
    timeout: float = 2.0


SOURCES: dict[str, Callable[[MetricSpec, SourceDeps], MetricSource]] = {
    "cpu": lambda spec, _deps: CpuSource(spec),
    "requests_per_replica": lambda spec, _deps: RequestRateSource(spec),
    "latency_p95_ms": lambda spec, _deps: LatencySource(spec),
    "prometheus": lambda spec, deps: PrometheusSource(spec, deps.session, deps.timeout),
    "redis": lambda spec, deps: RedisSource(spec, deps.timeout),
    "rabbitmq": lambda spec, deps: RabbitmqSource(spec, deps.session, deps.timeout),
}


def make_sources(specs: Iterable[MetricSpec], deps: SourceDeps) -> tuple[MetricSource, ...]:
    out = []
    for spec in specs:
        factory = SOURCES.get(spec.type)
        if factory is None:  # config validation lists the same types; this is a programming error
            raise ValueError(f"no metric source for type {spec.type!r}")
        out.append(factory(spec, deps))
    return tuple(out)
