"""scale_to_zero through config → settings → policy_step: waking on held requests, idle_after, the
floor of one, and the one-line errors of a bad block."""

from __future__ import annotations

import pytest

from tierscale.config import ConfigError, load_config_text
from tierscale.config.settings import settings_for
from tierscale.policy.strategy import policy_step
from tierscale.policy.types import GroupSnapshot, MetricInput, PolicyState

FILE = "stz.yaml"
HEAD = """\
groups:
  - name: w
    tier: process
    min: {min}
    max: 4
    template: {{command: ["x", "{{port}}"], port_range: [20000, 20010]}}
    metrics: [{{type: requests_per_replica, target: 5}}]
"""
STZ = "    scale_to_zero: {idle_after: 60s, replica_concurrency: 10}\n"
NOW = 10_000.0


def _settings(extra: str = STZ, min_: int = 0):  # type: ignore[no-untyped-def]
    return settings_for(load_config_text(HEAD.format(min=min_) + extra, FILE).groups[0])


def _snap(current: int, held: int = 0, last: float | None = NOW, rps: float | None = 0.0) -> GroupSnapshot:
    metric = MetricInput("requests_per_replica", "total", 5.0, total=rps)
    return GroupSnapshot(
        now=NOW,
        current_replicas=current,
        min_replicas=0,
        max_replicas=4,
        metrics=(metric,),
        held_requests=held,
        last_request_at=last,
    )


CASES = [
    # (id, current, held, seconds since the last request (None: never), rps, desired, reason starts with)
    ("zero, nothing held: stays", 0, 0, 5.0, 0.0, 0, "at zero"),
    ("zero, one held: wakes to one", 0, 1, 0.0, 0.0, 1, "woke"),
    ("zero, 25 held at 10 each: three", 0, 25, 0.0, 0.0, 3, "woke"),
    ("zero, 500 held: max", 0, 500, 0.0, 0.0, 4, "woke"),
    ("up, no load, recent request: floor of one", 1, 0, 5.0, 0.0, 1, ""),
    ("up, idle for idle_after: zero", 1, 0, 60.0, 0.0, 0, "idle"),
    ("up, idle but one held: not zero", 1, 1, 120.0, 0.0, 1, ""),
    ("up, never a request: not zero", 1, 0, None, 0.0, 1, ""),
    ("up, load asks for more: the policy decides", 1, 0, 0.0, 15.0, 3, ""),
]


@pytest.mark.parametrize(
    ("current", "held", "ago", "rps", "desired", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_scale_to_zero_decisions(
    current: int, held: int, ago: float | None, rps: float, desired: int, reason: str
) -> None:
    plan = _settings().plan
    last = None if ago is None else NOW - ago
    decision, _ = policy_step(plan, _snap(current, held, last, rps), PolicyState())
    assert decision.desired == desired, decision.reason
    assert decision.reason.startswith(reason), decision.reason
    if desired == 0 and current > 0:
        assert "idle_after" in decision.limits


def test_a_wake_is_held_by_the_scale_down_window_like_any_scale_up() -> None:
    plan = _settings().plan
    woke, state = policy_step(plan, _snap(0, held=30), PolicyState())
    assert woke.desired == 3
    after, _ = policy_step(plan, GroupSnapshot(**{**_snap(3).__dict__, "now": NOW + 5}), state)
    assert after.desired == 3, after.reason  # the stabilization window keeps the woken replicas


def test_a_metric_alone_empties_a_min_0_group_only_without_scale_to_zero() -> None:
    # No stabilization window: the HPA acts on the zero reading at once.
    fast = "    behavior: {scale_down: {stabilization_window: 0s}}\n"
    recent = _snap(1, last=NOW - 5)
    with_stz, _ = policy_step(_settings(extra=STZ + fast).plan, recent, PolicyState())
    without, _ = policy_step(_settings(extra=fast).plan, recent, PolicyState())
    assert without.desired == 0
    assert with_stz.desired == 1, with_stz.reason  # the floor of one until idle_after


def test_defaults() -> None:
    spec = _settings(extra="    scale_to_zero: {}\n").scale_to_zero
    assert spec is not None
    assert (spec.idle_after, spec.hold_timeout, spec.max_pending, spec.replica_concurrency) == (
        300,
        30,
        1000,
        10,
    )


BAD = [
    ("min above 0", 1, "{}", "groups[0].scale_to_zero", "needs min: 0 (min is 1)"),
    ("idle_after 0", 0, "{idle_after: 0s}", "groups[0].scale_to_zero.idle_after", "must be > 0"),
    ("negative hold", 0, "{hold_timeout: -1s}", "groups[0].scale_to_zero.hold_timeout", "negative"),
    ("max_pending 0", 0, "{max_pending: 0}", "groups[0].scale_to_zero.max_pending", "must be >= 1"),
    ("concurrency 0", 0, "{replica_concurrency: 0}", "groups[0].scale_to_zero.replica_concurrency", ">= 1"),
    ("typo", 0, "{idle: 5m}", "groups[0].scale_to_zero.idle", "unknown key"),
]


@pytest.mark.parametrize(("min_", "block", "field", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_scale_to_zero_is_one_line_naming_the_field(
    min_: int, block: str, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(extra=f"    scale_to_zero: {block}\n", min_=min_)
    first = info.value.problems[0]
    assert first.field == field
    assert words in first.message
    assert "\n" not in info.value.first_line()


def test_scale_to_zero_needs_a_balancer() -> None:
    with pytest.raises(ConfigError) as info:
        _settings(extra=STZ + "    balancer: {type: none}\n")
    assert info.value.problems[0].field == "groups[0].scale_to_zero"
    assert "needs a balancer" in info.value.problems[0].message
