"""The SQLite event store: what the controller writes is what status/events read back."""

from __future__ import annotations

import stat
from pathlib import Path

from tierscale.eventstore import EventStore
from tierscale.policy.types import Decision, MetricProposal


def _decision(now: float, current: int, desired: int) -> Decision:
    return Decision(
        "hpa",
        now,
        current,
        desired,
        (MetricProposal("cpu", 50, 90.0, desired),),
        desired,
        ("ScaleUpLimit",),
        f"cpu 90% vs 50% → {desired}",
    )


def test_round_trip_and_filters(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s" / "events.db")
    store.record_event("web", "replica_created", "created r-1", "r-1", {"address": "127.0.0.1:1"}, ts=100.0)
    store.record_event("api", "replica_created", "created r-2", "r-2", ts=101.0)
    store.record_event("web", "replica_ready", "r-1 ready", "r-1", ts=102.0)
    store.record_decision("web", _decision(103.0, 1, 3))
    store.record_decision("web", _decision(104.0, 3, 3))
    assert [e.message for e in store.events("web")] == ["created r-1", "r-1 ready"]
    assert [e.kind for e in store.events(since=101.5)] == ["replica_ready"]
    assert store.events("web")[0].data == {"address": "127.0.0.1:1"}
    assert [d.desired for d in store.decisions("web")] == [3, 3]
    only = store.decisions("web", changes_only=True)
    assert len(only) == 1 and only[0].limits == ["ScaleUpLimit"] and only[0].proposals[0]["metric"] == "cpu"
    store.write_status("web", {"desired": 3}, ts=105.0)
    store.write_status("web", {"desired": 4}, ts=106.0)
    assert store.statuses() == {"web": (106.0, {"desired": 4})}
    store.prune(older_than=102.5)
    assert [e.kind for e in store.events()] == []
    assert [d.ts for d in store.decisions()] == [103.0, 104.0]
    store.close()


def test_store_file_is_private(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    store.close()
    assert stat.S_IMODE((tmp_path / "events.db").stat().st_mode) == 0o600
