"""Duration and size parsing: the spellings users write, and the ones that must be refused."""

from __future__ import annotations

import math

import pytest

from tierscale.config.durations import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1h0m5s", 3605.0),
        ("2s500ms", 2.5),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        (".5s", 0.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("15", 15.0),
        ("2.5", 2.5),
        (" 15s ", 15.0),
        ("+3s", 3.0),
        (15, 15.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration_ok(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "expected a duration like 500ms, 15s, 2m"),
        ("abc", "expected a duration like 500ms, 15s, 2m"),
        ("15x", "expected a duration like 500ms, 15s, 2m"),
        ("s", "expected a duration like 500ms, 15s, 2m"),
        ("1h 30m", "expected a duration like 500ms, 15s, 2m"),
        ("2mm", "expected a duration like 500ms, 15s, 2m"),
        ("15S", "expected a duration like 500ms, 15s, 2m"),
        ("1.2.3s", "expected a duration like 500ms, 15s, 2m"),
        ("-5s", "must not be negative"),
        ("-1", "must not be negative"),
        (-3, "must not be negative"),
        (-0.5, "must not be negative"),
        (math.inf, "must be finite"),
        ("inf", "expected a duration"),
        (True, "expected a duration"),
        (None, "expected a duration"),
        ([1], "expected a duration"),
    ],
)
def test_parse_duration_bad(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_duration_error_names_the_input() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("fortnight")
    assert str(info.value) == "expected a duration like 500ms, 15s, 2m (got 'fortnight')"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("128m", 128 * 1024**2),
        ("128M", 128 * 1024**2),
        ("256MiB", 256 * 1024**2),
        ("256mb", 256 * 1024**2),
        ("1g", 1024**3),
        ("1GiB", 1024**3),
        ("1.5g", 3 * 1024**3 // 2),
        ("512k", 512 * 1024),
        ("512KiB", 512 * 1024),
        ("2t", 2 * 1024**4),
        ("100", 100),
        ("100b", 100),
        ("64 MiB", 64 * 1024**2),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_ok(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "expected a size like 512k, 128m, 1g, 256MiB"),
        ("12q", "expected a size like"),
        ("m", "expected a size like"),
        ("", "expected a size like"),
        ("1.5", "bytes must be whole"),
        (1.5, "must be whole"),
        ("-1m", "must not be negative"),
        (-5, "must not be negative"),
        (True, "expected a size"),
        (None, "expected a size"),
    ],
)
def test_parse_size_bad(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (0, "0s"), (15, "15s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (1.5, "1.5s")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
