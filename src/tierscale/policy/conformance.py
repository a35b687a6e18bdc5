"""Run the shared HPA conformance tables against the policy engine.

    python -m tierscale.policy.conformance FILE_OR_DIR...

Each row of a case file (schema: /work/shared/conformance/README.md) is fed to the matching pure
function; every key of the row's `expected` is checked, not only the replica count. The module
only reads the files it is given; the policy functions it calls stay free of I/O.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierscale.policy.behavior import (
    UserRules,
    generate_rules,
    legacy_normalize,
    legacy_stabilize,
    longest_policy_period,
    rate_limit,
    replicas_changed_in_period,
    scale_down_limit,
    scale_down_proposals,
    scale_up_limit,
    scale_up_proposals,
    stabilize,
    store_scale_event,
)
from tierscale.policy.replica_calculator import (
    CalculatorConfig,
    Container,
    ContainerSample,
    MetricError,
    Pod,
    PodGroups,
    PodMetric,
    PodSample,
    ReplicaCount,
    external_per_pod_replicas,
    external_replicas,
    group_pods,
    object_replicas,
    per_pod_replicas,
    pods_metric_replicas,
    ready_pods_count,
    resource_replicas,
)
from tierscale.policy.types import RatePolicy, Recommendation, ScaleEvent, ScalingRules

Case = dict[str, Any]
NOW = 0.0  # every instant in the tables is relative to the evaluation instant
SET_KEYS = frozenset({"unready_pods", "missing_pods", "ignored_pods"})


@dataclass(frozen=True)
class CaseResult:
    name: str
    ok: bool
    skipped: bool  # rows Go never asserts (`skipped_in_go`); still evaluated, reported apart
    expected: dict[str, Any]
    got: dict[str, Any]
    explanation: str


def load_cases(path: str | Path) -> list[Case]:
    """Cases of one file: a JSON array, a single case object, or `{"cases": [...]}`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("cases", [data])
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise ValueError(f"{path}: expected a JSON array of case objects")
    return data


# Decoding -----------------------------------------------------------------------------------------


def _pod(d: dict[str, Any]) -> Pod:
    return Pod(
        name=d["name"],
        phase=d["phase"],
        ready=d.get("ready"),
        ready_last_transition=d.get("ready_last_transition_s"),
        start_time=d.get("start_time_s"),
        deleted=bool(d.get("deleted", False)),
        containers=tuple(Container(c["name"], c.get("request_milli")) for c in d.get("containers") or ()),
    )


def _policies(ps: list[dict[str, Any]] | None) -> tuple[RatePolicy, ...] | None:
    if ps is None:
        return None
    return tuple(RatePolicy(p["type"], int(p["value"]), float(p["period_seconds"])) for p in ps)


def decode_user_rules(d: dict[str, Any] | None) -> UserRules | None:
    if d is None:
        return None
    window = d.get("stabilization_window_seconds")
    return UserRules(
        None if window is None else float(window), d.get("select_policy"), _policies(d.get("policies"))
    )


def decode_rules(d: dict[str, Any]) -> ScalingRules:
    user = decode_user_rules(d)
    assert user is not None
    return ScalingRules(user.stabilization_window, user.select_policy or "Max", user.policies or ())


def _num(x: float | None) -> int | float | None:
    return int(x) if x is not None and float(x).is_integer() else x


def _rules_json(r: ScalingRules) -> dict[str, Any]:
    return {
        "stabilization_window_seconds": _num(r.stabilization_window),
        "select_policy": r.select_policy,
        "policies": [
            {"type": p.type, "value": p.value, "period_seconds": _num(p.period)} for p in r.policies
        ],
    }


def decode_events(es: list[dict[str, Any]]) -> tuple[ScaleEvent, ...]:
    return tuple(
        ScaleEvent(int(e["replica_change"]), float(e["t"]), bool(e.get("outdated", False))) for e in es
    )


def decode_recommendations(rs: list[dict[str, Any]]) -> tuple[Recommendation, ...]:
    return tuple(Recommendation(int(r["replicas"]), float(r["t"])) for r in rs)


def _policy(p: RatePolicy) -> str:
    return f"{p.type} {p.value}/{_num(p.period)}s"


# Runners: each returns (got, explanation lines) ---------------------------------------------------

Outcome = tuple[dict[str, Any], list[str]]


def _groups_text(g: PodGroups) -> str:
    def names(xs: tuple[str, ...]) -> str:
        return ", ".join(xs) or "none"

    return (
        f"pods: {g.ready_count} ready; unready: {names(g.unready)}; "
        f"missing: {names(g.missing)}; ignored: {names(g.ignored)}"
    )


