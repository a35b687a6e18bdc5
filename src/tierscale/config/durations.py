"""Durations and sizes as people write them in a config file.

Durations: `500ms`, `15s`, `2m`, `1h`, `1d`, compounds like `1h30m` (Go's time.ParseDuration style), or a
bare number meaning seconds. Result: float seconds.

Sizes: `512k`, `128m`, `1g`, `256MiB`, `1.5GiB`, or bare bytes. Result: int bytes. Every unit is binary
(k = 1024): that is what Docker (`--memory 128m`) and libvirt mean by these suffixes, and a config that
says `128m` for both tiers must mean the same thing.
"""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_HINT", "SIZE_HINT", "format_duration", "parse_duration", "parse_size"]

DURATION_HINT = "expected a duration like 500ms, 15s, 2m"
SIZE_HINT = "expected a size like 512k, 128m, 1g, 256MiB"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One `<number><unit>` component; `ms` comes before `m` in the alternation, else `500ms` reads as
# `500m` followed by garbage.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **{u: 1024 for u in ("k", "kb", "kib")},
    **{u: 1024**2 for u in ("m", "mb", "mib")},
    **{u: 1024**3 for u in ("g", "gb", "gib")},
    **{u: 1024**4 for u in ("t", "tb", "tib")},
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)")


def _check_number(value: float, what: str, original: object) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite (got {original!r})")
    if value < 0:
        raise ValueError(f"{what} must not be negative (got {original!r})")
    return float(value)


def parse_duration(value: str | float) -> float:
    """Seconds from `500ms`, `15s`, `2m`, `1h30m`, `1.5h` or a bare number of seconds.

    Raises ValueError with a message fit to show a user. Negative and infinite durations are rejected
    here, because no duration in tierscale can mean either.
    """
    # bool is an int subclass; `timeout: yes` is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"{DURATION_HINT} (got {value!r})")
    if isinstance(value, int | float):
        return _check_number(value, "duration", value)
    if not isinstance(value, str):
        raise ValueError(f"{DURATION_HINT} (got {type(value).__name__})")
    text = value.strip()
    if not text:
        raise ValueError(f"{DURATION_HINT} (got an empty string)")
    if text.startswith("-"):
        raise ValueError(f"duration must not be negative (got {value!r})")
    if _NUMBER.fullmatch(text):
        return _check_number(float(text), "duration", value)
    body = text[1:] if text.startswith("+") else text
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:  # garbage between components, e.g. `1h 30m` or `1x2s`
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body):
        raise ValueError(f"{DURATION_HINT} (got {value!r})")
    return _check_number(total, "duration", value)


def parse_size(value: str | int) -> int:
    """Bytes from `512k`, `128m`, `1g`, `256MiB`, `1.5GiB` or a bare integer number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{SIZE_HINT} (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative (got {value!r})")
        return value
    if isinstance(value, float):
        # A bare float is almost always a forgotten unit (`memory: 0.5`), and half a byte means nothing.
        raise ValueError(f"{SIZE_HINT} (got {value!r}: a bare number means bytes and must be whole)")
    if not isinstance(value, str):
        raise ValueError(f"{SIZE_HINT} (got {type(value).__name__})")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"size must not be negative (got {value!r})")
    match = _SIZE.fullmatch(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{SIZE_HINT} (got {value!r})")
    number, unit = match.group(1), match.group(2).lower()
    if unit in ("", "b") and "." in number:
        raise ValueError(f"{SIZE_HINT} (got {value!r}: bytes must be whole)")
    return round(float(number) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    """The shortest config-style spelling of a duration (for messages): 0.5 -> 500ms, 90 -> 1m30s."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    out = ""
    rest = int(seconds)
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out
