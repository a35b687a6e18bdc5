"""The event store: one SQLite file under `state_dir` with every decision and every replica/balancer event.

The controller writes; `tierscale status` / `tierscale events` (and the API) read. WAL mode lets readers
run while the controller writes. The file is created 0600: it can hold addresses and reasons that are
nobody else's business.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tierscale.policy.types import Decision
from tierscale.private_dirs import make_private_dir

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    grp TEXT NOT NULL,
    policy TEXT NOT NULL,
    current INTEGER NOT NULL,
    desired INTEGER NOT NULL,
    recommended INTEGER NOT NULL,
    limits TEXT NOT NULL,
    reason TEXT NOT NULL,
    proposals TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_grp_ts ON decisions (grp, ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    grp TEXT NOT NULL,
    kind TEXT NOT NULL,
    replica TEXT,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_grp_ts ON events (grp, ts);
CREATE TABLE IF NOT EXISTS status (
    grp TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS group_state (
    grp TEXT NOT NULL,
    key TEXT NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (grp, key)
);
"""

EVENT_KINDS = (
    "replica_created",
    "replica_ready",
    "replica_unhealthy",
    "replica_replaced",
    "replica_draining",
    "replica_drained",
    "replica_deleted",
    "replica_adopted",
    "create_failed",
    "delete_failed",
    "provider_error",
    "balancer_reloaded",
    "balancer_failed",
    "balancer_restarted",
    "scaled",
    "controller_started",
    "controller_stopped",
    "manual",
    "revision_mismatch",
    "rollout_started",
    "rollout_paused",
    "rollout_resumed",
    "rollout_promoted",
    "rollout_complete",
    "rollout_failed",
    "rollout_rollback",
    "config_applied",
    "group_unmanaged",
    "metric_failed",
    "metric_fallback",
    "metric_recovered",
)


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    group: str
    kind: str
    replica: str | None
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class DecisionRecord:
    id: int
    ts: float
    group: str
    policy: str
    current: int
    desired: int
    recommended: int
    limits: list[str]
    reason: str
    proposals: list[dict[str, Any]]


class EventStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        make_private_dir(self.path.parent)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._lock = threading.Lock()
        self.dropped_writes = 0
        self._last_drop_warning = -1e9
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write. When it cannot be stored (disk full, I/O error) the record is dropped and counted:
        the history is for people, and losing some of it must never stop the controller acting."""
        try:
            with self._lock, self._db:
                yield self._db
        except sqlite3.OperationalError as exc:
            self.dropped_writes += 1
            now = time.monotonic()
            if now - self._last_drop_warning > 60.0:
                self._last_drop_warning = now
                log.warning("event store %s: cannot write (%s); records are being dropped", self.path, exc)

    def record_event(
        self,
        group: str,
        kind: str,
        message: str,
        replica: str | None = None,
        data: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (ts, grp, kind, replica, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    ts if ts is not None else time.time(),
                    group,
                    kind,
                    replica,
                    message,
                    json.dumps(data or {}),
                ),
            )

    def record_decision(self, group: str, decision: Decision) -> None:
        proposals = [asdict(p) for p in decision.proposals]
        with self._tx() as db:
            db.execute(
                "INSERT INTO decisions"
                " (ts, grp, policy, current, desired, recommended, limits, reason, proposals)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.now,
                    group,
                    decision.policy,
                    decision.current,
                    decision.desired,
                    decision.recommended,
                    json.dumps(list(decision.limits)),
                    decision.reason,
                    json.dumps(proposals),
                ),
            )

    def write_status(self, group: str, body: dict[str, Any], ts: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO status (grp, ts, body) VALUES (?, ?, ?)"
                " ON CONFLICT(grp) DO UPDATE SET ts = excluded.ts, body = excluded.body",
                (group, ts if ts is not None else time.time(), json.dumps(body)),
            )

    # ---- what a group must remember across restarts that the marks cannot hold (its rollout, the
    # templates of the revisions it ran): small JSON documents, written rarely, read at start.
    def put_state(self, group: str, key: str, body: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO group_state (grp, key, ts, body) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(grp, key) DO UPDATE SET ts = excluded.ts, body = excluded.body",
                (group, key, time.time(), json.dumps(body)),
            )

    def get_state(self, group: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM group_state WHERE grp = ? AND key = ?", (group, key)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def clear_state(self, group: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM group_state WHERE grp = ?", (group,))

    def clear_status(self, group: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM status WHERE grp = ?", (group,))

    def statuses(self) -> dict[str, tuple[float, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT grp, ts, body FROM status ORDER BY grp").fetchall()
        return {g: (ts, json.loads(body)) for g, ts, body in rows}

    def events(
        self,
        group: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        kinds: tuple[str, ...] = (),
    ) -> list[Event]:
        sql = "SELECT id, ts, grp, kind, replica, message, data FROM events WHERE 1=1"
        args: list[Any] = []
        if group:
            sql += " AND grp = ?"
            args.append(group)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in reversed(rows)]

    def decisions(
        self,
        group: str | None = None,
        since: float | None = None,
        limit: int = 1000,
        changes_only: bool = False,
    ) -> list[DecisionRecord]:
        sql = "SELECT id, ts, grp, policy, current, desired, recommended, limits, reason, proposals"
        sql += " FROM decisions"
        sql += " WHERE 1=1"
        args: list[Any] = []
        if group:
            sql += " AND grp = ?"
            args.append(group)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if changes_only:
            sql += " AND current != desired"
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            DecisionRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], json.loads(r[9]))
            for r in reversed(rows)
        ]

    def prune(self, older_than: float) -> None:
        """Drop history older than `older_than` (wall seconds) so a long-running controller stays small."""
        with self._tx() as db:
            db.execute("DELETE FROM decisions WHERE ts < ?", (older_than,))
            db.execute("DELETE FROM events WHERE ts < ?", (older_than,))


def history_rows(
    store: EventStore, group: str | None, since: float | None, limit: int
) -> list[dict[str, Any]]:
    """Events and count-changing decisions, merged in time order (the newest `limit` of them)."""
    rows: list[dict[str, Any]] = [
        {
            "ts": e.ts,
            "group": e.group,
            "type": "event",
            "kind": e.kind,
            "replica": e.replica,
            "message": e.message,
            "data": e.data,
        }
        for e in store.events(group, since, limit)
    ]
    rows += [
        {
            "ts": d.ts,
            "group": d.group,
            "type": "decision",
            "kind": "decision",
            "policy": d.policy,
            "current": d.current,
            "desired": d.desired,
            "recommended": d.recommended,
            "limits": d.limits,
            "message": d.reason,
            "proposals": d.proposals,
        }
        for d in store.decisions(group, since, limit, changes_only=True)
    ]
    rows.sort(key=lambda r: r["ts"])
    return rows[-limit:]