def _calc_text(r: ReplicaCount, current: int, tolerance: float) -> list[str]:
    lines = [f"first-pass usage ratio {r.ratio:.4f} (tolerance ±{tolerance})"]
    if r.new_ratio is not None:
        lines.append(f"missing/unready replicas filled in: second-pass ratio {r.new_ratio:.4f}")
    if r.outcome == "tolerance":
        lines.append(f"within tolerance: keep current {current}")
    elif r.outcome == "direction-flip":
        lines.append(f"filling the gaps would reverse the direction: keep current {current}")
    else:
        lines.append(f"scale to {r.replicas}")
    return lines


def _run_replicas(case: Case) -> Outcome:
    p, i = case["params"], case["inputs"]
    source = case.get("metric_source") or i.get("metric_source")
    cfg = CalculatorConfig(
        float(p["tolerance"]),
        float(p["cpu_initialization_period_s"]),
        float(p["delay_of_initial_readiness_status_s"]),
    )
    current = int(i["current_replicas"])
    pods = [_pod(d) for d in i.get("pods", [])]
    lines = [f"{source} metric, current replicas {current}"]
    got: dict[str, Any] = {}
    try:
        if source == "resource":
            ts, window = float(i["metric_sample_timestamp_s"]), float(i["metric_sample_window_s"])
            samples = [
                PodSample(
                    d["name"], tuple(ContainerSample(c["name"], c.get("usage_milli")) for c in s), ts, window
                )
                for d in i["pods"]
                if (s := d.get("metrics_sample")) is not None
            ] + [
                PodSample(
                    u["pod_name"],
                    tuple(ContainerSample(c["name"], c.get("usage_milli")) for c in u["containers"]),
                    ts,
                    window,
                )
                for u in i.get("unmatched_metric_samples") or ()
            ]
            r = resource_replicas(
                current,
                int(i["target_utilization_pct"]),
                pods,
                samples,
                cfg,
                NOW,
                i.get("resource_name", "cpu"),
                i.get("container"),
            )
            got = {
                "replicas": r.replicas,
                "utilization_pct": r.usage,
                "raw_average_usage_milli": r.raw_average,
            }
            lines.append(
                f"utilization {r.usage}% vs target {i['target_utilization_pct']}%, raw {r.raw_average}m"
            )
        elif source == "pods":
            metrics = {
                d["name"]: PodMetric(int(d["value_milli"]), NOW, 0.0)
                for d in i["pods"]
                if d.get("value_milli") is not None
            }
            r = pods_metric_replicas(current, int(i["target_average_value_milli"]), pods, metrics, cfg, NOW)
            got = {"replicas": r.replicas, "usage_milli": r.usage}
            lines.append(f"average {r.usage}m vs target {i['target_average_value_milli']}m per pod")
        elif source in ("object", "external"):
            value = int(i["object_value_milli"]) if source == "object" else sum(i["external_values_milli"])
            r = (
                object_replicas(current, value, int(i["target_value_milli"]), pods, cfg.tolerance)
                if source == "object"
                else external_replicas(
                    current, i["external_values_milli"], int(i["target_value_milli"]), pods, cfg.tolerance
                )
            )
            got = {"replicas": r.replicas, "usage_milli": r.usage}
            ready = ready_pods_count(pods) if pods else 0
            lines.append(f"value {value}m vs target {i['target_value_milli']}m; {ready} running+ready pods")
        elif source in ("object_per_pod", "external_per_pod"):
            target = int(i["target_average_value_milli"])
            if source == "object_per_pod":
                r = per_pod_replicas(current, int(i["object_value_milli"]), target, cfg.tolerance)
            else:
                r = external_per_pod_replicas(current, i["external_values_milli"], target, cfg.tolerance)
            got = {"replicas": r.replicas, "usage_milli": r.usage}
            lines.append(f"per-pod value {r.usage}m vs target {target}m")
        else:
            raise ValueError(f"unknown metric_source {source!r}")
    except MetricError as err:
        return {"error": True, "error_message": str(err)}, [*lines, f"error: {err}"]
    if r.groups is not None:
        lines.append(_groups_text(r.groups))
    return got, lines + _calc_text(r, current, cfg.tolerance)


def _run_group_pods(case: Case) -> Outcome:
    p, i = case["params"], case["inputs"]
    cfg = CalculatorConfig(
        0.1, float(p["cpu_initialization_period_s"]), float(p["delay_of_initial_readiness_status_s"])
    )
    metrics = {
        name: PodMetric(int(m["value"]), float(m["timestamp_s"]), float(m["window_s"]))
        for name, m in (i.get("metrics") or {}).items()
    }
    g = group_pods([_pod(d) for d in i["pods"]], metrics, i["resource_name"], cfg, NOW)
    got = {
        "ready_pod_count": g.ready_count,
        "unready_pods": list(g.unready),
        "missing_pods": list(g.missing),
        "ignored_pods": list(g.ignored),
    }
    return got, [f"resource {i['resource_name']}", _groups_text(g)]


