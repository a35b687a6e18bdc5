"""`tierscale down`: delete every replica a config's groups own, stop their balancers, remove their files."""

from __future__ import annotations

import contextlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tierscale.config.models import Config
from tierscale.controller.file_sd import remove_targets
from tierscale.controller.locks import ControllerError, group_dir, group_lock
from tierscale.controller.runner import make_balancer
from tierscale.eventstore import EventStore
from tierscale.providers import Provider, make_provider
from tierscale.providers.base import Capability, Replica, ReplicaGone


def _delete(provider: Provider, replica: Replica) -> None:
    with contextlib.suppress(ReplicaGone):
        provider.delete(replica, 5.0)


def down(config: Config) -> list[str]:
    """The event store stays: it is the history of what happened."""
    state_dir = Path(config.state_dir)
    store = EventStore(state_dir / "events.db") if state_dir.exists() else None
    report: list[str] = []
    try:
        for g in config.groups:
            with group_lock(state_dir, g.name):
                provider: Provider = make_provider(g, state_dir)
                balancer = make_balancer(g, state_dir)
                # The balancer is ours and local: it goes even when the tier cannot be reached, so a
                # second `down` after the tier returns has only replicas left to remove.
                if balancer is not None:
                    balancer.stop()
                replicas = provider.list()
                if Capability.COUNT in provider.capabilities:
                    # The service is the user's (Swarm's tasks): tierscale lets go of the count, no more.
                    provider.close()
                    report.append(
                        f"{g.name}: the service keeps its {len(replicas)} task(s); balancer stopped"
                    )
                    if store is not None:
                        store.clear_status(g.name)
                    shutil.rmtree(group_dir(state_dir, g.name), ignore_errors=True)
                    continue
                with ThreadPoolExecutor(max_workers=max(1, min(16, len(replicas)))) as pool:
                    list(pool.map(lambda r, p=provider: _delete(p, r), replicas))
                left = provider.list()
                unseen = left.unreachable
                provider.close()
                if left or unseen:
                    where = f" (hosts not answering: {', '.join(sorted(unseen))})" if unseen else ""
                    raise ControllerError(
                        f"group {g.name}: {len(left)} replica(s) could not be deleted{where}"
                    )
                report.append(f"{g.name}: deleted {len(replicas)} replica(s), balancer stopped")
                if store is not None:
                    store.record_event(g.name, "replica_deleted", f"down: deleted {len(replicas)} replica(s)")
                    store.clear_status(g.name)
            shutil.rmtree(group_dir(state_dir, g.name), ignore_errors=True)
            remove_targets(state_dir, g.name)
    finally:
        if store is not None:
            store.close()
    groups_root = state_dir / "groups"
    if groups_root.is_dir() and not any(groups_root.iterdir()):
        groups_root.rmdir()
    return report
