"""Providers: one module per tier behind the small interface in `base`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tierscale.config.revision import template_revision
from tierscale.policy.placement import Demand
from tierscale.providers.base import (
    Capability,
    CreateRejected,
    EventSink,
    HostInfo,
    Listing,
    Provider,
    ProviderError,
    ProviderTimeout,
    Replica,
    ReplicaGone,
    ReplicaStats,
    TemplateError,
    TierUnavailable,
    no_events,
)
from tierscale.providers.fleet import Fleet, HostProvider

if TYPE_CHECKING:
    from tierscale.config.models import Group

__all__ = [
    "TIER_LIBRARIES",
    "Capability",
    "CreateRejected",
    "EventSink",
    "Fleet",
    "HostInfo",
    "Listing",
    "MissingExtra",
    "Provider",
    "ProviderError",
    "ProviderTimeout",
    "Replica",
    "ReplicaGone",
    "ReplicaStats",
    "TemplateError",
    "TierUnavailable",
    "make_provider",
    "no_events",
]


class TierLibrary(NamedTuple):
    module: str  # the top-level module the tier's provider imports
    extra: str  # tierscale[EXTRA] installs it
    what: str  # what to call it in a message


# The tiers whose client library is an extra (pyproject.toml): the process tier needs none.
TIER_LIBRARIES: dict[str, TierLibrary] = {
    "docker": TierLibrary("docker", "docker", "the Docker SDK"),
    "swarm": TierLibrary("docker", "docker", "the Docker SDK"),
    "libvirt": TierLibrary("libvirt", "libvirt", "libvirt-python"),
    "openstack": TierLibrary("openstack", "openstack", "openstacksdk"),
}


class MissingExtra(ProviderError):
    """A group's tier needs a client library that is not installed: bad input for this install, not a
    runtime failure (the CLI exits 2)."""


def missing_extra(tier: str, exc: ImportError, where: str = "") -> MissingExtra:
    """The one line for `exc`, raised while importing `tier`'s provider; re-raises `exc` when it is a
    broken import of tierscale's own, which no pip install would fix."""
    lib = TIER_LIBRARIES[tier]
    if (exc.name or "").split(".")[0] == "tierscale":
        raise exc
    # A module that is simply not there needs no more words; anything else (libvirt-python built against
    # a libvirt.so that is gone, a half-installed openstacksdk) is worth quoting.
    absent = isinstance(exc, ModuleNotFoundError) and exc.name == lib.module
    detail = "" if absent else f" ({exc})"
    return MissingExtra(f"{where}tier {tier} needs {lib.what}{detail}: pip install 'tierscale[{lib.extra}]'")


def _fleet(group: Group, members: Mapping[str, HostProvider], demand: Demand) -> Fleet:
    from tierscale.config.settings import placement_params

    # A host that cannot list within one sync period (2-5 s) counts as not answering for that pass: the
    # group goes on with the others, and host_timeout runs from there. Not under 2 s: a loaded local
    # libvirtd missed a 1 s deadline in CI, and a false "unreachable" takes every replica of a live host
    # out of the balancer at once (all of them, with one hypervisor left: 503 "no ready replicas").
    list_timeout = min(5.0, max(2.0, group.sync_period))
    return Fleet(members, placement_params(group), demand, list_timeout=list_timeout)


def make_provider(group: Group, state_dir: Path, events: EventSink = no_events) -> Provider:
    """Build the provider for a validated group config; every replica it makes carries the revision of
    the group's template, and what it wants on the record goes to `events`. A tier whose client library
    is not installed raises MissingExtra."""
    revision = template_revision(group.template)
    try:
        return _make(group, state_dir, events, revision)
    except ImportError as exc:
        if group.tier not in TIER_LIBRARIES:
            raise
        raise missing_extra(group.tier, exc, f"groups[{group.name}].tier: ") from None


def _make(group: Group, state_dir: Path, events: EventSink, revision: str) -> Provider:
    # The tiers' modules are imported here, not at the top: each imports its client library (an extra) at
    # its own top, and `import tierscale.providers` must work on a host with none of them.
    from tierscale.config.models import DockerGroup, LibvirtGroup, OpenstackGroup, ProcessGroup, SwarmGroup

    if isinstance(group, ProcessGroup):
        from tierscale.providers.process import ProcessProvider

        t = group.template
        # "python3" in a template means the interpreter tierscale runs on, so the demo workload is importable
        # from a virtualenv without the user spelling out its path.
        command = [
            sys.executable if i == 0 and c in ("python3", "python") else c for i, c in enumerate(t.command)
        ]
        return ProcessProvider(
            group.name,
            state_dir,
            command,
            port_range=(t.port_range[0], t.port_range[1]),
            cpus=t.cpus,
            env=t.env,
            cwd=t.cwd,
            revision=revision,
            events=events,
        )
    if isinstance(group, DockerGroup):
        from tierscale.providers.docker import DockerProvider

        d = group.template

        def engine(url: str | None) -> DockerProvider:
            return DockerProvider(
                group.name,
                d.image,
                port=d.port,
                env=d.env,
                cpus=d.cpus,
                memory=d.memory,
                command=d.command,
                host=url,
                revision=revision,
                events=events,
            )

        if d.hosts is None:
            return engine(d.host)
        return _fleet(group, {url: engine(url) for url in d.hosts}, Demand(d.cpus, d.memory))
    if isinstance(group, SwarmGroup):
        from tierscale.providers.swarm import SwarmProvider

        return SwarmProvider(group.name, group.template, revision=revision, events=events)
    if isinstance(group, OpenstackGroup):
        from tierscale.providers.openstack import OpenstackProvider

        # Diagnostics cost one API call per server and tick: only ask for them when something uses CPU.
        uses_cpu = any(m.type == "cpu" for m in group.metrics) or group.scale_in_order == "least_loaded"
        return OpenstackProvider(
            group.name, group.template, collect_cpu=uses_cpu, revision=revision, events=events
        )
    if isinstance(group, LibvirtGroup):
        from tierscale.providers.libvirt import make_libvirt_provider

        t = group.template
        if t.uris is None:
            return make_libvirt_provider(group, revision=revision, events=events)
        members = {
            uri: make_libvirt_provider(
                group.model_copy(update={"template": t.model_copy(update={"uri": uri, "uris": None})}),
                revision=revision,
                events=events,
            )
            for uri in t.uris
        }
        # Nova counts a guest's vcpus against the host's cpus x cpu_allocation_ratio, and so do we.
        return _fleet(group, members, Demand(float(t.vcpus), t.memory))
    raise ProviderError(f"groups[{group.name}].tier: the {group.tier} tier is not implemented yet")
