"""External metrics through their failures: the freshness rules applied, and said out loud.

`policy/metric_freshness.py` decides what a failed read means (stale value, fallback, hold); this keeps
each metric's memory between passes, sets `tierscale_metric_up`, and records one event per change of
state — not one per failed pass — so a broker down for an hour is three lines in the log, not 700.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierscale.config.settings import MetricSpec
from tierscale.controller.context import GroupContext
from tierscale.controller.status_model import MetricSourceView
from tierscale.policy.metric_freshness import Freshness, FreshnessRule, settle
from tierscale.policy.types import MetricInput


def watch(
    ctx: GroupContext, specs: Sequence[MetricSpec], readings: Sequence[MetricInput], now: float
) -> tuple[MetricInput, ...]:
    """The readings the policy sees: external ones settled, built-in ones as read."""
    out: list[MetricInput] = []
    for spec, reading in zip(specs, readings, strict=True):
        if not spec.external:
            out.append(reading)
            continue
        mem = ctx.rt.freshness.get(spec.label, Freshness())
        rule = FreshnessRule(spec.max_staleness, spec.fallback_replicas)
        settled, new = settle(rule, mem, reading, now)
        ctx.rt.freshness[spec.label] = new
        ctx.tm.metric_up.labels(ctx.s.name, spec.label).set(1 if reading.total is not None else 0)
        _say(ctx, spec, mem, new, now)
        out.append(settled)
    return tuple(out)


def _say(ctx: GroupContext, spec: MetricSpec, old: Freshness, new: Freshness, now: float) -> None:
    if new.state == old.state:
        return
    name = spec.label
    fallback = (
        f"fallback: {spec.fallback_replicas} replica(s)"
        if spec.fallback_replicas is not None
        else "fallback hold: keeping the count (no scale-down on it)"
    )
    if new.state == "ok":
        down = 0.0 if old.failing_since is None else now - old.failing_since
        ctx.event(
            "metric_recovered", f"metric {name} answers again after {down:.0f}s", metric=name, seconds=down
        )
    elif new.state == "stale":
        ctx.event(
            "metric_failed",
            f"metric {name} failed ({new.error}); using its last value for up to "
            f"{spec.max_staleness:g}s (max_staleness)",
            metric=name,
            error=new.error,
        )
    elif old.state in ("ok", "stale"):
        why = (
            "no good value yet" if old.value is None else f"older than max_staleness {spec.max_staleness:g}s"
        )
        ctx.event(
            "metric_fallback",
            f"metric {name} failed ({new.error}), {why}; {fallback}",
            metric=name,
            error=new.error,
            fallback=spec.fallback_replicas,
        )


def views(ctx: GroupContext, now: float) -> list[MetricSourceView]:
    """Each external metric's source state, for status and the dashboard."""
    out = []
    for spec in ctx.s.metrics:
        if not spec.external:
            continue
        mem = ctx.rt.freshness.get(spec.label)
        if mem is None:
            continue
        out.append(
            MetricSourceView(
                metric=spec.label,
                type=spec.type,
                state=mem.state,
                last_value=mem.value,
                age=None if mem.at is None else round(now - mem.at, 1),
                failing_for=None if mem.failing_since is None else round(now - mem.failing_since, 1),
                error=mem.error if mem.state != "ok" else None,
                max_staleness=spec.max_staleness,
                fallback="hold" if spec.fallback_replicas is None else f"replicas: {spec.fallback_replicas}",
            )
        )
    return out
