"""Request-rate traces: `t_seconds,requests_per_second`, one row per bin, each rate held until the next row.

This is the format of the lab's `traces/` directory (see its PROVENANCE.md): `t_seconds` is an integer
that starts anywhere and grows by a fixed bin width; `requests_per_second` is the mean rate over
`[t, t + bin)`. Problems are reported as `FILE:LINE: message`, one line, like config problems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierscale.config.durations import parse_duration

__all__ = ["HEADER", "SimInputError", "Trace", "load_trace", "parse_window", "select_window"]

HEADER = ("t_seconds", "requests_per_second")


class SimInputError(ValueError):
    """Bad input to the simulator (trace, options, config): shown as one line, exit 2."""


@dataclass(frozen=True)
class Trace:
    name: str
    bin: float  # seconds per row, in trace time
    start: float  # trace time of rates[0]
    rates: np.ndarray  # requests per second, one per bin

    @property
    def duration(self) -> float:
        return len(self.rates) * self.bin


def load_trace(path: str | Path) -> Trace:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SimInputError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise SimInputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    lines = text.splitlines()
    if not lines or tuple(c.strip() for c in lines[0].split(",")) != HEADER:
        raise SimInputError(f"{name}:1: expected the header {','.join(HEADER)}")
    times: list[int] = []
    rates: list[float] = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 2:
            raise SimInputError(f"{name}:{no}: expected 2 comma-separated values, got {len(parts)}")
        t_text, r_text = parts[0].strip(), parts[1].strip()
        if not t_text.lstrip("-").isdigit():
            raise SimInputError(f"{name}:{no}: t_seconds must be a whole number (got {t_text!r})")
        try:
            rate = float(r_text)
        except ValueError:
            raise SimInputError(
                f"{name}:{no}: requests_per_second must be a number (got {r_text!r})"
            ) from None
        if not math.isfinite(rate) or rate < 0:
            raise SimInputError(f"{name}:{no}: requests_per_second must be finite and >= 0 (got {r_text})")
        t = int(t_text)
        if times:
            step = t - times[-1]
            if step <= 0:
                raise SimInputError(f"{name}:{no}: t_seconds must increase (got {t} after {times[-1]})")
            if len(times) >= 2 and step != times[1] - times[0]:
                raise SimInputError(
                    f"{name}:{no}: rows must be evenly spaced: step {step}s here, {times[1] - times[0]}s "
                    f"before (a gap in the trace?)"
                )
        times.append(t)
        rates.append(rate)
    if not times:
        raise SimInputError(f"{name}: no rows after the header")
    bin_width = float(times[1] - times[0]) if len(times) > 1 else 1.0
    return Trace(Path(name).stem, bin_width, float(times[0]), np.asarray(rates, dtype=np.float64))


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
    return Trace(trace.name, trace.bin, float(t[idx[0]]), trace.rates[idx[0] : idx[-1] + 1].copy())
