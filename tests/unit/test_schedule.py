"""Scheduled scaling: cron parsing, firing windows, bounds overrides, and the `schedule:` config keys."""

from __future__ import annotations

import math
import zoneinfo
from datetime import UTC, datetime, tzinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierscale.config import ConfigError, load_config_text, schedule_entries
from tierscale.policy import HpaParams, PolicyState, decide_hpa
from tierscale.policy.schedule import (
    CronSpec,
    ScheduleEntry,
    active_entries,
    apply_schedule,
    last_fire,
    next_fire_after,
    note_schedule,
    parse_cron,
    scheduled_bounds,
)
from tierscale.policy.types import GroupSnapshot, MetricInput

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# ---- cron ----------------------------------------------------------------------------------------------


def test_parse_fields_steps_ranges_names_and_macros() -> None:
    c = parse_cron("*/15 8-18/5 1,15 jan-mar MON-fri")
    assert c.minutes == {0, 15, 30, 45}
    assert c.hours == {8, 13, 18}
    assert c.days == {1, 15}
    assert c.months == {1, 2, 3}
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert (c.days_restricted, c.weekdays_restricted) == (True, True)
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}
    assert parse_cron("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    daily = parse_cron("@daily")
    assert (daily.minutes, daily.hours, daily.weekdays_restricted) == ({0}, {0}, False)
    assert parse_cron("@hourly").hours == set(range(24))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("* * * *", "expected 5 fields"),
        ("61 * * * *", "minute: 61 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("*/0 * * * *", "step must be a positive number"),
        ("5-1 * * * *", "range 5-1 runs backwards"),
        ("1,,2 * * * *", "empty list item"),
        ("", "expected a cron expression"),
        ("@often", "expected 5 fields"),
    ],
)
def test_bad_cron(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cron(text)


def _fires_at(spec: CronSpec, t: float, tz: tzinfo) -> bool:
    d = datetime.fromtimestamp(t, tz)
    return d.minute in spec.minutes and d.hour in spec.hours and spec.day_matches(d.date())


def _brute_last_fire(spec: CronSpec, now: float, not_before: float, tz: tzinfo) -> float | None:
    t = math.floor(now / 60) * 60
    while t > not_before:
        if _fires_at(spec, t, tz):
            return t
        t -= 60
    return None


SPECS = ["*/7 * * * *", "30 9 * * mon-fri", "0 0 1,15 * sun", "15 3-5 * feb,mar *", "0 12 29 2 *", "@hourly"]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(SPECS),
    st.floats(ts("2023-01-01T00:00:00"), ts("2025-12-31T00:00:00")),
    st.floats(60, 2 * 86400),
    st.sampled_from([UTC, PARIS]),
)
def test_last_fire_matches_a_minute_by_minute_scan(text: str, now: float, window: float, tz: tzinfo) -> None:
    spec = parse_cron(text)
    assert last_fire(spec, now, now - window, tz) == _brute_last_fire(spec, now, now - window, tz)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    spec = parse_cron("0 0 13 * fri")  # Vixie cron: the 13th OR any Friday
    assert spec.day_matches(datetime(2024, 3, 13).date())  # a Wednesday
    assert spec.day_matches(datetime(2024, 3, 15).date())  # a Friday
    assert not spec.day_matches(datetime(2024, 3, 14).date())
    only_dom = parse_cron("0 0 13 * *")
    assert not only_dom.day_matches(datetime(2024, 3, 15).date())


def test_time_zone_follows_daylight_saving() -> None:
    spec = parse_cron("0 9 * * *")
    winter = last_fire(spec, ts("2024-01-10T12:00:00"), ts("2024-01-09T12:00:00"), PARIS)
    summer = last_fire(spec, ts("2024-07-10T12:00:00"), ts("2024-07-09T12:00:00"), PARIS)
    assert winter == ts("2024-01-10T08:00:00")  # CET = UTC+1
    assert summer == ts("2024-07-10T07:00:00")  # CEST = UTC+2
    assert next_fire_after(spec, ts("2024-07-10T07:00:00"), PARIS) == ts("2024-07-11T07:00:00")


# ---- windows and bounds --------------------------------------------------------------------------------


def entry(cron: str, duration: float, lo: int | None = None, hi: int | None = None, name: str | None = None):
    return ScheduleEntry(parse_cron(cron), duration, lo, hi, name)


def test_an_entry_is_active_for_duration_after_each_firing() -> None:
    business = entry("0 8 * * mon-fri", 10 * 3600, lo=4, name="business")
    monday = ts("2024-03-04T00:00:00")
    assert not active_entries((business,), monday + 7.99 * 3600)
    assert active_entries((business,), monday + 8 * 3600) == (business,)  # from the firing minute on
    assert active_entries((business,), monday + 17.9 * 3600) == (business,)
    assert not active_entries((business,), monday + 18 * 3600)  # [fire, fire + duration)
    assert not active_entries((business,), ts("2024-03-09T10:00:00"))  # Saturday


