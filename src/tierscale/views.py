"""What `status`, `status --watch` and `events` show: read from the event store, rendered for people or
scripts. The API serves the same rows (`history_rows`), so the terminal and the dashboard agree.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tierscale.eventstore import EventStore, history_rows

STATE_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "provisioning": "yellow",
    "draining": "magenta",
    "unhealthy": "red",
    "unreachable": "yellow",
    "failed": "red",
}
KIND_STYLE = {
    "decision": "bold cyan",
    "scaled": "bold cyan",
    "manual": "bold yellow",
    "replica_ready": "green",
    "replica_created": "green",
    "replica_unhealthy": "red",
    "replica_replaced": "red",
    "create_failed": "red",
    "delete_failed": "red",
    "provider_error": "red",
    "balancer_failed": "red",
    "balancer_restarted": "red",
    "replica_draining": "magenta",
    "replica_drained": "magenta",
    "replica_deleted": "magenta",
}
# How the metrics read in a sentence: the unit of each metric's value and target.
METRIC_UNIT = {"cpu": "%", "requests_per_replica": " req/s", "latency_p95_ms": " ms", "prometheus": ""}
TOTAL_METRICS = frozenset({"requests_per_replica", "prometheus"})

_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_since(text: str, now: float | None = None) -> float:
    """`since` as users write it: a duration back from now (`10m`, `1h30m`, `500ms`) or a unix timestamp.

    A bare number is a timestamp (seconds since the epoch, fractions allowed); anything with a unit is a
    duration. ValueError with a message fit to show a user otherwise.
    """
    from tierscale.config.durations import parse_duration

    now = time.time() if now is None else now
    value = text.strip()
    if _NUMBER.fullmatch(value):
        ts = float(value)
        if not math.isfinite(ts):
            raise ValueError(f"expected a duration like 10m or a unix timestamp (got {text!r})")
        return ts
    try:
        return now - parse_duration(value)
    except ValueError:
        raise ValueError(f"expected a duration like 10m or a unix timestamp (got {text!r})") from None


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


def _seconds(x: float) -> str:
    if x >= 3600 and x % 3600 == 0:
        return f"{x / 3600:g}h"
    if x >= 60 and x % 60 == 0:
        return f"{x / 60:g}m"
    return f"{x:.0f}s" if x >= 10 else f"{x:.1f}s"


def _metric_text(p: dict[str, Any], count: int) -> Text:
    unit = METRIC_UNIT.get(p["metric"], "")
    t = Text(f"{p['metric']} ", style="bold")
    if p.get("value") is None:
        t.append(f"invalid ({p.get('error') or 'no value'})", style="red")
        return t
    value = float(p["value"])
    per = value / max(1, count) if p["metric"] in TOTAL_METRICS else value
    ratio = per / p["target"] if p["target"] else 0.0
    style = "red" if ratio > 1.1 else ("green" if ratio >= 0.9 else "blue")
    if p["metric"] in TOTAL_METRICS:
        t.append(f"{value:.4g} total = {per:.3g}{unit}/replica", style=style)
    else:
        t.append(f"{per:.3g}{unit}", style=style)
    t.append(f" vs target {p['target']:g}{unit}")
    if p.get("replicas") is not None:
        t.append(f" → wants {p['replicas']}", style="dim")
    return t


def _bar(percent: float | None, width: int = 10) -> Text:
    if percent is None:
        return Text("-")
    filled = max(0, min(width, round(percent / 100 * width)))
    style = "red" if percent >= 90 else ("yellow" if percent >= 60 else "green")
    t = Text("█" * filled, style=style)
    t.append("·" * (width - filled), style="dim")
    t.append(f" {percent:3.0f}")
    return t


def _ha_line(ha: dict[str, Any]) -> Text:
    """Who leads and each controller's last renew, as this controller sees the election."""
    line = Text("  ha ", style="bold")
    role = ha.get("role", "?")
    line.append(f"{ha.get('name')} is {role}", style="green" if role == "leader" else "")
    line.append(f"; leader {ha.get('leader') or 'unknown'}")
    if ha.get("leader_api") and role != "leader":
        line.append(f" at {ha['leader_api']}")
    now = time.time()
    for m in ha.get("members") or []:
        line.append(f"  {m['name']} ({m['role']}, renewed {_seconds(max(0.0, now - m['renewed_at']))} ago)")
    if ha.get("error"):
        line.append(f"  etcd: {ha['error']}", style="red")
    return line


