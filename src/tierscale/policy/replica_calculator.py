"""The HPA replica arithmetic (Kubernetes `replica_calculator.go` and `metrics/utilization.go`).

Pure: the caller passes pods, samples and `now`. Arithmetic follows Go on purpose: integer
division truncates, float→int truncates, ratios are float64, and `ceil` is taken on float64 values.
The conformance tables only agree with the upstream controller if every one of those details matches.
All metric values are integer milli-units (Kubernetes `MilliValue()`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

PodPhase = Literal["Running", "Pending", "Failed", "Succeeded"]
Outcome = Literal["tolerance", "scaled", "direction-flip"]


class MetricError(Exception):
    """A metric cannot produce a proposal; the message carries the upstream Go error text."""


@dataclass(frozen=True)
class CalculatorConfig:
    tolerance: float = 0.1
    cpu_initialization_period: float = 300.0
    delay_of_initial_readiness_status: float = 30.0


@dataclass(frozen=True)
class Container:
    name: str
    request_milli: int | None  # None: the container declares no request for the resource


@dataclass(frozen=True)
class Pod:
    name: str
    phase: PodPhase
    ready: bool | None  # status of the PodReady condition; None when the pod has no such condition
    ready_last_transition: float | None
    start_time: float | None  # None: status.startTime unset
    deleted: bool = False
    containers: tuple[Container, ...] = ()


@dataclass(frozen=True)
class PodMetric:
    value: int
    timestamp: float
    window: float


@dataclass(frozen=True)
class ContainerSample:
    name: str
    usage_milli: int | None


@dataclass(frozen=True)
class PodSample:
    """One item of the resource metrics API (`PodMetrics`)."""

    pod_name: str
    containers: tuple[ContainerSample, ...]
    timestamp: float
    window: float


@dataclass(frozen=True)
class PodGroups:
    ready_count: int
    unready: tuple[str, ...]
    missing: tuple[str, ...]
    ignored: tuple[str, ...]


def _counted_values(metrics: Mapping[str, PodMetric], groups: PodGroups) -> dict[str, int]:
    """The samples that count: not of an ignored or unready pod (a set, so a pass stays linear)."""
    excluded = {*groups.ignored, *groups.unready}
    return {k: m.value for k, m in metrics.items() if k not in excluded}


@dataclass(frozen=True)
class ReplicaCount:
    """What a calculation returns, plus enough of its working to explain it."""

    replicas: int
    outcome: Outcome
    ratio: float  # first-pass usage ratio (usage / target)
    usage: int  # utilization % (resource) or milli-value the upstream reports as current usage
    raw_average: int | None = None  # resource only: Σusage / n, millicores
    new_ratio: float | None = None  # second pass ("fill in the gaps"), when it ran
    groups: PodGroups | None = None


# Go arithmetic ------------------------------------------------------------------------------------


def go_div(a: int, b: int) -> int:
    """Go integer division: truncates toward zero (Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def go_ceil(x: float) -> int:
    if not math.isfinite(x):
        # Go would convert ±Inf/NaN to an arbitrary int32; a zero target is the only way here.
        raise MetricError(f"replica count is not a finite number ({x})")
    return math.ceil(x)


def go_trunc(x: float) -> int:
    return int(x)


def _fdiv(a: float, b: float) -> float:
    # Go float64 division by zero yields ±Inf or NaN instead of raising.
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def within_tolerance(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance


# Metrics client -----------------------------------------------------------------------------------


def resource_pod_metrics(samples: Sequence[PodSample], container: str | None) -> dict[str, PodMetric]:
    """Turn metrics-API items into per-pod values (`getPodMetrics` / `getContainerMetrics`)."""
    if not samples:
        raise MetricError("no metrics returned from resource metrics API")
    out: dict[str, PodMetric] = {}
    for s in samples:
        if container:
            entry = next((c for c in s.containers if c.name == container), None)
            if entry is None:
                raise MetricError(
                    f"container {container} not present in metrics for pod test-namespace/{s.pod_name}"
                )
            if entry.usage_milli is not None:
                out[s.pod_name] = PodMetric(entry.usage_milli, s.timestamp, s.window)
            continue
        # A pod with an empty or partial sample is treated as having no sample at all.
        if not s.containers or any(c.usage_milli is None for c in s.containers):
            continue
        total = sum(c.usage_milli for c in s.containers if c.usage_milli is not None)
        out[s.pod_name] = PodMetric(total, s.timestamp, s.window)
    return out


# Pod grouping -------------------------------------------------------------------------------------


def _cpu_unready(pod: Pod, metric: PodMetric, cfg: CalculatorConfig, now: float) -> bool:
    if pod.ready is None or pod.start_time is None:
        return True
    transition = pod.ready_last_transition if pod.ready_last_transition is not None else -math.inf
    if pod.start_time + cfg.cpu_initialization_period > now:
        # Still initialising: CPU is often spiky at start, so trust the sample only when the pod is
        # ready and a full metric window has been collected since readiness last changed.
        return pod.ready is False or metric.timestamp < transition + metric.window
    # Past initialisation: ignore only pods that have never become ready.
    return pod.ready is False and pod.start_time + cfg.delay_of_initial_readiness_status > transition


def group_pods(
    pods: Sequence[Pod],
    metrics: Mapping[str, PodMetric],
    resource: str,
    cfg: CalculatorConfig,
    now: float,
) -> PodGroups:
    """`groupPods`: sort pods into ready (counted), unready, missing (no sample) and ignored."""
    ready = 0
    unready: list[str] = []
    missing: list[str] = []
    ignored: list[str] = []
    for pod in pods:
        if pod.deleted or pod.phase == "Failed":
            ignored.append(pod.name)
            continue
        if pod.phase == "Pending":
            unready.append(pod.name)
            continue
        metric = metrics.get(pod.name)
        if metric is None:
            missing.append(pod.name)
            continue
        if resource == "cpu" and _cpu_unready(pod, metric, cfg, now):
            unready.append(pod.name)
            continue
        ready += 1
    return PodGroups(ready, tuple(unready), tuple(missing), tuple(ignored))


def pod_requests(pods: Sequence[Pod], container: str | None, resource: str) -> dict[str, int]:
    """`calculatePodRequests`: every listed pod needs a request, even ignored ones."""
    requests: dict[str, int] = {}
    for pod in pods:
        total = 0
        for c in pod.containers:
            if container and c.name != container:
                continue
            if c.request_milli is None:
                raise MetricError(f"missing request for {resource} in container {c.name} of Pod {pod.name}")
            total += c.request_milli
        requests[pod.name] = total
    return requests


# Ratios -------------------------------------------------------------------------------------------


def utilization_ratio(
    values: Mapping[str, int], requests: Mapping[str, int], target_utilization: int
) -> tuple[float, int, int]:
    """`GetResourceUtilizationRatio` → (ratio, utilization %, raw average usage)."""
    usage_total = 0
    request_total = 0
    n = 0
    for name, value in values.items():
        if name not in requests:
            continue  # samples of pods the selector no longer returns
        usage_total += value
        request_total += requests[name]
        n += 1
    if request_total == 0:
        raise MetricError("no metrics returned matched known pods")
    # The ratio is built from the already-truncated integer percent, as upstream does.
    utilization = go_div(usage_total * 100, request_total)
    return _fdiv(float(utilization), float(target_utilization)), utilization, go_div(usage_total, n)


def usage_ratio(values: Mapping[str, int], target: int) -> tuple[float, int]:
    """`GetMetricUsageRatio` → (ratio, average usage)."""
    usage = go_div(sum(values.values()), len(values))
    return _fdiv(float(usage), float(target)), usage


# Replica counts -----------------------------------------------------------------------------------


def _second_pass(
    current: int, ratio: float, new_ratio: float, entries: int, tolerance: float
) -> tuple[int, Outcome]:
    if within_tolerance(new_ratio, tolerance):
        return current, "tolerance"
    # Filling the gaps only ever dampens a change; if it reverses the direction, do nothing.
    if (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current, "direction-flip"
    new = go_ceil(new_ratio * float(entries))
    if (new_ratio < 1.0 and new > current) or (new_ratio > 1.0 and new < current):
        return current, "direction-flip"
    return new, "scaled"


def resource_replicas(
    current: int,
    target_utilization: int,
    pods: Sequence[Pod],
    samples: Sequence[PodSample],
    cfg: CalculatorConfig,
    now: float,
    resource: str = "cpu",
    container: str | None = None,
) -> ReplicaCount:
    """`GetResourceReplicas`: Resource / ContainerResource metric with a Utilization target."""
    metrics = resource_pod_metrics(samples, container)
    if not pods:
        raise MetricError("no pods returned by selector while calculating replica count")
    groups = group_pods(pods, metrics, resource, cfg, now)
    values = _counted_values(metrics, groups)
    if not values:
        raise MetricError("did not receive metrics for targeted pods (pods might be unready)")
    requests = pod_requests(pods, container, resource)
    ratio, utilization, raw = utilization_ratio(values, requests, target_utilization)

    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if within_tolerance(ratio, cfg.tolerance):
            return ReplicaCount(current, "tolerance", ratio, utilization, raw, groups=groups)
        replicas = go_ceil(ratio * float(groups.ready_count))
        return ReplicaCount(replicas, "scaled", ratio, utilization, raw, groups=groups)

    if groups.missing:
        if ratio < 1.0:
            # Scale-down: assume the silent pods run at full request (or the target, if above 100%).
            fallback = max(100, target_utilization)
            for name in groups.missing:
                values[name] = go_div(requests[name] * fallback, 100)
        elif ratio > 1.0:
            for name in groups.missing:
                values[name] = 0
    if scale_up_with_unready:
        for name in groups.unready:
            values[name] = 0

    new_ratio, _, _ = utilization_ratio(values, requests, target_utilization)
    replicas, outcome = _second_pass(current, ratio, new_ratio, len(values), cfg.tolerance)
    return ReplicaCount(replicas, outcome, ratio, utilization, raw, new_ratio, groups)


def pods_metric_replicas(
    current: int,
    target_average_milli: int,
    pods: Sequence[Pod],
    metrics: Mapping[str, PodMetric],
    cfg: CalculatorConfig,
    now: float,
) -> ReplicaCount:
    """`GetMetricReplicas` / `calcPlainMetricReplicas`: Pods metric with an AverageValue target."""
    if not pods:
        raise MetricError("no pods returned by selector while calculating replica count")
    # The CPU readiness rules are skipped: the resource name upstream passes here is empty.
    groups = group_pods(pods, metrics, "", cfg, now)
    values = _counted_values(metrics, groups)
    if not values:
        raise MetricError("did not receive metrics for targeted pods (pods might be unready)")
    ratio, usage = usage_ratio(values, target_average_milli)

    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if within_tolerance(ratio, cfg.tolerance):
            return ReplicaCount(current, "tolerance", ratio, usage, groups=groups)
        return ReplicaCount(go_ceil(ratio * float(groups.ready_count)), "scaled", ratio, usage, groups=groups)

    if groups.missing:
        if ratio < 1.0:
            for name in groups.missing:
                values[name] = target_average_milli
        elif ratio > 1.0:
            for name in groups.missing:
                values[name] = 0
    if scale_up_with_unready:
        for name in groups.unready:
            values[name] = 0

    new_ratio, _ = usage_ratio(values, target_average_milli)
    replicas, outcome = _second_pass(current, ratio, new_ratio, len(values), cfg.tolerance)
    return ReplicaCount(replicas, outcome, ratio, usage, None, new_ratio, groups)


def ready_pods_count(pods: Sequence[Pod]) -> int:
    """`getReadyPodsCount`: running pods whose Ready condition is true."""
    if not pods:
        raise MetricError("no pods returned by selector while calculating replica count")
    return sum(1 for p in pods if p.phase == "Running" and p.ready is True)


def _usage_ratio_replicas(
    current: int, ratio: float, pods: Sequence[Pod], tolerance: float
) -> tuple[int, Outcome]:
    """`getUsageRatioReplicaCount`."""
    if current == 0:
        # Scale-from-zero: nothing is running to multiply by.
        return go_ceil(ratio), "scaled"
    if within_tolerance(ratio, tolerance):
        return current, "tolerance"
    return go_ceil(ratio * float(ready_pods_count(pods))), "scaled"


def object_replicas(
    current: int, value_milli: int, target_milli: int, pods: Sequence[Pod], tolerance: float
) -> ReplicaCount:
    """`GetObjectMetricReplicas`: Object metric with a Value target."""
    ratio = _fdiv(float(value_milli), float(target_milli))
    replicas, outcome = _usage_ratio_replicas(current, ratio, pods, tolerance)
    return ReplicaCount(replicas, outcome, ratio, value_milli)


def external_replicas(
    current: int, values_milli: Iterable[int], target_milli: int, pods: Sequence[Pod], tolerance: float
) -> ReplicaCount:
    """`GetExternalMetricReplicas`: External metric with a Value target (values are summed)."""
    return object_replicas(current, sum(values_milli), target_milli, pods, tolerance)


def per_pod_replicas(
    status_replicas: int, value_milli: int, target_average_milli: int, tolerance: float
) -> ReplicaCount:
    """`GetObjectPerPodMetricReplicas` / `GetExternalPerPodMetricReplicas` (AverageValue target)."""
    ratio = _fdiv(float(value_milli), float(target_average_milli) * float(status_replicas))
    replicas, outcome = status_replicas, "tolerance"
    if not within_tolerance(ratio, tolerance):
        replicas, outcome = go_ceil(_fdiv(float(value_milli), float(target_average_milli))), "scaled"
    # Upstream divides by zero here when there are no replicas; report the whole value instead.
    per_pod = value_milli if status_replicas == 0 else go_ceil(float(value_milli) / float(status_replicas))
    return ReplicaCount(replicas, outcome, ratio, per_pod)


def external_per_pod_replicas(
    status_replicas: int, values_milli: Iterable[int], target_average_milli: int, tolerance: float
) -> ReplicaCount:
    return per_pod_replicas(status_replicas, sum(values_milli), target_average_milli, tolerance)
