"""`tierscale simulate`: options in, tables and files out. Bad input raises `SimInputError` (one line)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tierscale.config import TIER_PROVISIONING_DELAY, ConfigError, load_config, predictive_params
from tierscale.config.durations import format_duration
from tierscale.config.settings import GroupSettings, settings_for
from tierscale.simulate.compare import Result, measure
from tierscale.simulate.model import (
    CapacityModel,
    DelayModel,
    Grid,
    auto_capacity,
    build_grid,
    parse_delay,
)
from tierscale.simulate.oracle import oracle
from tierscale.simulate.report import format_tables, plot, summary, write_html, write_json
from tierscale.simulate.run import simulate
from tierscale.simulate.trace import (
    DEFAULT_MAX_GAP,
    SimInputError,
    Trace,
    load_trace,
    parse_max_gap,
    parse_window,
    select_window,
)

__all__ = ["SimOptions", "SimReport", "load_group", "run_simulation"]


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


def _settings(group: Any, delay: DelayModel) -> GroupSettings:
    s = settings_for(group)  # the controller's own conversion of the config
    if group.policy == "predictive":
        # `horizon: auto` means the provisioning delay: here it is known, it is the simulated one.
        s = replace(s, forecast=predictive_params(group, delay.mean))
    return s


def _run_one(
    name: str,
    path: str,
    group: Any,
    grid: Grid,
    cap: CapacityModel,
    delay: DelayModel,
    demand: np.ndarray,
    opts: SimOptions,
    epoch: float,
) -> Result:
    s = _settings(group, delay)
    initial = int(np.clip(demand[0], group.min, group.max))
    run = simulate(s, grid, cap, delay, initial=initial, seed=opts.seed, epoch=epoch)
    metrics = measure(demand, run.ready, run.allocated, grid.rate, cap.capacity, grid.dt)
    metrics["scale_events"] = float(len(run.events))
    return Result(
        name,
        group.policy,
        metrics,
        run.ready,
        run.allocated,
        path,
        group.name,
        run,
        extra={"passes": run.passes, "sim_seconds": run.seconds},
    )


def run_simulation(opts: SimOptions) -> SimReport:
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

    results = [
        _run_one(n, p, g, grid, cap, delay, demand, opts, epoch)
        for n, p, g in zip(names, opts.configs, groups, strict=True)
    ]
    if opts.oracle:
        supply, allocated = oracle(demand, first.min, first.max, math.ceil(delay.mean / grid.dt - 1e-9))
        metrics = measure(demand, supply, allocated, grid.rate, cap.capacity, grid.dt)
        metrics["scale_events"] = float(np.count_nonzero(np.diff(allocated)))
        results.append(Result("oracle", "oracle", metrics, supply, allocated))

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
    }
    table = format_tables(results)
    report = SimReport(table, info, results)
    if opts.out is not None:
        _write(report, Path(opts.out), grid, demand, opts)
    return report


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


def _write(report: SimReport, out: Path, grid: Grid, demand: np.ndarray, opts: SimOptions) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimInputError(f"--out {out}: cannot create: {exc.strerror or exc}") from None
    lines = info_lines(report.info)
    title = f"tierscale simulate: {Path(opts.trace).name}"
    summary_path = out / "summary.json"
    write_json(summary_path, summary(report.info, report.results))
    (out / "table.txt").write_text("\n".join(lines) + "\n\n" + report.table + "\n", encoding="utf-8")
    report.files += [summary_path, out / "table.txt"]
    svg = None
    if opts.plots:
        png = out / "timeline.png"
        svg = plot(png, grid.rate, demand, grid.dt, report.results, title)
        report.files.append(png)
    html_path = out / "report.html"
    write_html(html_path, title, lines, report.table, svg)
    report.files.append(html_path)