def _metric_source_line(m: dict[str, Any]) -> Text:
    """An external metric's source: ok, or failing and what stands in for it."""
    line = Text(f"  source {m['metric']} ({m['type']}) ", style="bold")
    state = m.get("state", "?")
    line.append(
        state, style="green" if state == "ok" else "red" if state in ("hold", "fallback") else "yellow"
    )
    if m.get("last_value") is not None:
        line.append(f"  last {m['last_value']:g}, {_seconds(m.get('age') or 0.0)} ago")
    if state != "ok":
        line.append(f"  failing {_seconds(m.get('failing_for') or 0.0)}; fallback {m.get('fallback')}")
        if m.get("error"):
            line.append(f"  ({m['error']})", style="dim")
    return line


def render_status_table(statuses: list[dict[str, Any]]) -> Group:
    """Each group: a summary line, each metric against its target, the replicas, and the last decision."""
    parts: list[Any] = []
    for st in statuses:
        head = Text()
        head.append(f"{st['group']}", style="bold")
        head.append(
            f"  tier={st['tier']} policy={st['policy']}  desired={st['desired']} current={st['current']}"
            f" ready={st['ready']}  [{st['min']}..{st['max']}]"
        )
        if st.get("revision"):
            head.append(f"  revision={st['revision']}")
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
        if not st.get("provider_ok", True):
            head.append(f"  provider error: {st.get('last_error')}", style="red")
        parts.append(head)
        ro = st.get("rollout") or {}
        if ro and ro.get("state") != "complete":
            line = Text("  rollout ", style="bold")
            line.append(f"{ro['state']}", style="red" if ro["state"] == "failed" else "yellow")
            line.append(f"  {ro.get('previous') or '?'} → {ro['target']}")
            line.append(f"  updated {ro.get('updated', 0)}, healthy {ro.get('healthy', 0)}")
            if ro.get("reason"):
                line.append(f"  ({ro['reason']})", style="dim")
            parts.append(line)
        elif ro.get("rejected") and ro.get("declared") == ro.get("rejected"):
            parts.append(
                Text(
                    f"  rolled back from {ro['rejected']}: `tierscale rollout resume` retries it",
                    style="yellow",
                )
            )
        ha = st.get("ha")
        if ha:
            parts.append(_ha_line(ha))
        parts.extend(_metric_source_line(m) for m in st.get("metric_sources") or [])
        stz = st.get("scale_to_zero")
        if stz:
            line = Text("  scale to zero ", style="bold")
            idle = stz.get("idle_for")
            line.append(f"after {_seconds(stz['idle_after'])} idle")
            if idle is not None:
                line.append(f"; idle {_seconds(idle)}")
            if stz.get("held"):
                line.append(f"; {stz['held']} request(s) held", style="yellow")
            parts.append(line)
        d = st.get("last_decision")
        for p in (d or {}).get("proposals") or []:
            parts.append(Text("  ").append_text(_metric_text(p, d["current"] if d else 1)))
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in (
            "replica",
            "address",
            "host",
            "revision",
            "state",
            "health",
            "cpu %",
            "req/s",
            "p95 ms",
            "age s",
        ):
            table.add_column(col)
        for r in st["replicas"]:
            # A replica of another revision than the group's is the one a rollout still has to replace.
            rev = r.get("revision") or "-"
            stale = bool(st.get("revision")) and rev != st.get("revision")
            table.add_row(
                r["id"],
                r["address"] or "-",
                r.get("host") or "-",
                Text(rev, style="yellow" if stale else ""),
                Text(r["state"], style=STATE_STYLE.get(r["state"], "")),
                str(r["health"]),
                _bar(r["cpu"]),
                f"{r['rps']:.1f}",
                "-" if r["p95_ms"] is None else f"{r['p95_ms']:.0f}",
                f"{r['age']:.0f}",
            )
        parts.append(table)
        if d:
            line = Text("why: ", style="bold cyan")
            line.append(f"{d['current']} → {d['desired']}: {d['reason']}", style="cyan")
            if d.get("limits"):
                line.append(f"  (limited by {', '.join(d['limits'])})", style="dim")
            parts.append(line)
        parts.append(Text(""))
    return Group(*parts)


