"""Prometheus file-based service discovery: `<state_dir>/prometheus/<group>.json`, kept current.

A user's Prometheus points a `file_sd_configs` entry at the directory and follows the group as it
scales, without an exporter or an API of ours in between (examples/prometheus/prometheus.yml). The file
is rewritten only when the target list changes, and atomically (write, then rename): Prometheus watches
it with inotify and must never read half a file. Unlike the rest of the state these files are meant for
another reader (Debian's Prometheus runs as `prometheus`) and hold only addresses and labels: 0644 in a
0755 directory, whatever the umask; the state_dir's own mode (0700) decides who reaches them
(examples/prometheus/README.md).
"""

from __future__ import annotations

import contextlib
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


READABLE_DIR, READABLE_FILE = 0o755, 0o644


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
        self.state_dir = state_dir
        self.group = group
        self.path = sd_path(state_dir, group)
        self.tier = tier
        self._written: str | None = None

    def __call__(self, _now: float, status: GroupStatus) -> None:
        body = json.dumps(targets_of(status, self.tier), indent=1) + "\n"
        if body == self._written:
            return
        if not self.path.parent.is_dir():
            self.path.parent.mkdir()
            os.chmod(self.path.parent, READABLE_DIR)
        tmp = self.path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, READABLE_FILE)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), READABLE_FILE)  # the umask does not decide who may scrape
            f.write(body)
        os.replace(tmp, self.path)
        self._written = body

    def remove(self) -> None:
        """The group is gone from the config: its targets go too (Prometheus drops them)."""
        remove_targets(self.state_dir, self.group)
        self._written = None


def remove_targets(state_dir: Path, group: str) -> None:
    """Delete a group's file, and the directory once no group has one (`tierscale down` leaves only the
    event store behind)."""
    path = sd_path(state_dir, group)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # absent, or another group's file is still there
        path.parent.rmdir()