def _run_stabilize(case: Case) -> Outcome:
    i = case["inputs"]
    s = stabilize(
        int(i["current_replicas"]),
        int(i["desired_replicas"]),
        decode_recommendations(i["recommendations"]),
        float(i["scale_up_stabilization_window_s"]),
        float(i["scale_down_stabilization_window_s"]),
        NOW,
    )
    got = {"replicas": s.replicas, "recommendations_after": [r.replicas for r in s.recommendations]}
    lines = [
        f"current {i['current_replicas']}, recommendation {i['desired_replicas']}",
        f"lowest in scale-up window ({i['scale_up_stabilization_window_s']}s): {s.up_bound}; "
        f"highest in scale-down window ({i['scale_down_stabilization_window_s']}s): {s.down_bound}",
        f"stabilized to {s.replicas}; history now {got['recommendations_after']}",
    ]
    return got, lines


def _rate_lines(current: int, rules_up: ScalingRules, rules_down: ScalingRules, i: Case) -> list[str]:
    up, down = decode_events(i.get("scale_up_events", [])), decode_events(i.get("scale_down_events", []))
    lines = []
    for word, rules, fn in (("up", rules_up, scale_up_proposals), ("down", rules_down, scale_down_proposals)):
        props = (
            ", ".join(f"{_policy(p)} → {n}" for p, n in fn(current, up, down, rules, NOW)) or "no policies"
        )
        lines.append(f"scale-{word} policies ({rules.select_policy}): {props}")
    return lines


def _run_rate_limit(case: Case) -> Outcome:
    i = case["inputs"]
    up_rules, down_rules = decode_rules(i["scale_up_rules"]), decode_rules(i["scale_down_rules"])
    current, desired = int(i["current_replicas"]), int(i["desired_replicas"])
    r = rate_limit(
        current,
        desired,
        int(i["min_replicas"]),
        int(i["max_replicas"]),
        up_rules,
        down_rules,
        decode_events(i.get("scale_up_events", [])),
        decode_events(i.get("scale_down_events", [])),
        NOW,
    )
    lines = [
        f"current {current}, desired {desired}, bounds [{i['min_replicas']}, {i['max_replicas']}]",
        *_rate_lines(current, up_rules, down_rules, i),
        f"→ {r.replicas} ({r.reason})",
    ]
    return {"replicas": r.replicas, "condition_reason": r.reason}, lines


def _run_limit(case: Case, up: bool) -> Outcome:
    i = case["inputs"]
    rules = decode_rules(i["rules"])
    current = int(i["current_replicas"])
    args = (
        current,
        decode_events(i.get("scale_up_events", [])),
        decode_events(i.get("scale_down_events", [])),
        rules,
        NOW,
    )
    limit = scale_up_limit(*args) if up else scale_down_limit(*args)
    props = (scale_up_proposals if up else scale_down_proposals)(*args)
    lines = [
        f"current {current}; select {rules.select_policy}",
        "proposals: " + (", ".join(f"{_policy(p)} → {n}" for p, n in props) or "none"),
        f"{'scale-up' if up else 'scale-down'} limit {limit}",
    ]
    return {"limit": limit}, lines


def _run_store_scale_event(case: Case) -> Outcome:
    i = case["inputs"]
    events = decode_events(i["scale_events"])
    rules = decode_rules(i["rules"]) if i.get("behavior_present") and i.get("rules") is not None else None
    changes = replicas_changed_in_period(events, float(i["changes_period_s"]), NOW)
    after = store_scale_event(events, rules, int(i["prev_replicas"]), int(i["new_replicas"]), NOW)
    got = {
        "changes_in_period": changes,
        "events_after": [{"replica_change": e.replica_change, "outdated": e.outdated} for e in after],
    }
    lines = [
        f"{i['direction']} {i['prev_replicas']} → {i['new_replicas']}; "
        f"changes in last {i['changes_period_s']}s: {changes}",
        "no behavior: history untouched"
        if rules is None
        else f"longest policy period {_num(longest_policy_period(rules))}s; events now {got['events_after']}",
    ]
    return got, lines


def _run_legacy_stabilize(case: Case) -> Outcome:
    i = case["inputs"]
    result, recs = legacy_stabilize(
        int(i["desired_replicas"]),
        decode_recommendations(i["recommendations"]),
        float(i["downscale_stabilization_window_s"]),
        NOW,
    )
    lines = [
        f"recommendation {i['desired_replicas']}; "
        f"highest in {i['downscale_stabilization_window_s']}s: {result}",
        f"history length now {len(recs)}",
    ]
    return {"replicas": result, "recommendations_count_after": len(recs)}, lines


def _run_legacy_normalize(case: Case) -> Outcome:
    i = case["inputs"]
    r = legacy_normalize(
        int(i["current_replicas"]),
        int(i["desired_replicas"]),
        int(i["min_replicas"]),
        int(i["max_replicas"]),
        float(i["scale_up_limit_factor"]),
        float(i["scale_up_limit_minimum"]),
    )
    lines = [
        f"current {i['current_replicas']}, desired {i['desired_replicas']}, "
        f"bounds [{i['min_replicas']}, {i['max_replicas']}], scale-up limit {r.limit}",
        f"→ {r.replicas} ({r.reason})",
    ]
    return {"replicas": r.replicas, "condition_reason": r.reason}, lines


def _run_default_rules(case: Case) -> Outcome:
    i = case["inputs"]
    rules = generate_rules(i["direction"], decode_user_rules(i.get("user_rules")))
    got = {"rules": _rules_json(rules)}
    return got, [f"scale-{i['direction']} rules after defaulting: {got['rules']}"]


RUNNERS: dict[str, Callable[[Case], Outcome]] = {
    "replicas": _run_replicas,
    "group_pods": _run_group_pods,
    "stabilize": _run_stabilize,
    "rate_limit": _run_rate_limit,
    "scale_up_limit": lambda c: _run_limit(c, True),
    "scale_down_limit": lambda c: _run_limit(c, False),
    "store_scale_event": _run_store_scale_event,
    "legacy_stabilize": _run_legacy_stabilize,
    "legacy_normalize": _run_legacy_normalize,
    "default_rules": _run_default_rules,
}


# Comparison ---------------------------------------------------------------------------------------


def _mismatches(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    if expected.get("error"):
        if not got.get("error"):
            return ["expected an error"]
        needle = expected.get("error_contains")
        if needle and needle not in got.get("error_message", ""):
            return [f"error {got.get('error_message')!r} lacks {needle!r}"]
        return []
    if got.get("error"):
        return [f"unexpected error: {got.get('error_message')}"]
    bad = []
    for key, want in expected.items():
        if want is None and key == "recommendations_after":
            continue  # Go does not check this row's history
        have = got.get(key, "<not computed>")
        unordered = key in SET_KEYS and isinstance(have, list)
        if (sorted(have) != sorted(want)) if unordered else (have != want):
            bad.append(f"{key}: expected {want!r}, got {have!r}")
    return bad


def _evaluate(case: Case) -> tuple[dict[str, Any], list[str], list[str]]:
    kind = case.get("kind", "")
    runner = RUNNERS.get(kind)
    if runner is None:
        return {}, [f"unknown kind {kind!r}"], [f"unknown kind {kind!r}"]
    got, lines = runner(case)
    return got, lines, _mismatches(case.get("expected", {}), got)


def run_case(case: Case) -> CaseResult:
    got, lines, bad = _evaluate(case)
    return CaseResult(
        name=case.get("name", "?"),
        ok=not bad,
        skipped=bool(case.get("skipped_in_go")),
        expected=case.get("expected", {}),
        got=got,
        explanation=_render(case, lines, bad),
    )


def _render(case: Case, lines: list[str], bad: list[str]) -> str:
    out = [f"{case.get('name', '?')} [{case.get('kind', '?')}]"]
    out += [f"  {line}" for line in lines]
    if case.get("skipped_in_go"):
        out.append("  (row not asserted by the Go test)")
    out.append("  matches expected" if not bad else "  MISMATCH: " + "; ".join(bad))
    return "\n".join(out)


def explain_case(case: Case | Sequence[Case]) -> str:
    """Human explanation of one row (or of each row of a list), with the reasons of each decision."""
    if isinstance(case, dict):
        return run_case(case).explanation
    return "\n\n".join(run_case(c).explanation for c in case)


def explain_file(path: str | Path) -> str:
    return explain_case(load_cases(path))


# CLI ----------------------------------------------------------------------------------------------


def _expand(args: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for a in args:
        p = Path(a)
        paths.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and os.environ.get("TIERSCALE_SHARED"):
        args = [str(Path(os.environ["TIERSCALE_SHARED"]) / "conformance")]
    if not args:
        print("usage: python -m tierscale.policy.conformance FILE_OR_DIR...", file=sys.stderr)
        return 2
    passed = failed = skipped = 0
    for path in _expand(args):
        for case in load_cases(path):
            res = run_case(case)
            if res.skipped:
                skipped += 1
                if not res.ok:
                    print(
                        f"SKIPPED (mismatch, not asserted by Go) {res.name}: "
                        f"expected {res.expected}, got {res.got}"
                    )
            elif res.ok:
                passed += 1
            else:
                failed += 1
                print(f"FAIL {res.name}: expected {res.expected}, got {res.got}")
    summary = f"{passed} passed, {failed} failed"
    print(summary + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
