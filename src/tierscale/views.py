"""What `status` and `events` show: read from the event store, rendered for people or scripts."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tierscale.eventstore import EventStore

STATE_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "draining": "magenta",
    "unhealthy": "red",
    "failed": "red",
}


def _store(state_dir: Path) -> EventStore | None:
    db = Path(state_dir) / "events.db"
    return EventStore(db) if db.exists() else None


def read_statuses(state_dir: Path) -> list[dict[str, Any]]:
    store = _store(state_dir)
    if store is None:
        return []
    try:
        rows = store.statuses()
    finally:
        store.close()
    out = []
    for _, (ts, body) in rows.items():
        body = dict(body)
        body["updated"] = ts
        body["stale_seconds"] = round(time.time() - ts, 1)
        out.append(body)
    return out


def render_status_table(statuses: list[dict[str, Any]]) -> Group:
    parts: list[Any] = []
    for st in statuses:
        head = Text()
        head.append(f"{st['group']}", style="bold")
        head.append(
            f"  tier={st['tier']} policy={st['policy']}  desired={st['desired']} current={st['current']}"
            f" ready={st['ready']}  [{st['min']}..{st['max']}]"
        )
        if st.get("paused"):
            head.append("  PAUSED", style="bold yellow")
        if st.get("balancer"):
            head.append(f"  balancer {st['balancer']['url']}")
        if st.get("rps") is not None:
            head.append(f"  {st['rps']} req/s")
        if st.get("p95_ms") is not None:
            head.append(f"  p95 {st['p95_ms']} ms")
        if st.get("stale_seconds", 0) > 30:
            head.append(
                f"  (last update {st['stale_seconds']:.0f}s ago: controller not running?)", style="dim"
            )
        parts.append(head)
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("replica", "address", "state", "health", "cpu %", "req/s", "p95 ms", "age s"):
            table.add_column(col)
        for r in st["replicas"]:
            table.add_row(
                r["id"],
                r["address"] or "-",
                Text(r["state"], style=STATE_STYLE.get(r["state"], "")),
                str(r["health"]),
                "-" if r["cpu"] is None else f"{r['cpu']:.0f}",
                f"{r['rps']:.1f}",
                "-" if r["p95_ms"] is None else f"{r['p95_ms']:.0f}",
                f"{r['age']:.0f}",
            )
        parts.append(table)
        d = st.get("last_decision")
        if d:
            parts.append(Text(f"last decision: {d['current']} → {d['desired']}: {d['reason']}", style="cyan"))
        parts.append(Text(""))
    return Group(*parts)


def watch_status(state_dir: Path, interval: float = 1.0) -> None:
    from rich.live import Live

    with Live(render_status_table(read_statuses(state_dir)), refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render_status_table(read_statuses(state_dir)))
        except KeyboardInterrupt:
            pass


def read_history(state_dir: Path, group: str | None, since: float | None, limit: int) -> list[dict[str, Any]]:
    """Events and count-changing decisions, merged in time order."""
    store = _store(state_dir)
    if store is None:
        return []
    try:
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
    finally:
        store.close()
    rows.sort(key=lambda r: r["ts"])
    return rows[-limit:]


def format_history(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        ts = datetime.fromtimestamp(r["ts"]).strftime("%H:%M:%S")
        if r["type"] == "decision":
            lines.append(f"{ts} {r['group']:<12} decision  {r['current']} → {r['desired']}: {r['message']}")
        else:
            lines.append(f"{ts} {r['group']:<12} {r['kind']:<18} {r['message']}")
    return "\n".join(lines) if lines else "no events"