def test_overlapping_entries_take_the_largest_bounds_and_max_never_below_min() -> None:
    now = ts("2024-03-04T12:00:00")
    a = entry("0 * * * *", 3600, lo=3)
    b = entry("0 12 * * *", 600, lo=6, hi=8)
    c = entry("0 0 1 1 *", 60, lo=50)  # not active
    assert scheduled_bounds((a, b, c), 1, 10, now)[:2] == (6, 8)
    assert scheduled_bounds((a,), 1, 10, now)[:2] == (3, 10)
    assert scheduled_bounds((entry("0 * * * *", 3600, lo=12),), 1, 10, now)[:2] == (12, 12)
    assert scheduled_bounds((entry("0 * * * *", 3600, hi=2),), 1, 10, now)[:2] == (1, 2)
    assert scheduled_bounds((), 1, 10, now) == (1, 10, ())


def test_apply_schedule_raises_min_and_the_policy_scales_to_it() -> None:
    now = ts("2024-03-04T08:30:00")
    snap = GroupSnapshot(now, 2, 1, 10, (), (MetricInput("requests_per_replica", "total", 10.0, total=15.0),))
    sched, note = apply_schedule((entry("0 8 * * *", 3600, lo=5, name="morning"),), snap)
    assert (sched.min_replicas, sched.max_replicas) == (5, 10)
    assert note == "schedule morning: bounds [5, 10]"
    decision, _ = decide_hpa(HpaParams(), sched, PolicyState())
    decision = note_schedule(decision, note)
    assert decision.desired == 5
    assert decision.reason.endswith("; schedule morning: bounds [5, 10]")
    unchanged, none = apply_schedule((entry("0 20 * * *", 60, lo=5),), snap)
    assert (unchanged, none) == (snap, None)


# ---- config ------------------------------------------------------------------------------------------------

FILE = "cfg.yaml"
HEAD = """\
groups:
  - name: web
    tier: process
    min: 1
    max: 10
    template: {command: [run]}
"""


ENTRY = '    schedule:\n      - cron: "0 8 * * *"\n        duration: 1h\n'


def load(tail: str):
    return load_config_text(HEAD + tail, FILE)


def test_schedule_config_is_converted() -> None:
    cfg = load(
        """\
    schedule:
      - {name: business, cron: "0 8 * * mon-fri", duration: 10h, min: 4, timezone: Europe/Paris}
      - {cron: "@daily", duration: 30m, max: 3}
"""
    )
    (a, b) = schedule_entries(cfg.groups[0])
    assert (a.name, a.duration, a.min, a.max, a.cron.hours) == ("business", 36000.0, 4, None, {8})
    assert str(a.tz) == "Europe/Paris"
    assert (b.name, b.duration, b.min, b.max, b.label) == (None, 1800.0, None, 3, "@daily")
    assert schedule_entries(load("").groups[0]) == ()


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            '    schedule:\n      - cron: "61 8 * * *"\n        duration: 1h\n        min: 2\n',
            "cfg.yaml:8: groups[0].schedule[0].cron: minute: 61 is outside 0-59",
        ),
        (
            '    schedule:\n      - {cron: "0 8 * * *", min: 2}\n',
            "cfg.yaml:8: groups[0].schedule[0].duration: required",
        ),
        (
            '    schedule:\n      - cron: "0 8 * * *"\n        duration: 1h\n',
            "cfg.yaml:8: groups[0].schedule[0]: needs min, max or both: the bounds to apply while it is "
            "active",
        ),
        (
            ENTRY + "        min: 5\n        max: 3\n",
            "cfg.yaml:11: groups[0].schedule[0].max: must be >= min (5)",
        ),
        (
            '    schedule:\n      - cron: "0 8 * * *"\n        duration: 1h\n        min: 2\n'
            "        timezone: Mars/Olympus\n",
            "cfg.yaml:11: groups[0].schedule[0].timezone: unknown time zone 'Mars/Olympus': use an IANA "
            "name like UTC or Europe/Paris",
        ),
        (
            '    schedule:\n      - cron: "0 8 * * *"\n        duration: 1h\n        min: 20\n',
            "cfg.yaml:10: groups[0].schedule[0].min: must be <= the group's max (10) unless this entry "
            "also sets max",
        ),
        (
            '    min: 3\n    schedule:\n      - cron: "0 8 * * *"\n        duration: 1h\n        max: 2\n',
            "cfg.yaml:10: groups[0].schedule[0].max: must be >= the group's min (3) unless this entry "
            "also sets min",
        ),
        (
            '    schedule:\n      - cron: "0 8 * * *"\n        duration: 0s\n        min: 2\n',
            "cfg.yaml:9: groups[0].schedule[0].duration: must be > 0",
        ),
        (
            ENTRY + "        min: 2\n        days: 3\n",
            "cfg.yaml:11: groups[0].schedule[0].days: unknown key",
        ),
        (
            "    schedule: {cron: '@daily'}\n",
            "cfg.yaml:7: groups[0].schedule: expected a list (got a mapping)",
        ),
    ],
)
def test_bad_schedule_config(tail: str, expected: str) -> None:
    text = HEAD.replace("    min: 1\n", "") if tail.startswith("    min:") else HEAD
    with pytest.raises(ConfigError) as info:
        load_config_text(text + tail, FILE)
    assert [str(p) for p in info.value.problems] == [expected]
