"""Prometheus metrics with the names of SPEC §4, in one registry per controller process."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tierscale.controller.state import STATES

# The label values the controller uses: listed here so every series exists from the start.
REPLICA_STATES = STATES
REPLACEMENT_REASONS = ("exited", "unhealthy", "vanished", "host_lost")
ROLLOUT_RESULTS = ("complete", "failed", "rolled_back", "undone")


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.replicas = Gauge("tierscale_replicas", "Replicas by state", ["group", "state"], registry=r)
        self.desired = Gauge("tierscale_desired_replicas", "Desired replica count", ["group"], registry=r)
        # The bounds in force (a `schedule:` entry's when one is active): "at max for 10 m" is an alert.
        self.min_replicas = Gauge("tierscale_min_replicas", "The group's min in force", ["group"], registry=r)
        self.max_replicas = Gauge("tierscale_max_replicas", "The group's max in force", ["group"], registry=r)
        self.metric_value = Gauge(
            "tierscale_metric_value", "Observed value of each scaling metric", ["group", "metric"], registry=r
        )
        self.metric_target = Gauge(
            "tierscale_metric_target", "Target of each scaling metric", ["group", "metric"], registry=r
        )
        self.scale_events = Counter(
            "tierscale_scale_events", "Changes of the desired count", ["group", "direction"], registry=r
        )
        self.provision_seconds = Histogram(
            "tierscale_provision_seconds",
            "Create call to first healthy check",
            ["group", "tier"],
            buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300, 600),
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "tierscale_reconcile_seconds",
            "Duration of one reconcile pass",
            ["group"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.balancer_reloads = Counter(
            "tierscale_balancer_reloads", "Balancer reloads by result", ["group", "result"], registry=r
        )
        self.replacements = Counter(
            "tierscale_replacements", "Replicas replaced, by reason", ["group", "reason"], registry=r
        )

        self.rollout_replicas = Gauge(
            "tierscale_rollout_replicas", "Replicas by template revision", ["group", "revision"], registry=r
        )
        self.rollouts = Counter(
            "tierscale_rollouts", "Rollouts by how they ended", ["group", "result"], registry=r
        )
        self.cold_start_seconds = Histogram(
            "tierscale_cold_start_seconds",
            "First request held at zero replicas to its response",
            ["group", "tier"],
            buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 10, 20, 30, 60, 120),
            registry=r,
        )
        self.held_requests = Gauge(
            "tierscale_held_requests", "Requests waiting for a replica to wake", ["group"], registry=r
        )
        # ha: 1 for the controller (instance) that leads the group, 0 for a standby; each controller
        # exports its own instance, so a scrape of every controller shows exactly one 1 per group.
        self.leader = Gauge(
            "tierscale_leader",
            "This controller leads the group (1) or stands by (0)",
            ["group", "instance"],
            registry=r,
        )
        # 1 when the metric's last read worked; 0 while its source fails (a stale value, a fallback or a
        # hold stands in: tierscale_metric_value says which number the policy used).
        self.metric_up = Gauge(
            "tierscale_metric_up",
            "The metric's source answered on the last read (1) or failed (0)",
            ["group", "metric"],
            registry=r,
        )
        self.leader_changes = Counter(
            "tierscale_leader_changes", "Times this controller saw the leader change", registry=r
        )

    def forget_group(self, group: str) -> None:
        """A group no longer managed: its series go, so dashboards do not show a frozen last value."""
        for metric in (
            self.replicas,
            self.desired,
            self.min_replicas,
            self.max_replicas,
            self.metric_value,
            self.metric_target,
            self.scale_events,
            self.provision_seconds,
            self.reconcile_seconds,
            self.balancer_reloads,
            self.replacements,
            self.rollout_replicas,
            self.rollouts,
            self.cold_start_seconds,
            self.held_requests,
            self.leader,
            self.metric_up,
        ):
            for labels in [k for k in list(metric._metrics) if k and k[0] == group]:
                metric.remove(*labels)

    def set_replica_counts(self, group: str, states: Iterable[str]) -> None:
        counts = dict.fromkeys(REPLICA_STATES, 0)
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            self.replicas.labels(group, state).set(n)

    def init_group(self, group: str, tier: str) -> None:
        """Create every known label set at zero, so `/metrics` lists each series before its first event.

        Without this a counter that has not fired yet is absent, and `rate()`/`increase()` in Prometheus
        cannot see its first increment.
        """
        for direction in ("up", "down"):
            self.scale_events.labels(group, direction)
        for result in ("ok", "failed"):
            self.balancer_reloads.labels(group, result)
        for reason in REPLACEMENT_REASONS:
            self.replacements.labels(group, reason)
        for state in REPLICA_STATES:
            self.replicas.labels(group, state)
        self.desired.labels(group)
        self.min_replicas.labels(group)
        self.max_replicas.labels(group)
        for result in ROLLOUT_RESULTS:
            self.rollouts.labels(group, result)
        self.provision_seconds.labels(group, tier)
        self.reconcile_seconds.labels(group)
