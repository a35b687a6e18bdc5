"""`tierscale simulate`: options in, tables and files out. Bad input raises `SimInputError` (one line)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tierscale.config import TIER_PROVISIONING_DELAY, ConfigError, load_config
from tierscale.config.durations import format_duration
from tierscale.simulate.compare import (
    DEFAULT_MAX_REPLICA_HOURS,
    FLOOR,
    FLOORS,
    SCORE_FACTORS,
    Result,
    best_within_budget,
    measure,
    replica_hours_ratio,
    score,
    within_budget,
)
from tierscale.simulate.jobs import Context, Job, auto_workers, run_jobs
from tierscale.simulate.model import (
    CapacityModel,
    DelayModel,
    Grid,
    auto_capacity,
    build_grid,
    parse_delay,
)
from tierscale.simulate.oracle import oracle
from tierscale.simulate.progress import SimProgress
from tierscale.simulate.report import format_tables, plot, summary, write_html, write_json
from tierscale.simulate.trace import (
    DEFAULT_MAX_GAP,
    SimInputError,
    Trace,
    load_trace,
    parse_max_gap,
    parse_window,
    select_window,
)

__all__ = ["SimOptions", "SimReport", "info_lines", "load_group", "run_simulation", "summary_lines"]


@dataclass
class SimOptions:
    trace: str
    configs: list[str]
    out: str | None = None  # None: no files (benchmarks)
    group: str | None = None
    speed: float = 1.0
    window: str | None = None
    delay: str | None = None  # None: the first config's tier
    capacity: str = "auto"
    utilization: float = 70.0  # percent
    seed: int = 0
    start: str | None = None  # wall-clock time of trace t = 0 (schedules); None: the trace's own, or 1970
    time_col: str | None = None  # CSV column names (None: the obvious names, else the first two columns)
    value_col: str | None = None
    counts: bool = False  # values are requests per row, not per second
    max_gap: str = format_duration(DEFAULT_MAX_GAP)  # longest run of missing rows filled; "none": any
    plots: bool = True
    oracle: bool = True
    # Configs simulated at once, each in its own process. None: one per core when the comparison is long
    # enough to gain from it (`jobs.auto_workers`), else in this process.
    jobs: int | None = None
    max_replica_hours: float = DEFAULT_MAX_REPLICA_HOURS  # the budget, × the first config's replica-hours


@dataclass
class SimReport:
    table: str
    info: dict[str, Any]
    results: list[Result]
    files: list[Path] = field(default_factory=list)


def load_group(path: str, name: str | None) -> Any:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise SimInputError(str(exc.problems[0]) if exc.problems else f"{path}: invalid config") from None
    if name is None:
        if len(cfg.groups) != 1:
            names = ", ".join(g.name for g in cfg.groups)
            raise SimInputError(f"{path}: has {len(cfg.groups)} groups ({names}): pick one with --group")
        group = cfg.groups[0]
    else:
        try:
            group = cfg.group(name)
        except KeyError:
            raise SimInputError(f"{path}: no group named {name!r}") from None
    for i, m in enumerate(group.metrics):
        if m.type == "prometheus":
            raise SimInputError(
                f"{path}: {group.name}.metrics[{i}]: a prometheus query cannot be simulated "
                "(the model knows request rate, CPU and latency only)"
            )
    return group


def _number(text: str, what: str, low: float, high: float = math.inf) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SimInputError(f"{what}: expected a number (got {text!r})") from None
    if not (math.isfinite(value) and low < value <= high):
        bound = f"> {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
        raise SimInputError(f"{what}: must be {bound} (got {text})")
    return value


def _epoch(text: str) -> float:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SimInputError(
            f"--start: expected an ISO 8601 time like 1998-06-25T22:00:01Z (got {text!r})"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _names(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        stem = Path(p).stem
        name, i = stem, 2
        while name in out:
            name, i = f"{stem}-{i}", i + 1
        out.append(name)
    return out


def _jobs(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SimInputError(f"--jobs: must be a whole number >= 1 (got {value!r})")
    return value


def run_simulation(opts: SimOptions, progress: SimProgress | None = None) -> SimReport:
    """Simulate every config of `opts` on its trace (and the oracle); `progress` shows a bar per config."""
    started = time.perf_counter()
    trace: Trace = load_trace(
        opts.trace,
        time_col=opts.time_col,
        value_col=opts.value_col,
        counts=opts.counts,
        max_gap=parse_max_gap(opts.max_gap),
    )
    if opts.window:
        trace = select_window(trace, *parse_window(opts.window))
    speed = _number(str(opts.speed), "--speed", 0.0)
    utilization = _number(str(opts.utilization), "--utilization", 0.0, 100.0) / 100.0
    budget = _number(str(opts.max_replica_hours), "--max-replica-hours", 0.0)
    workers = _jobs(opts.jobs)
    # The simulated wall clock (what schedules see): --start is trace t = 0, so a window starts later. A
    # file with real times brings its own clock; --start still wins, to replay it on another day.
    base = _epoch(opts.start) if opts.start is not None else (trace.epoch or 0.0)
    epoch = base + trace.start
    names = _names(opts.configs)
    groups = [load_group(p, opts.group) for p in opts.configs]
    first = groups[0]
    delay = (
        parse_delay(opts.delay)
        if opts.delay
        else DelayModel("fixed", TIER_PROVISIONING_DELAY[first.tier], text=f"{first.tier} default")
    )
    if opts.capacity == "auto":
        capacity = auto_capacity(trace.rates, utilization, first.max)
    else:
        capacity = _number(opts.capacity, "--capacity", 0.0)
    cap = CapacityModel(capacity, utilization)
    grid = build_grid(trace, speed)
    demand = cap.demand(grid.rate)

    ctx = Context(trace, speed, cap, delay, opts.seed, epoch)
    jobs = [Job(n, p, g) for n, p, g in zip(names, opts.configs, groups, strict=True)]
    workers = min(workers, len(jobs)) if workers is not None else auto_workers(jobs, grid.duration)
    results = run_jobs(jobs, ctx, grid, demand, workers, progress)
    if opts.oracle:
        supply, allocated = oracle(demand, first.min, first.max, math.ceil(delay.mean / grid.dt - 1e-9))
        changes = int(np.count_nonzero(np.diff(allocated)))
        metrics = measure(demand, supply, allocated, grid.rate, cap.capacity, grid.dt, changes)
        results.append(Result("oracle", "oracle", metrics, supply, allocated))
    wall = time.perf_counter() - started
    days = grid.duration / 86400.0

    info: dict[str, Any] = {
        "trace": {
            "path": opts.trace,
            "bin_seconds": trace.bin,
            "start": trace.start,
            "rows": len(trace.rates),
            "mean_rps": float(trace.rates.mean()),
            "peak_rps": float(trace.rates.max()),
            "window": opts.window,
            "speed": speed,
            **_load_info(trace),
        },
        "model": {
            "capacity_rps": capacity,
            "capacity_source": opts.capacity,
            "reference_utilization": utilization,
            "demand_per_replica_rps": cap.at_reference,
            "peak_demand": int(demand.max()),
            "delay": delay.text,
            "delay_mean_s": delay.mean,
            "seed": opts.seed,
            "grid_seconds": grid.dt,
            "simulated_seconds": grid.duration,
            "epoch": epoch,
        },
        "score": _score_info(results, budget),
        "timing": {
            "wall_seconds": wall,
            "simulated_days": days,
            "configs": len(jobs),
            "jobs": workers,
            # The whole command (loading, every config, the oracle) per simulated day: what a user waits.
            "seconds_per_simulated_day": wall / days if days > 0 else 0.0,
            "per_config": {
                r.name: r.extra["seconds_per_simulated_day"] for r in results if r.run is not None
            },
        },
    }
    table = format_tables(results, budget)
    report = SimReport(table, info, results)
    if opts.out is not None:
        _write(report, Path(opts.out), grid, demand, opts)
    return report


def _score_info(results: list[Result], budget: float) -> dict[str, Any]:
    base = results[0].metrics
    best = best_within_budget(results, budget)
    return {
        "formula": "(accuracy · timeshare · overflow · churn)^(1/4); accuracy = √(θU·θO), timeshare = "
        "√(τU·τO), churn = √(υ·scalings/h), each a ratio to the baseline; below 1 beats it",
        "factors": {name: list(keys) for name, keys in SCORE_FACTORS},
        "floors": {"default": FLOOR, **FLOORS},
        "baseline": results[0].name,
        "max_replica_hours": budget,
        "best_within_budget": best.name if best is not None else None,
        "best_score": score(best.metrics, base) if best is not None else None,
        "over_budget": {
            r.name: replica_hours_ratio(r.metrics, base)
            for r in results
            if not within_budget(r.metrics, base, budget)
        },
    }


def _load_info(trace: Trace) -> dict[str, Any]:
    ld = trace.load
    return {
        "format": ld.format,
        "times": ld.times,
        "columns": list(ld.columns) if ld.columns else None,
        "counts": ld.counts,
        "first_time": _iso(trace.epoch) if trace.epoch is not None else None,
        # The repairs, counted over the whole file (before --window):
        "rows_read": ld.rows,
        "filled": ld.filled,
        "empty_values": ld.empty,
        "duplicates": ld.duplicates,
        "out_of_order": ld.out_of_order,
        "max_gap_s": ld.max_gap if math.isfinite(ld.max_gap) else None,
        "notes": list(ld.notes),
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def _read_line(t: dict[str, Any]) -> str:
    cols = f" ({t['columns'][0]}, {t['columns'][1]})" if t.get("columns") else ""
    times = t["times"] + (f" from {t['first_time']}" if t.get("first_time") else "")
    values = f"counts per {t['bin_seconds']:g}s ÷ {t['bin_seconds']:g}" if t["counts"] else "req/s"
    gap = format_duration(t["max_gap_s"]) if t["max_gap_s"] is not None else "any length"
    empty = f" ({_n(t['empty_values'], 'empty value')})" if t["empty_values"] else ""
    line = (
        f"read {_n(t['rows_read'], 'row')}: {t['format']}{cols}, {times}, {values}; "
        f"{_n(t['filled'], 'missing row')} filled{empty} (linear, gaps up to {gap}), "
        f"{_n(t['duplicates'], 'duplicate time')} (kept the last), "
        f"{_n(t['out_of_order'], 'row')} out of order (sorted)"
    )
    return line + "".join(f"; note: {n}" for n in t["notes"])


def info_lines(info: dict[str, Any]) -> list[str]:
    t, m = info["trace"], info["model"]
    window = f", window {t['window']}" if t["window"] else ""
    return [
        f"trace {t['path']}: {t['rows']} rows of {t['bin_seconds']:g}s{window}, speed ×{t['speed']:g}, "
        f"mean {t['mean_rps']:.1f} req/s, peak {t['peak_rps']:.0f} req/s",
        _read_line(t),
        f"replica capacity {m['capacity_rps']:.3g} req/s at 100 % CPU ({m['capacity_source']}); demand "
        f"counted at {m['reference_utilization'] * 100:g} % = {m['demand_per_replica_rps']:.3g} req/s per "
        f"replica; peak demand {m['peak_demand']}",
        f"provisioning delay {m['delay']} (mean {m['delay_mean_s']:g}s), seed {m['seed']}, "
        f"grid {m['grid_seconds']:.3g}s, {m['simulated_seconds'] / 3600:.2f} simulated hours",
    ]


def summary_lines(info: dict[str, Any]) -> list[str]:
    """The verdict under the budget, and how long the run took (per simulated day: what scales)."""
    sc, tm = info["score"], info["timing"]
    out: list[str] = []
    if len(sc["over_budget"]) or tm["configs"] > 1:
        over = ", ".join(f"{n} ({r:.2f}×)" for n, r in sc["over_budget"].items()) or "none"
        out.append(
            f"budget: replica-hours at most {sc['max_replica_hours']:.2f}× {sc['baseline']}'s "
            f"(--max-replica-hours); over budget: {over}"
        )
    if tm["configs"] > 1 and sc["best_within_budget"] is not None:
        out.append(f"best within budget: {sc['best_within_budget']} (score {sc['best_score']:.3f})")
    per = ", ".join(f"{n} {v:.2f}" for n, v in tm["per_config"].items())
    configs = _n(tm["configs"], "config")
    out.append(
        f"time: {configs} × {tm['simulated_days']:.2f} simulated days in {tm['wall_seconds']:.1f} s "
        f"({_n(tm['jobs'], 'job')}): {tm['seconds_per_simulated_day']:.2f} s per simulated day; "
        f"per config, on one core: {per} s per simulated day"
    )
    return out


def _write(report: SimReport, out: Path, grid: Grid, demand: np.ndarray, opts: SimOptions) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimInputError(f"--out {out}: cannot create: {exc.strerror or exc}") from None
    lines = info_lines(report.info)
    after = summary_lines(report.info)
    title = f"tierscale simulate: {Path(opts.trace).name}"
    summary_path = out / "summary.json"
    write_json(summary_path, summary(report.info, report.results))
    text = "\n".join(lines) + "\n\n" + report.table + "\n\n" + "\n".join(after) + "\n"
    (out / "table.txt").write_text(text, encoding="utf-8")
    report.files += [summary_path, out / "table.txt"]
    svg = None
    if opts.plots:
        png = out / "timeline.png"
        svg = plot(png, grid.rate, demand, grid.dt, report.results, title)
        report.files.append(png)
    html_path = out / "report.html"
    write_html(html_path, title, lines, report.table + "\n\n" + "\n".join(after), svg)
    report.files.append(html_path)
