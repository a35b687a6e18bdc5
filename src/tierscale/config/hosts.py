"""Config for groups over several hosts: host lists, placement, and the Swarm tier's template.

A Docker template names its engines with `hosts: [URL, ...]` and a libvirt one its hypervisors with
`uris: [URI, ...]`; the single `host` / `uri` keys stay as the one-element case. `placement:` says how
new replicas are spread over them, with Nova's scheduler defaults for the capacity rule.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StrictStr

from tierscale.config.fields import (
    NonEmptyStr,
    Port,
    PositiveFloat,
    PositiveInt,
    Size,
    StrictModel,
    no_control,
    problem,
)

__all__ = ["DockerUrl", "PlacementConfig", "SwarmTemplate", "check_host_list", "docker_url"]


def docker_url(value: str) -> str:
    """A DOCKER_HOST-style URL the Docker SDK can connect to: unix:///path, tcp://host:port, ssh://[user@]host."""
    no_control(value)
    m = re.match(r"^(unix|tcp|ssh)://(.+)$", value)
    if not m:
        raise problem(f"expected a DOCKER_HOST URL: unix://, tcp:// or ssh:// (got {value!r})")
    scheme, rest = m.groups()
    if scheme == "unix":
        if not rest.startswith("/"):
            raise problem(
                f"a unix:// URL needs an absolute socket path like unix:///run/docker.sock (got {value!r})"
            )
        return value
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError for a port that is not a number
    except ValueError:
        raise problem(f"cannot parse the host and port of {value!r}") from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise problem(f"expected {scheme}://HOST[:PORT] (got {value!r})")
    if scheme == "tcp" and port is None:
        raise problem(f"a tcp:// URL needs a port, like tcp://10.0.0.5:2376 (got {value!r})")
    if parts.password:
        raise problem("must not carry a password: ssh:// engines authenticate with keys (ssh-agent)")
    return value


DockerUrl = Annotated[StrictStr, AfterValidator(docker_url)]


def check_host_list(values: list[str], what: str) -> list[str]:
    """A host list: at least one entry, no entry twice (the same engine twice would double its share)."""
    if not values:
        raise problem(f"needs at least one {what}")
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        key = v.rstrip("/")
        if key in seen:
            raise problem(f"duplicate {what} {v!r} (also [{seen[key]}])", i)
        seen[key] = i
    return values


class PlacementConfig(StrictModel):
    """Where a new replica goes when the group has several hosts (Nova's filters, then a weigher)."""

    # spread: the host with the fewest of the group's replicas (then the most free memory, as Nova's
    # RAMWeigher with a positive multiplier); binpack: the fullest host that still fits one more.
    strategy: Literal["spread", "binpack"] = "spread"
    max_per_host: PositiveInt | None = None
    # Capacity filter, Nova's defaults: a host takes one more replica while the group's allocations on it
    # stay within memory x ram_allocation_ratio - reserved_host_memory and cpus x cpu_allocation_ratio.
    ram_allocation_ratio: PositiveFloat = 1.5
    cpu_allocation_ratio: PositiveFloat = 16.0
    reserved_host_memory: Size = 512 * 1024**2


class SwarmTemplate(StrictModel):
    """tier: swarm — a replicated service the user created; tierscale sets its count, Swarm places."""

    service: Annotated[NonEmptyStr, AfterValidator(no_control)]
    manager: DockerUrl | None = None  # a manager's engine; None: DOCKER_HOST or the local socket
    # The nodes' own engines, for CPU per task; without them scale on the balancer's metrics.
    nodes: Annotated[list[DockerUrl], Field(default_factory=list)]
    port: Port = 8080  # the task port whose host-mode published port the balancer targets
