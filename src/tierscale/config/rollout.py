"""A group's rollout rules as plain values, and the Kubernetes rounding that turns percents into counts.

`max_surge` rounds up and `max_unavailable` rounds down (as a Deployment does), so 25 % of 2 replicas
allows one extra replica and none missing; when both come out 0 one replica may be missing, or a rollout
could never start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Amount:
    """A count (`2`) or a percent of the desired count (`25%`)."""

    value: int
    percent: bool = False

    def of(self, desired: int, round_up: bool) -> int:
        if not self.percent:
            return self.value
        exact = desired * self.value / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_amount(value: object) -> Amount:
    """`3`, `"3"` or `"25%"`; ValueError with the reason otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"must be a count or a percent such as 25% (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative (got {value})")
        return Amount(value)
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        digits = text[:-1].strip() if percent else text
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(f"must be a count or a percent such as 25% (got {value!r})")
        n = int(digits)
        if percent and n > 100:
            raise ValueError(f"must be at most 100% (got {value!r})")
        return Amount(n, percent)
    raise ValueError(f"must be a count or a percent such as 25% (got {value!r})")


@dataclass(frozen=True)
class RolloutSpec:
    max_surge: Amount = Amount(25, percent=True)
    max_unavailable: Amount = Amount(0)
    min_healthy_time: float = 10.0
    healthy_deadline: float = 300.0
    canary: int = 0
    auto_rollback: bool = True

    def limits(self, desired: int) -> tuple[int, int]:
        """(surge, unavailable) as counts for `desired` replicas."""
        surge = self.max_surge.of(desired, round_up=True)
        unavailable = self.max_unavailable.of(desired, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable
