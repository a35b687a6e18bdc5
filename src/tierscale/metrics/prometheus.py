"""`prometheus`: an instant PromQL query whose value is the group's total load."""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from tierscale.config.settings import MetricSpec
from tierscale.metrics.base import Observation
from tierscale.metrics.http_json import get_json
from tierscale.policy.types import MetricInput


async def prometheus_value(
    session: aiohttp.ClientSession, url: str, query: str, timeout: float
) -> tuple[float | None, str | None]:
    """(value, None), or (None, why): anything but a scalar or a one-element vector is no value."""
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    body, error = await get_json(session, url, path, timeout, "prometheus")
    if error is not None:
        return None, error
    data = body.get("data", {}) if isinstance(body, dict) else {}
    data = data if isinstance(data, dict) else {}
    result = data.get("result")
    value: float | None = None
    try:
        if data.get("resultType") == "scalar":
            value = float(result[1])
        elif data.get("resultType") == "vector" and isinstance(result, list) and len(result) == 1:
            value = float(result[0]["value"][1])
        elif data.get("resultType") == "vector" and isinstance(result, list):
            # An empty vector is what a query over series that do not exist (yet) returns: say so.
            return None, f"the query returned {len(result)} series, not 1"
    except (TypeError, ValueError, KeyError, IndexError):
        return None, "the query's answer has no number"
    # A total to divide among replicas is finite and not negative; NaN, ±Inf or -5 is a broken exporter
    # or query, and acting on it would scale the group to an extreme.
    if value is None:
        return None, f"the query returned a {data.get('resultType')!s}, not a scalar or one series"
    if not math.isfinite(value) or value < 0:
        return None, f"the query returned {value}, not a finite total >= 0"
    return value, None


async def query_prometheus(
    session: aiohttp.ClientSession, url: str, query: str, timeout: float
) -> float | None:
    value, _error = await prometheus_value(session, url, query, timeout)
    return value


@dataclass(frozen=True)
class PrometheusSource:
    spec: MetricSpec
    session: Callable[[], aiohttp.ClientSession]
    timeout: float

    async def read(self, obs: Observation) -> MetricInput:
        url, error = with_login(self.spec)
        value = None
        if error is None and self.spec.query:
            value, error = await prometheus_value(self.session(), url, self.spec.query, self.timeout)
        return external_input(self.spec, value, error)


def with_login(spec: MetricSpec) -> tuple[str, str | None]:
    """The url with the login from the environment variable `login_env` names (read at each query, so
    a rotated secret needs no restart); or an error when that variable is not set."""
    url = spec.url or ""
    if spec.login_env is None:
        return url, None
    login = os.environ.get(spec.login_env)
    if not login:
        return url, f"environment variable {spec.login_env} (login_env) is not set"
    user, sep, password = login.partition(":")
    userinfo = (
        f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
        if sep
        else f":{urllib.parse.quote(user, safe='')}"  # a bare password (Redis' requirepass)
    )
    parts = urllib.parse.urlsplit(url)
    netloc = f"{userinfo}@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), None


def external_input(spec: MetricSpec, value: float | None, error: str | None) -> MetricInput:
    """An external total as the policy takes it: HPA External metric, AverageValue target."""
    # Every external total is a signal of work for scale_to_zero: KEDA's activation defaults to 0.
    activation = spec.activation if spec.activation is not None else 0.0
    return MetricInput(spec.label, "total", spec.target, total=value, activation=activation, error=error)
