"""`ha:` (top level): several controllers on one config, one leader acting, on an etcd lease.

The lease TTL bounds failover (a standby takes over within lease_ttl + one sync period) and fencing (the
leader stops acting well before its lease can have expired), so it has a floor: under 2 s, one slow etcd
round trip would cost the leadership.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictStr

from tierscale.config.fields import Duration, StrictModel, no_control, problem

__all__ = ["HaConfig", "etcd_endpoint"]

MIN_LEASE_TTL = 2.0


def etcd_endpoint(value: str) -> str:
    """http(s)://host:port of one etcd member's client URL (its gRPC gateway serves /v3/ there)."""
    no_control(value)
    m = re.fullmatch(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?", value)
    if not m or not 1 <= int(m.group(3)) <= 65535:
        raise problem(f"expected an etcd client URL like http://127.0.0.1:2379 (got {value!r})")
    return value.rstrip("/")


def _lease_ttl(value: float) -> float:
    if value < MIN_LEASE_TTL:
        raise problem(
            f"must be at least {MIN_LEASE_TTL:g}s (got {value:g}s): one slow renew would cost the lease"
        )
    return value


def _name(value: str) -> str:
    no_control(value)
    if "/" in value or not value.strip():
        raise problem(f"a controller name is one word without '/' (got {value!r})")
    return value


def _prefix(value: str) -> str:
    no_control(value)
    if not value.startswith("/"):
        raise problem(f"an etcd key prefix starts with '/' (got {value!r})")
    return value.rstrip("/") + "/"


class HaConfig(StrictModel):
    backend: Literal["etcd"] = "etcd"
    endpoints: Annotated[list[Annotated[StrictStr, AfterValidator(etcd_endpoint)]], Field(min_length=1)]
    lease_ttl: Annotated[Duration, AfterValidator(_lease_ttl)] = 10.0
    # This controller's identity in the election: unique per controller, the hostname by default.
    name: Annotated[StrictStr, AfterValidator(_name)] = Field(default_factory=socket.gethostname)
    # Where the election lives in etcd: two fleets (two configs) can share one etcd cluster.
    prefix: Annotated[StrictStr, AfterValidator(_prefix)] = "/tierscale/"
    # The API address the other controllers and the CLI use to reach this one (default: api.listen).
    advertise: Annotated[StrictStr, AfterValidator(no_control)] | None = None
