"""`prometheus`: an instant PromQL query whose value is the group's total load."""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from tierscale.config.settings import MetricSpec
from tierscale.metrics.base import Observation
from tierscale.policy.types import MetricInput


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


@dataclass(frozen=True)
class PrometheusSource:
    spec: MetricSpec
    session: Callable[[], aiohttp.ClientSession]
    timeout: float

    async def read(self, obs: Observation) -> MetricInput:
        value = None
        if self.spec.url and self.spec.query:
            value = await query_prometheus(self.session(), self.spec.url, self.spec.query, self.timeout)
        return MetricInput("prometheus", "total", self.spec.target, total=value)
