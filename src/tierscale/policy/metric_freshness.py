"""What an external metric's reading means when its source fails: stale value, fallback, or hold.

KEDA users' worst days came from a failed read taken as 0 (workloads scaled to zero while Prometheus or
the broker was down) and from a fallback that fired at once or never woke a group from zero. The rules:

- a failed read is never 0;
- the last good value stands in while it is younger than `max_staleness` ("stale");
- a source never read yet (a controller just started, a queue just declared) holds for `max_staleness`
  from its first failure, the way a stale value would have: a fallback must not fire on the first
  failed read;
- after that, `fallback`: `hold` leaves the total unknown, so the HPA rules hold the count (a scale-up
  asked by another metric still happens, a scale-down does not); `replicas: N` substitutes N × target
  for the total, so this metric alone asks for exactly N replicas — at zero too (KEDA's fallback,
  done for every count);
- the first good read ends it ("ok").

Pure: the caller keeps a `Freshness` per metric and passes the clock in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tierscale.policy.types import MetricInput

FreshState = Literal["ok", "stale", "fallback", "hold"]


@dataclass(frozen=True)
class FreshnessRule:
    max_staleness: float
    fallback_replicas: int | None = None  # None: hold


@dataclass(frozen=True)
class Freshness:
    """One metric's memory between passes."""

    value: float | None = None  # the last good total
    at: float | None = None  # when it was read
    failing_since: float | None = None  # first failed read of the current outage
    state: FreshState = "ok"
    error: str | None = None  # the last failure's words


def settle(
    rule: FreshnessRule, mem: Freshness, reading: MetricInput, now: float
) -> tuple[MetricInput, Freshness]:
    """The reading the policy sees, and the memory for the next pass."""
    if reading.total is not None:
        return reading, Freshness(value=reading.total, at=now)
    failing = mem.failing_since if mem.failing_since is not None else now
    error = reading.error or "the source returned no value"
    if mem.value is not None and mem.at is not None and now - mem.at <= rule.max_staleness:
        age = now - mem.at
        out = replace(reading, total=mem.value, error=f"{error} (using the value from {age:.0f}s ago)")
        return out, replace(mem, failing_since=failing, state="stale", error=error)
    if mem.value is None and now - failing < rule.max_staleness:
        due = rule.max_staleness - (now - failing)
        wait = f" (fallback in {due:.0f}s)" if rule.fallback_replicas is not None else ""
        return replace(reading, error=error + wait), replace(
            mem, failing_since=failing, state="hold", error=error
        )
    if rule.fallback_replicas is not None:
        total = rule.fallback_replicas * reading.target
        out = replace(reading, total=total, error=f"{error} (fallback: {rule.fallback_replicas} replicas)")
        return out, replace(mem, failing_since=failing, state="fallback", error=error)
    return replace(reading, error=error), replace(mem, failing_since=failing, state="hold", error=error)
