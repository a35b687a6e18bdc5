"""Providers: one module per tier behind the small interface in `base`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tierscale.providers.base import Provider, ProviderError, Replica, ReplicaStats

__all__ = ["Provider", "ProviderError", "Replica", "ReplicaStats", "make_provider"]


def make_provider(group: Any, state_dir: Path) -> Provider:
    """Build the provider for a validated group config."""
    t = group.template
    if group.tier == "process":
        from tierscale.providers.process import ProcessProvider

        # "python3" in a template means the interpreter tierscale runs on, so the demo workload is importable
        # from a virtualenv without the user spelling out its path.
        command = [
            sys.executable if i == 0 and c in ("python3", "python") else c for i, c in enumerate(t.command)
        ]
        return ProcessProvider(
            group.name,
            state_dir,
            command,
            port_range=tuple(t.port_range),  # type: ignore[arg-type]
            cpus=t.cpus,
            env=t.env,
            cwd=t.cwd,
        )
    if group.tier == "docker":
        from tierscale.providers.docker import DockerProvider

        return DockerProvider(
            group.name,
            t.image,
            port=t.port,
            env=t.env,
            cpus=t.cpus,
            memory=t.memory,
            command=t.command,
            host=t.host,
        )
    if group.tier == "openstack":
        from tierscale.providers.openstack import OpenstackProvider

        # Diagnostics cost one API call per server and tick: only ask for them when something uses CPU.
        uses_cpu = any(m.type == "cpu" for m in group.metrics) or group.scale_in_order == "least_loaded"
        return OpenstackProvider(group.name, t, collect_cpu=uses_cpu)
    if group.tier == "libvirt":
        try:
            from tierscale.providers.libvirt import make_libvirt_provider
        except ImportError as exc:  # libvirt-python is an extra: it needs libvirt's C library to build
            raise ProviderError(
                f"groups[{group.name}].tier: libvirt needs libvirt-python ({exc}): "
                "pip install 'tierscale[libvirt]'"
            ) from None
        return make_libvirt_provider(group, state_dir)
    raise ProviderError(f"groups[{group.name}].tier: the {group.tier} tier is not implemented yet")
