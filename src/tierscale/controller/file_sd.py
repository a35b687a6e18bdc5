"""Prometheus file-based service discovery: `<state_dir>/prometheus/<group>.json`, kept current.

A user's Prometheus points a `file_sd_configs` entry at the directory and follows the group as it
scales, without an exporter or an API of ours in between (examples/prometheus/prometheus.yml). The file
is rewritten only when the target list changes, and atomically (write, then rename): Prometheus watches
it with inotify and must never read half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tierscale.controller.state import ReplicaState
from tierscale.controller.status_model import GroupStatus

# A replica that runs exposes its /metrics whether or not it passes health checks: an unhealthy one is
# exactly what a user wants to see scraped. Provisioning ones have no address yet; failed and stopped
# ones answer nothing.
SCRAPED = frozenset(
    {
        ReplicaState.STARTING,
        ReplicaState.READY,
        ReplicaState.DRAINING,
        ReplicaState.UNHEALTHY,
        ReplicaState.UNREACHABLE,
    }
)


def targets_of(status: GroupStatus, tier: str) -> list[dict[str, object]]:
    """One file_sd entry per scraped replica, sorted so that an unchanged group writes the same bytes."""
    out: list[dict[str, object]] = []
    for r in sorted(status.replicas, key=lambda r: r.id):
        if not r.address or r.state not in SCRAPED:
            continue
        labels = {
            "group": status.group,
            "tier": tier,
            "replica": r.id,
            "revision": r.revision,
            "host": r.host,
        }
        out.append({"targets": [r.address], "labels": labels})
    return out


def sd_path(state_dir: Path, group: str) -> Path:
    return state_dir / "prometheus" / f"{group}.json"


class PrometheusTargets:
    """A status listener (GroupController.status_listeners) that writes one group's file."""

    def __init__(self, state_dir: Path, group: str, tier: str) -> None:
        self.path = sd_path(state_dir, group)
        self.tier = tier
        self._written: str | None = None

    def __call__(self, _now: float, status: GroupStatus) -> None:
        body = json.dumps(targets_of(status, self.tier), indent=1) + "\n"
        if body == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(body)
        os.replace(tmp, self.path)
        self._written = body

    def remove(self) -> None:
        """The group is gone from the config: its targets go too (Prometheus drops them)."""
        self.path.unlink(missing_ok=True)
        self._written = None
