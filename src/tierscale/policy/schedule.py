"""Scheduled scaling: cron-started windows that override a group's min/max (AWS scheduled actions).

Pure: no I/O and no clock. Times are epoch seconds handed in by the caller (the snapshot's `now`), and an
entry carries an already-loaded `tzinfo`, so evaluating a schedule never touches the disk.

An entry is active from each time its cron expression fires until `duration` later. While entries are
active the group's bounds become: min = the largest `min` of the active entries (or the group's min),
max = the largest `max` of the active entries (or the group's max), and max is never below min. The
policy then runs unchanged on those bounds, so a raised min scales out at once and a lowered max scales in
through the normal path (drain, then delete).

Cron syntax: five fields `minute hour day-of-month month day-of-week` with `*`, `a`, `a-b`, lists
`a,b`, steps `*/n` and `a-b/n`, month and weekday names (`jan`, `mon`), weekday 0 or 7 for Sunday, and the
macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. As in Vixie
cron, when both day-of-month and day-of-week are restricted a day matches if either does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo

from tierscale.policy.types import Decision, GroupSnapshot

__all__ = [
    "CronSpec",
    "ScheduleEntry",
    "active_entries",
    "apply_schedule",
    "last_fire",
    "next_fire_after",
    "note_schedule",
    "parse_cron",
    "scheduled_bounds",
]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, low, high, names)
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


@dataclass(frozen=True)
class CronSpec:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # of the month
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 is folded into 0)
    days_restricted: bool  # the day-of-month field was not `*`
    weekdays_restricted: bool

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow  # Vixie cron: either one
        return dom and dow


def _value(token: str, name: str, lo: int, hi: int, names: dict[str, int]) -> int:
    word = token.lower()
    if word in names:
        return names[word]
    if not token.isdigit():
        raise ValueError(f"{name}: {token!r} is not a number" + (" or a name" if names else ""))
    n = int(token)
    if not lo <= n <= hi:
        raise ValueError(f"{name}: {n} is outside {lo}-{hi}")
    return n


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{name}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name}: step must be a positive number (got {step_text!r})")
            step = int(step_text)
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _value(a, name, lo, hi, names), _value(b, name, lo, hi, names)
            if first > last:
                raise ValueError(f"{name}: range {base} runs backwards")
        else:
            first = _value(base, name, lo, hi, names)
            last = hi if slash else first  # `5/15` means 5, 20, 35, 50
        out.update(range(first, last + 1, step))
    return frozenset(out)


def parse_cron(text: str) -> CronSpec:
    """Parse a five-field cron expression or macro; ValueError with a user-facing message."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected a cron expression like '0 8 * * mon-fri'")
    expanded = _MACROS.get(text.strip().lower(), text)
    parts = expanded.split()
    if len(parts) != 5:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or a macro like @daily, "
            f"got {len(parts)} in {text!r}"
        )
    sets = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return CronSpec(
        text=text.strip(),
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )


def _local_epoch(d: date, hour: int, minute: int, tz: tzinfo) -> float:
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=tz).timestamp()


def last_fire(spec: CronSpec, now: float, not_before: float, tz: tzinfo = UTC) -> float | None:
    """The latest time in (not_before, now] at which `spec` fires (wall clock in `tz`), or None.

    Walks back day by day from `now` to `not_before`, so the cost grows with the window, not with how
    rarely the expression fires.
    """
    if now <= not_before:
        return None
    local_now = datetime.fromtimestamp(now, tz)
    first_day = datetime.fromtimestamp(not_before, tz).date()
    hours = sorted(spec.hours, reverse=True)
    minutes = sorted(spec.minutes, reverse=True)
    day = local_now.date()
    while day >= first_day:
        if spec.day_matches(day):
            today = day == local_now.date()
            for h in hours:
                if today and h > local_now.hour:
                    continue
                for m in minutes:
                    if today and h == local_now.hour and m > local_now.minute:
                        continue
                    t = _local_epoch(day, h, m, tz)
                    if t > now:  # a DST fold can put a local time after `now`
                        continue
                    return t if t > not_before else None
        day -= timedelta(days=1)
    return None


@dataclass(frozen=True)
class ScheduleEntry:
    cron: CronSpec
    duration: float  # seconds the override lasts after each firing
    min: int | None = None
    max: int | None = None
    name: str | None = None
    tz: tzinfo = UTC

    @property
    def label(self) -> str:
        return self.name or self.cron.text


def active_entries(entries: tuple[ScheduleEntry, ...], now: float) -> tuple[ScheduleEntry, ...]:
    """Entries whose latest firing is less than `duration` ago."""
    return tuple(e for e in entries if last_fire(e.cron, now, now - e.duration, e.tz) is not None)


def scheduled_bounds(
    entries: tuple[ScheduleEntry, ...], lo: int, hi: int, now: float
) -> tuple[int, int, tuple[ScheduleEntry, ...]]:
    """(min, max, active entries) for the group at `now`."""
    active = active_entries(entries, now) if entries else ()
    if not active:
        return lo, hi, ()
    mins = [e.min for e in active if e.min is not None]
    maxes = [e.max for e in active if e.max is not None]
    new_lo = max(mins) if mins else lo
    new_hi = max(maxes) if maxes else hi
    return new_lo, max(new_lo, new_hi), active


def apply_schedule(
    entries: tuple[ScheduleEntry, ...], snap: GroupSnapshot
) -> tuple[GroupSnapshot, str | None]:
    """The snapshot with the scheduled bounds, and a note for the decision (None when nothing is active)."""
    if not entries:
        return snap, None
    lo, hi, active = scheduled_bounds(entries, snap.min_replicas, snap.max_replicas, snap.now)
    if not active:
        return snap, None
    names = ", ".join(e.label for e in active)
    note = f"schedule {names}: bounds [{lo}, {hi}]"
    return replace(snap, min_replicas=lo, max_replicas=hi), note


def note_schedule(decision: Decision, note: str | None) -> Decision:
    if note is None:
        return decision
    return replace(decision, reason=f"{decision.reason}; {note}")


def next_fire_after(
    spec: CronSpec, t: float, tz: tzinfo = UTC, horizon: float = 366 * 86400.0
) -> float | None:
    """The first firing strictly after `t` (for docs and tests); None within `horizon`."""
    start = math.floor(t / 60.0) * 60.0 + 60.0
    day = datetime.fromtimestamp(start, tz).date()
    end = t + horizon
    while _local_epoch(day, 0, 0, tz) <= end:
        if spec.day_matches(day):
            for h in sorted(spec.hours):
                for m in sorted(spec.minutes):
                    e = _local_epoch(day, h, m, tz)
                    if e > t:
                        return e
        day += timedelta(days=1)
    return None
