"""Readers for the files a trace comes in: CSV (any header, delimiter and time format) and Prometheus JSON.

A reader turns the file into raw rows: a time in seconds, a value (None when the cell is empty) and where
the row is, for messages. It does no sorting, de-duplication or gap filling: `trace.load_trace` does that
once for every format, so the rules cannot drift apart between formats.

Time formats, decided by the first row and then required of every row:
- a number: below 1e8 it is seconds of trace time (the lab's `t_seconds`, which may start anywhere); from
  1e8 (1973-03-03 as epoch seconds) it is an epoch time, and its magnitude gives the unit: seconds below
  1e11, milliseconds below 1e14, microseconds below 1e17, nanoseconds above. Every epoch time from 1973
  to 5138 falls in exactly one band, so the guess cannot be wrong for real monitoring data;
- ISO 8601 (`2024-05-01T14:00:00Z`, `+02:00`, a space for the `T`, fractions); without a zone it is UTC.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tierscale.simulate.errors import SimInputError

__all__ = ["RawRows", "looks_like_json", "read_csv", "read_prometheus"]

# Header names recognised without --time-col / --value-col, lower-case, in order of preference.
TIME_NAMES = ("t_seconds", "time", "timestamp", "ts", "t", "datetime", "date", "period", "epoch", "_time")
VALUE_NAMES = (
    "requests_per_second",
    "rps",
    "rate",
    "value",
    "_value",
    "requests",
    "count",
    "hits",
    "total",
)
# Value columns whose name says "a number of requests", not "per second": worth a hint without --counts.
COUNT_NAMES = frozenset({"count", "counts", "requests", "hits", "total", "sum", "increase", "n"})

EPOCH_FROM = 1e8  # smaller numbers are trace seconds, as in the lab's traces
# Upper bounds of the epoch units (see the module docstring): (below, divisor, name).
EPOCH_UNITS = ((1e11, 1.0, "epoch s"), (1e14, 1e3, "epoch ms"), (1e17, 1e6, "epoch µs"))
EPOCH_NS = (1e9, "epoch ns")
ISO = "ISO 8601"
RELATIVE = "seconds"
MISSING = frozenset({"", "null", "none"})  # an empty cell is a missing row; NaN is refused (see trace.py)
DELIMITERS = (",", ";", "\t")


@dataclass
class RawRows:
    """Rows as read, in file order."""

    format: str  # "CSV" or "Prometheus JSON"
    times: str  # RELATIVE, ISO or one of the epoch unit names
    absolute: bool  # times are wall-clock (ISO or epoch), not trace seconds
    t: list[float] = field(default_factory=list)  # seconds (epoch seconds when absolute)
    v: list[float | None] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "FILE:LINE" or "FILE: data.result[0].values[i]"
    columns: tuple[str, str] | None = None  # time and value column names (CSV with a header)
    notes: list[str] = field(default_factory=list)


def looks_like_json(name: str, text: str) -> bool:
    return name.lower().endswith(".json") or text.lstrip()[:1] in ("{", "[")


class _Times:
    """Parses one file's times: the first row fixes the kind and unit, later rows must agree."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.div = 1.0

    @staticmethod
    def _classify(x: float) -> tuple[str, float]:
        a = abs(x)
        if a < EPOCH_FROM:
            return RELATIVE, 1.0
        for below, div, name in EPOCH_UNITS:
            if a < below:
                return name, div
        return EPOCH_NS[1], EPOCH_NS[0]

    def parse(self, text: str, where: str) -> float:
        s = text.strip()
        try:
            x = float(s)
        except ValueError:
            x = None
        if x is not None:
            if not math.isfinite(x):
                raise SimInputError(f"{where}: unparseable time {text!r} (not finite)")
            kind, div = self._classify(x)
            # Trace seconds and epoch seconds share a unit: only a change of unit is a mix-up.
            same = kind == self.kind or {kind, self.kind} <= {RELATIVE, "epoch s"}
            if self.kind is None:
                self.kind, self.div = kind, div
            elif self.kind == ISO or not same:
                raise SimInputError(
                    f"{where}: time {s!r} is not in the first row's format ({self.kind}, read as {kind})"
                )
            return x / self.div
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise SimInputError(
                f"{where}: unparseable time {text!r} (expected seconds, epoch seconds or milliseconds, "
                "or ISO 8601 like 2024-05-01T14:00:00Z)"
            ) from None
        if self.kind is None:
            self.kind = ISO
        elif self.kind != ISO:
            raise SimInputError(f"{where}: time {s!r} is not in the first row's format ({self.kind})")
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()

    @property
    def absolute(self) -> bool:
        return self.kind not in (None, RELATIVE)


