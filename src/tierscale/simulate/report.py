"""Reports of a simulation: a text table, JSON, a PNG plot and a self-contained HTML page (inline SVG).

Plots need matplotlib (the `sim` extra); it is imported only when a plot is drawn.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tierscale.simulate.compare import (
    COLUMNS,
    DEFAULT_MAX_REPLICA_HOURS,
    SPEC_METRICS,
    Result,
    factors,
    ratio,
    score,
    spec_score,
    within_budget,
)

__all__ = ["format_tables", "plot", "summary", "write_html", "write_json"]

MAX_POINTS = 1500  # per plotted series: enough to see a 48 h day shape, small enough for inline SVG
# Above the axes, right of the title: inside, it would hide the peaks that matter most.
LEGEND: dict[str, Any] = {
    "loc": "lower right",
    "bbox_to_anchor": (1.0, 1.0),
    "ncol": 5,
    "fontsize": 7,
    "frameon": False,
}


def _cells(r: Result, key: str) -> str:
    fmt = next(f for k, _, f in COLUMNS if k == key)
    return fmt.format(r.metrics[key])


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


# The ratio table's metric columns, in the order of the score's factors; replica-hours last (the budget).
RATIO_KEYS = (*SPEC_METRICS, "overflow", "scalings_per_hour", "replica_hours")


def format_tables(results: list[Result], max_replica_hours: float = DEFAULT_MAX_REPLICA_HOURS) -> str:
    """Metric values for every config (and the oracle), then ratios to the first config, both scores and
    whether each config kept to the replica-hours budget."""
    header = ["config", *(h for _, h, _ in COLUMNS)]
    rows = [[r.name, *(_cells(r, k) for k, _, _ in COLUMNS)] for r in results]
    out = _table(header, rows)
    if len(results) > 1:
        base = results[0]
        heads = {k: h for k, h, _ in COLUMNS}
        rheader = [f"ratio to {base.name}", *(heads[k] for k in RATIO_KEYS), "SPEC score", "score", "budget"]
        rrows = [
            [
                r.name,
                *(f"{ratio(r.metrics[k], base.metrics[k], k):.3f}" for k in RATIO_KEYS),
                f"{spec_score(r.metrics, base.metrics):.3f}",
                f"{score(r.metrics, base.metrics):.3f}",
                "ok" if within_budget(r.metrics, base.metrics, max_replica_hours) else "OVER",
            ]
            for r in results
        ]
        out += ["", *_table(rheader, rrows)]
        out.append(
            "score = (accuracy · timeshare · overflow · churn)^¼ of the ratios: accuracy √(θU·θO), "
            "timeshare √(τU·τO), churn √(υ·scalings/h)"
        )
        out.append(
            f"SPEC score: θU, θO, τU, τO, υ only. Below 1 beats {base.name}. OVER: replica-h ratio above "
            f"{max_replica_hours:.2f} (never the best config, whatever its score)"
        )
    return "\n".join(out)


def _round(x: float) -> float:
    return round(x, 6) if math.isfinite(x) else x


def summary(info: dict[str, Any], results: list[Result]) -> dict[str, Any]:
    base = results[0].metrics
    budget = info.get("score", {}).get("max_replica_hours", DEFAULT_MAX_REPLICA_HOURS)
    runs = []
    for r in results:
        entry: dict[str, Any] = {
            "name": r.name,
            "config": r.config,
            "group": r.group,
            "policy": r.policy,
            "metrics": {k: _round(v) for k, v in r.metrics.items()},
            "ratios": {k: _round(ratio(v, base[k], k)) for k, v in r.metrics.items() if k != "jitter"},
            "score": _round(score(r.metrics, base)),
            "spec_score": _round(spec_score(r.metrics, base)),
            "factors": {k: _round(v) for k, v in factors(r.metrics, base).items()},
            "within_budget": within_budget(r.metrics, base, budget),
            **{k: _round(v) for k, v in r.extra.items()},
        }
        if r.run is not None:
            entry["scale_events"] = [
                {"t": e.t, "from": e.current, "to": e.desired, "reason": e.reason} for e in r.run.events
            ]
        runs.append(entry)
    return {**info, "runs": runs}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _buckets(x: np.ndarray, size: int) -> np.ndarray:
    n = len(x) // size * size
    head = x[:n].reshape(-1, size)
    if n == len(x):
        return head
    tail = np.full((1, size), np.nan)
    tail[0, : len(x) - n] = x[n:]
    return np.vstack([head, tail])


def plot(
    png: Path, rates: np.ndarray, demand: np.ndarray, dt: float, results: list[Result], title: str
) -> str:
    """Draw rate, then demand vs supply per config with its scale events; write `png`, return SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.run is not None]
    n = len(demand)
    size = max(1, math.ceil(n / MAX_POINTS))
    hours = n * dt > 3 * 3600
    unit, scale = ("h", 3600.0) if hours else ("min", 60.0)
    x = (np.arange(0, n, size) + size / 2) * dt / scale
    fig, axes = plt.subplots(
        len(runs) + 1, 1, figsize=(12, 2.0 + 2.2 * len(runs)), sharex=True, squeeze=False
    )
    ax0 = axes[0][0]
    rb = _buckets(rates, size)
    ax0.fill_between(x, np.nanmin(rb, 1), np.nanmax(rb, 1), color="#bbb", lw=0, label="min–max")
    ax0.plot(x, np.nanmean(rb, 1), color="#333", lw=0.8, label="mean")
    ax0.set_ylabel("req/s")
    ax0.set_title(title, fontsize=10, loc="left")
    ax0.legend(**LEGEND)
    db = _buckets(demand.astype(float), size)
    for ax_row, r in zip(axes[1:], runs, strict=True):
        ax = ax_row[0]
        ax.fill_between(
            x, np.nanmin(db, 1), np.nanmax(db, 1), color="#f4c7a1", lw=0, label="demand (min–max)"
        )
        sb = _buckets(r.supply.astype(float), size)
        ax.plot(x, np.nanmean(sb, 1), color="#1f5fa8", lw=0.9, label="ready replicas (mean)")
        ab = _buckets(r.allocated.astype(float), size)
        ax.plot(x, np.nanmean(ab, 1), color="#1f5fa8", lw=0.5, ls=":", label="allocated (mean)")
        assert r.run is not None
        ups = [(e.t / scale, e.desired) for e in r.run.events if e.desired > e.current]
        downs = [(e.t / scale, e.desired) for e in r.run.events if e.desired < e.current]
        if ups:
            ax.scatter(*zip(*ups, strict=True), marker="^", s=9, color="#2a9d3a", label="scale out", zorder=3)
        if downs:
            ax.scatter(
                *zip(*downs, strict=True), marker="v", s=9, color="#c0392b", label="scale in", zorder=3
            )
        ax.set_ylabel("replicas")
        ax.set_title(f"{r.name} ({r.policy})", fontsize=9, loc="left")
        ax.legend(**LEGEND)
    axes[-1][0].set_xlabel(f"simulated time ({unit})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.find("<svg") :]  # drop the XML prolog: the SVG goes inline into HTML


def write_html(path: Path, title: str, info_lines: list[str], table: str, svg: str | None) -> None:
    body = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1250px}"
        "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}svg{max-width:100%;height:auto}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul>",
        *(f"<li>{html.escape(line)}</li>" for line in info_lines),
        "</ul>",
        f"<pre>{html.escape(table)}</pre>",
        svg or "<p>(plots skipped)</p>",
        "</body></html>",
    ]
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
