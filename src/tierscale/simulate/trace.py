"""Request-rate traces: one rate per fixed-width bin, each rate held until the next bin.

The lab's `traces/` format (see its PROVENANCE.md) is `t_seconds,requests_per_second`: `t_seconds` starts
anywhere and grows by a fixed bin width; `requests_per_second` is the mean rate over `[t, t + bin)`. Real
monitoring exports are messier, so `load_trace` also reads (the readers are in `trace_formats`):
- CSV with any header (`--time-col`, `--value-col`, or the obvious names), `,` `;` or tab, times as
  trace seconds, epoch seconds/ms/µs/ns or ISO 8601, values as rates or (`counts=True`) counts per row;
- the JSON of Prometheus' `/api/v1/query_range` (one series), or its `data` object.
Every format then goes through the same rules, and the `Trace` says how often each one applied:
rows are sorted by time, a time given twice keeps its last row in the file, missing rows (and empty
cells) are filled by linear interpolation when the gap is at most `max_gap`. Problems are reported as
`FILE:LINE: message`, one line, like config problems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tierscale.config.durations import format_duration, parse_duration
from tierscale.simulate.errors import SimInputError
from tierscale.simulate.trace_formats import RawRows, looks_like_json, read_csv, read_prometheus

__all__ = [
    "DEFAULT_MAX_GAP",
    "HEADER",
    "SimInputError",
    "Trace",
    "TraceLoad",
    "load_trace",
    "parse_max_gap",
    "parse_window",
    "select_window",
]

HEADER = ("t_seconds", "requests_per_second")
# Longest run of missing rows that is filled rather than refused. An hour: an exporter or scrape outage
# of minutes is routine and a straight line over it is close to what happened; over hours the load has
# had time to go anywhere (a whole evening peak can hide in it), and a trace made up there would be
# scored as if it were real. `--max-gap` moves the limit.
DEFAULT_MAX_GAP = 3600.0
# How far (in steps) a row may sit from the grid of the others and still be snapped to it: scrapers
# stamp rows with their own clock, a few milliseconds late; a row half a step off is a different grid.
GRID_TOLERANCE = 0.1


@dataclass(frozen=True)
class TraceLoad:
    """What loading the file took: its format and how often each repair rule applied (whole file)."""

    format: str = "CSV"
    times: str = "seconds"  # "seconds" (trace time), "epoch s", "epoch ms", ..., "ISO 8601"
    columns: tuple[str, str] | None = None  # time and value column (CSV with a header)
    counts: bool = False  # values were counts per row, divided by the step
    rows: int = 0  # data rows read
    filled: int = 0  # missing rows (and empty cells) filled by linear interpolation
    empty: int = 0  # rows with an empty value, treated as missing
    duplicates: int = 0  # rows dropped because a later row has the same time
    out_of_order: int = 0  # rows earlier than a row above them (the rows were sorted)
    max_gap: float = DEFAULT_MAX_GAP
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trace:
    name: str
    bin: float  # seconds per row, in trace time
    start: float  # trace time of rates[0]
    rates: np.ndarray  # requests per second, one per bin
    # Wall-clock (epoch seconds) of trace time 0 when the file has absolute times; trace time then counts
    # from the first row, so `--window 14h:22h` means hours into the file, not since 1970.
    epoch: float | None = None
    load: TraceLoad = field(default_factory=TraceLoad)

    @property
    def duration(self) -> float:
        return len(self.rates) * self.bin


def parse_max_gap(text: str) -> float:
    if text.strip().lower() in ("none", "inf"):
        return math.inf
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise SimInputError(f"--max-gap: {exc}; or 'none' for no limit") from None


def load_trace(
    path: str | Path,
    *,
    time_col: str | None = None,
    value_col: str | None = None,
    counts: bool = False,
    max_gap: float = DEFAULT_MAX_GAP,
) -> Trace:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: spreadsheets start CSV with a BOM
    except UnicodeDecodeError:
        raise SimInputError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise SimInputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if looks_like_json(name, text):
        for flag, value in (("--time-col", time_col), ("--value-col", value_col)):
            if value is not None:
                raise SimInputError(f"{flag}: only for CSV traces; {name} is JSON")
        raw = read_prometheus(name, text)
    else:
        raw = read_csv(name, text, time_col, value_col)
    return _assemble(name, raw, counts, max_gap)


def _when(t: float, absolute: bool) -> str:
    if absolute:
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    return f"{t:g}s"


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def _step(diffs: np.ndarray) -> float:
    """The most common difference between consecutive times (ties: the shorter).

    Not the median: with rows removed at random single steps stay the most common difference however
    many are missing, where the median of [60, 180] is a 120 s step that no row fits. Differences are
    rounded first so that stamps a few ms late (scrapers use their own clock) count as one step:
    monitoring steps are whole seconds, so a difference within 1 % of one is that.
    """
    r = np.round(diffs, 3)
    whole = np.round(r)
    r = np.where((whole >= 1) & (np.abs(r - whole) <= 0.01 * r), whole, r)
    r = r[r > 0]
    if r.size == 0:  # sub-millisecond steps: no rounding
        return float(diffs.min())
    values, counts = np.unique(r, return_counts=True)
    return float(values[int(np.argmax(counts))])


def _assemble(name: str, raw: RawRows, counts: bool, max_gap: float) -> Trace:
    for where, x in zip(raw.where, raw.v, strict=True):
        if x is not None and not (math.isfinite(x) and x >= 0):
            raise SimInputError(f"{where}: value must be finite and >= 0 (got {x:g})")
    has = np.flatnonzero([x is not None for x in raw.v])  # row numbers (file order) with a value
    if has.size < 2:
        raise SimInputError(f"{name}: {_rows(int(has.size))} with a value: a trace needs at least 2")
    # Rows with an empty value still say where the grid is: they take part in finding the step.
    t = np.asarray(raw.t, dtype=np.float64)
    out_of_order = int(np.count_nonzero(t[1:] < np.maximum.accumulate(t)[:-1]))
    diffs = np.diff(np.sort(t))
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        raise SimInputError(f"{name}: every row has the same time ({_when(t[0], raw.absolute)})")
    step = _step(diffs)
    t0 = float(t.min())
    pos = (t - t0) / step
    cell = np.rint(pos).astype(np.int64)
    # A row that does not fit the step's grid is named rather than silently moved.
    off = np.flatnonzero(np.abs(pos - cell) > GRID_TOLERANCE)
    if off.size:
        i = int(off[0])
        raise SimInputError(
            f"{raw.where[i]}: time {_when(t[i], raw.absolute)} is {abs(pos[i] - cell[i]):.0%} of a "
            f"step off the {format_duration(step)} grid of the other rows: rows must be evenly spaced "
            "(missing rows are fine)"
        )
    # A time given twice keeps the row further down the file: a later export of the same interval
    # replaces an earlier one (the last row of an export is often an interval still being counted),
    # where a mean would blend a partial count into the final one. An empty cell replaces nothing.
    vc, vt, vv = cell[has], t[has], np.asarray([raw.v[i] for i in has], dtype=np.float64)
    order = np.lexsort((has, vc))  # by cell, then by position in the file
    last = np.r_[vc[order][1:] != vc[order][:-1], True]
    keep = order[last]  # one row per cell, in time order
    if keep.size < 2:
        raise SimInputError(f"{name}: every row with a value has the same time ({_when(t0, raw.absolute)})")
    known = vc[keep]
    first = int(known[0])  # empty rows before the first value (or after the last) cannot be filled
    known = known - first
    rates = np.full(int(known[-1]) + 1, np.nan)
    rates[known] = vv[keep]
    gaps = np.diff(known) - 1
    big = np.flatnonzero(gaps * step > max_gap + 1e-9)
    if big.size:
        j = int(big[0])
        raise SimInputError(
            f"{raw.where[has[keep[j + 1]]]}: {_rows(int(gaps[j]))} missing before this row (a gap of "
            f"{format_duration(gaps[j] * step)} after the row at {_when(vt[keep[j]], raw.absolute)}), "
            f"longer than --max-gap {format_duration(max_gap)}: pass a larger --max-gap to fill it"
        )
    # Fill rule: linear interpolation between the rows either side. A missing row in an export means
    # the exporter or the scrape failed, not that nobody came: zeros would fake an idle spell that
    # makes every policy scale in, and carrying the last value forward shifts every ramp late by the
    # gap; the straight line is unbiased for load that changes smoothly over the gap, and never leaves
    # the range of the two rows that were measured. Longer gaps than `max_gap` were refused above.
    missing = np.flatnonzero(np.isnan(rates))
    if missing.size:
        rates[missing] = np.interp(missing, known, vv[keep])
    if counts:
        rates /= step
    notes = tuple(n for n in raw.notes if not (counts and "--counts" in n))
    load = TraceLoad(
        format=raw.format,
        times=raw.times,
        columns=raw.columns,
        counts=counts,
        rows=len(raw.t),
        filled=int(missing.size),
        empty=len(raw.t) - int(has.size),
        duplicates=int(has.size - keep.size),
        out_of_order=out_of_order,
        max_gap=max_gap,
        notes=notes,
    )
    start = t0 + first * step
    if raw.absolute:
        return Trace(Path(name).stem, step, 0.0, rates, epoch=start, load=load)
    return Trace(Path(name).stem, step, start, rates, load=load)


def parse_window(text: str) -> tuple[float | None, float | None]:
    """`START:END` in trace time (durations like 14h, 90m, 3600); either side may be empty."""
    if ":" not in text:
        raise SimInputError(f"--window: expected START:END like 14h:22h or :3600 (got {text!r})")
    a, _, b = text.partition(":")
    try:
        start = parse_duration(a) if a.strip() else None
        end = parse_duration(b) if b.strip() else None
    except ValueError as exc:
        raise SimInputError(f"--window: {exc}") from None
    if start is not None and end is not None and end <= start:
        raise SimInputError(f"--window: END must be after START (got {text!r})")
    return start, end


def select_window(trace: Trace, start: float | None, end: float | None) -> Trace:
    """The bins whose start lies in [start, end) of trace time."""
    t = trace.start + np.arange(len(trace.rates)) * trace.bin
    keep = np.ones(len(t), dtype=bool)
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t < end
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        last = trace.start + trace.duration
        raise SimInputError(
            f"--window: no rows in the window; the trace covers {trace.start:g}s to {last:g}s"
        )
    return replace(trace, start=float(t[idx[0]]), rates=trace.rates[idx[0] : idx[-1] + 1].copy())