def _value(text: Any, where: str) -> float | None:
    """A rate or count; None for an empty cell. The checks for NaN and sign are the loader's."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise SimInputError(f"{where}: value must be a number (got {text!r})")
    if isinstance(text, int | float):
        return float(text)
    if not isinstance(text, str):
        raise SimInputError(f"{where}: value must be a number (got {text!r})")
    s = text.strip()
    if s.lower() in MISSING:
        return None
    try:
        return float(s)
    except ValueError:
        raise SimInputError(f"{where}: value must be a number (got {text!r})") from None


def _delimiter(line: str) -> str:
    counts = [line.count(d) for d in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))] if max(counts) else ","


def _pick(header: list[str], wanted: str | None, names: tuple[str, ...]) -> int | None:
    """The column `wanted` names (-1: none does), or the first recognised name (None: none is)."""
    low = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.strip().lower() in low:
            return low.index(wanted.strip().lower())
        if wanted.isdigit() and 1 <= int(wanted) <= len(header):
            return int(wanted) - 1  # 1-based position: the only way to name a column without a header
        return -1
    return next((low.index(n) for n in names if n in low), None)


def _is_time(text: str) -> bool:
    try:
        _Times().parse(text, "")
    except SimInputError:
        return False
    return True


def read_csv(name: str, text: str, time_col: str | None, value_col: str | None) -> RawRows:
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise SimInputError(f"{name}: empty file: fewer than 2 rows, a trace needs at least 2")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(first), skipinitialspace=True)
    rows = ((reader.line_num, row) for row in reader if any(c.strip() for c in row))
    rows = ((no, row) for no, row in rows if not row[0].lstrip().startswith("#"))
    header_no, header = next(rows, (1, []))
    width = len(header)
    # No header when the first row already is data, every field a number or a time: exports like
    # VictoriaMetrics'. A headerless file with a text column (a host name) reads that row as its header.
    has_header = not all(_is_number(f) or _is_time(f) for f in header)
    names = [h.strip() for h in header] if has_header else [str(i + 1) for i in range(width)]
    if width < 2:
        raise SimInputError(
            f"{name}:{header_no}: need a time column and a value column; found {width} column "
            f"({', '.join(names) or 'none'})"
        )
    ti = _pick(names, time_col, TIME_NAMES if has_header else ())
    vi = _pick(names, value_col, VALUE_NAMES if has_header else ())
    for idx, wanted, flag in ((ti, time_col, "--time-col"), (vi, value_col, "--value-col")):
        if idx == -1:
            has = f"the header has: {', '.join(names)}" if has_header else f"no header; {width} columns"
            raise SimInputError(f"{name}:{header_no}: {flag} {wanted}: no such column ({has})")
    # Without a recognised name, two columns are time then value, as in the lab's own traces.
    if ti is None:
        ti = 0 if vi != 0 else 1
    if vi is None:
        rest = [i for i in range(width) if i != ti]
        if len(rest) != 1:
            has = f"the header has: {', '.join(names)}" if has_header else f"no header, {width} columns"
            raise SimInputError(
                f"{name}:{header_no}: which column holds the values? {has} (pick one with --value-col)"
            )
        vi = rest[0]
    if ti == vi:
        raise SimInputError(f"{name}:{header_no}: the time and the value column are both {names[ti]!r}")
    times = _Times()
    raw = RawRows("CSV", RELATIVE, False, columns=(names[ti], names[vi]) if has_header else None)
    data = rows if has_header else _chain((header_no, header), rows)
    for no, row in data:
        where = f"{name}:{no}"
        if len(row) != width:
            raise SimInputError(
                f"{where}: expected {width} values like the {'header' if has_header else 'first row'}, "
                f"got {len(row)}"
            )
        raw.t.append(times.parse(row[ti], where))
        raw.v.append(_value(row[vi], where))
        raw.where.append(where)
    raw.times, raw.absolute = times.kind or RELATIVE, times.absolute
    if has_header and names[vi].lower() in COUNT_NAMES:
        raw.notes.append(
            f"the value column is named {names[vi]!r}: if it holds requests per row, not per second, "
            "pass --counts"
        )
    return raw


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _chain(first: tuple[int, list[str]], rest: Any) -> Any:
    yield first
    yield from rest


def read_prometheus(name: str, text: str) -> RawRows:
    """The body of `GET /api/v1/query_range` (or its `data` object): exactly one series of [time, "value"]."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SimInputError(f"{name}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    expected = 'expected a Prometheus query_range response {"status": "success", "data": {...}}'
    if not isinstance(doc, dict):
        raise SimInputError(f"{name}: {expected} or its data object (got a JSON {type(doc).__name__})")
    data: Any = doc
    if "status" in doc:
        if doc["status"] != "success":
            why = ": ".join(str(doc[k]) for k in ("errorType", "error") if k in doc) or "no detail"
            raise SimInputError(f"{name}: the Prometheus response has status {doc['status']!r} ({why})")
        data = doc.get("data")
    if not isinstance(data, dict) or "resultType" not in data:
        raise SimInputError(f"{name}: {expected} or its data object (no data.resultType)")
    if data["resultType"] != "matrix":
        raise SimInputError(
            f"{name}: resultType is {data['resultType']!r}: a trace needs a range query "
            "(/api/v1/query_range), whose result is a 'matrix'"
        )
    result = data.get("result")
    if not isinstance(result, list) or len(result) != 1:
        series_list = result if isinstance(result, list) else []
        count = len(series_list)
        labels = [_labels(s.get("metric")) for s in series_list[:3] if isinstance(s, dict)]
        more = f": {'; '.join(labels)}{' …' if count > 3 else ''}" if labels else ""
        raise SimInputError(
            f"{name}: the result has {count} series, a trace is exactly one (aggregate the query, e.g. "
            f"sum(rate(...)), or select one series){more}"
        )
    series = result[0]
    values = series.get("values") if isinstance(series, dict) else None
    if not isinstance(values, list):
        raise SimInputError(f"{name}: data.result[0] has no 'values' list of [time, \"value\"] pairs")
    raw = RawRows("Prometheus JSON", "epoch s", True)
    for i, pair in enumerate(values):
        where = f"{name}: data.result[0].values[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise SimInputError(f'{where}: expected a [time, "value"] pair (got {json.dumps(pair)[:40]})')
        t = pair[0]
        try:
            # The API always sends epoch seconds: no unit guessing.
            ts = float(t) if not isinstance(t, bool) else math.nan
        except (TypeError, ValueError):
            ts = math.nan
        if not math.isfinite(ts):
            raise SimInputError(f"{where}: unparseable time {json.dumps(t)[:40]} (expected epoch seconds)")
        raw.t.append(ts)
        raw.v.append(_value(pair[1], where))
        raw.where.append(where)
    if isinstance(series.get("metric"), dict) and series["metric"]:
        raw.notes.append(f"series {_labels(series['metric'])}")
    return raw


def _labels(metric: Any) -> str:
    if not isinstance(metric, dict) or not metric:
        return "{}"
    name = metric.get("__name__", "")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{rest}}}"