def _format_ts(ts: float, with_date: bool = False) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def render_watch(statuses: list[dict[str, Any]], recent: list[dict[str, Any]]) -> Group:
    """The live view: the status of every group, then the last events, newest at the bottom."""
    parts: list[Any] = [
        Text(f"tierscale · {_format_ts(time.time())} · Ctrl-C to quit", style="dim"),
        Text(""),
    ]
    if not statuses:
        parts.append(Text("no groups recorded yet: is `tierscale run` running with this state_dir?"))
    else:
        parts.append(render_status_table(statuses))
    if recent:
        parts.append(Text("recent", style="bold"))
        for row in for_people(recent):
            parts.append(_history_text(row))
    return Group(*parts)


def watch_status(state_dir: Path, interval: float = 1.0, events: int = 8) -> None:
    from rich.live import Live

    def frame() -> Group:
        return render_watch(read_statuses(state_dir), read_history(state_dir, None, None, events))

    # Ctrl-C sets a flag the loop waits on instead of raising wherever the main thread happens to be
    # (inside rich's locked refresh, or sqlite): a loaded CI run once had the view outlive its Ctrl-C.
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with Live(frame(), refresh_per_second=4, screen=False) as live:
            while not stop.wait(interval):
                live.update(frame())
    finally:
        signal.signal(signal.SIGINT, previous)


def read_history(state_dir: Path, group: str | None, since: float | None, limit: int) -> list[dict[str, Any]]:
    store = _store(state_dir)
    if store is None:
        return []
    try:
        return history_rows(store, group, since, limit)
    finally:
        store.close()


def _history_line(r: dict[str, Any], with_date: bool) -> tuple[str, str, str]:
    ts = _format_ts(r["ts"], with_date)
    if r["type"] == "decision":
        text = f"{r['current']} → {r['desired']}: {r['message']}"
        if r.get("limits"):
            text += f"  [limited by {', '.join(r['limits'])}]"
        return ts, "decision", text
    return ts, r["kind"], r["message"]


def _history_text(r: dict[str, Any]) -> Text:
    ts, kind, text = _history_line(r, False)
    t = Text(f"{ts} ", style="dim")
    t.append(f"{r['group']:<12} ")
    t.append(f"{kind:<18} ", style=KIND_STYLE.get(kind, ""))
    t.append(text)
    return t


def for_people(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop `scaled` events: each repeats the count-changing decision that is listed right beside it."""
    return [r for r in rows if r["kind"] != "scaled"]


def format_history(rows: list[dict[str, Any]]) -> str:
    """One aligned line per row; the date is shown when the rows are not all from today."""
    rows = for_people(rows)
    if not rows:
        return "no events"
    today = datetime.now().date()
    with_date = any(datetime.fromtimestamp(r["ts"]).date() != today for r in rows)
    gw = max(5, *(len(r["group"]) for r in rows))
    kw = max(8, *(len("decision" if r["type"] == "decision" else r["kind"]) for r in rows))
    lines = []
    for r in rows:
        ts, kind, text = _history_line(r, with_date)
        lines.append(f"{ts}  {r['group']:<{gw}}  {kind:<{kw}}  {text}")
    return "\n".join(lines)


def format_hosts(rows: list[dict[str, Any]]) -> str:
    """`tierscale hosts`: one aligned line per host."""
    if not rows:
        return "no group places replicas on a list of hosts (`hosts:` / `uris:` in a template)"

    def capacity(r: dict[str, Any]) -> str:
        cpus = f"{r['cpus']:g} cpu" if r.get("cpus") is not None else "? cpu"
        mem = f"{r['memory_bytes'] / 1024**3:.1f} GiB" if r.get("memory_bytes") is not None else "? GiB"
        free = r.get("free_memory_bytes")
        return f"{cpus}, {mem}" + (f" ({free / 1024**3:.1f} free)" if free is not None else "")

    table = [
        (
            r["host"],
            "yes" if r["reachable"] else "NO",
            capacity(r),
            ", ".join(f"{g}={n}" for g, n in sorted(r["replicas"].items())) or "-",
            r.get("mark") or "-",
            r.get("error") or "",
        )
        for r in rows
    ]
    head = ("HOST", "REACHABLE", "CAPACITY", "REPLICAS", "MARK", "")
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)).rstrip()
        + (f"  {row[5]}" if row[5] else "")
        for row in [head, *table]
    )
