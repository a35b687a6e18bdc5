"""External metrics (prometheus, redis, rabbitmq): config, the freshness rules, KEDA's activation at zero,
and the one-line errors of bad input. Hand-computed expectations throughout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierscale.config import ConfigError, load_config_text
from tierscale.config.settings import settings_for
from tierscale.controller.file_sd import PrometheusTargets, targets_of
from tierscale.controller.status_model import GroupStatus, ReplicaView
from tierscale.metrics.prometheus import with_login
from tierscale.policy.metric_freshness import Freshness, FreshnessRule, settle
from tierscale.policy.strategy import policy_step
from tierscale.policy.types import GroupSnapshot, MetricInput, PolicyState

FILE = "m.yaml"
HEAD = """\
groups:
  - name: w
    tier: process
    min: {min}
    max: 10
    sync_period: 5s
    template: {{command: ["x", "{{port}}"], port_range: [20000, 20010]}}
    balancer: {{type: none}}
    health: {{type: running}}
"""
REDIS = "    metrics:\n      - {type: redis, url: 'redis://r/0', key: jobs, target_per_replica: 100}\n"


def _group(extra: str, min_: int = 1):  # type: ignore[no-untyped-def]
    return load_config_text(HEAD.format(min=min_) + extra, FILE).groups[0]


def _problem(extra: str, min_: int = 1) -> tuple[str | None, str]:
    with pytest.raises(ConfigError) as info:
        _group(extra, min_)
    assert "\n" not in info.value.first_line()
    p = info.value.problems[0]
    return p.field, p.message


# ---- config ----------------------------------------------------------------------------------------------


def test_a_redis_list_metric_and_its_defaults() -> None:
    s = settings_for(_group(REDIS))
    (m,) = s.metrics
    assert (m.type, m.label, m.kind, m.key, m.target) == ("redis", "redis", "list", "jobs", 100.0)
    assert m.max_staleness == 10.0  # two sync periods
    assert m.fallback_replicas is None and m.activation is None
    assert s.health_type == "running"


def test_several_queues_get_their_own_labels() -> None:
    extra = (
        "    metrics:\n"
        "      - {type: redis, url: 'redis://r', key: a, target_per_replica: 1}\n"
        "      - {type: redis, url: 'redis://r', key: b, target_per_replica: 1}\n"
        "      - {type: rabbitmq, url: 'http://r:15672', queue: q, target_per_replica: 1, name: orders}\n"
    )
    assert [m.label for m in settings_for(_group(extra)).metrics] == ["redis", "redis-1", "orders"]


def test_a_stream_and_rabbitmq_metric_with_staleness_and_fallback() -> None:
    extra = (
        "    metrics:\n"
        "      - type: redis\n        url: redis://r\n        kind: stream\n        key: s\n"
        "        consumer_group: g\n        target_per_replica: 5\n        max_staleness: 30s\n"
        "      - type: rabbitmq\n        url: http://127.0.0.1:15672\n        queue: q\n"
        "        count: messages_ready\n        target_per_replica: 5\n        fallback: {replicas: 3}\n"
        "        activation: 2\n"
    )
    a, b = settings_for(_group(extra)).metrics
    assert (a.kind, a.consumer_group, a.max_staleness) == ("stream", "g", 30.0)
    assert (b.vhost, b.queue, b.count, b.fallback_replicas, b.activation) == (
        "/",
        "q",
        "messages_ready",
        3,
        2.0,
    )


BAD = [
    (
        "unknown redis kind",
        REDIS.replace("key: jobs", "key: jobs, kind: set"),
        "metrics[0].kind",
        "list, stream",
    ),
    (
        "stream without a consumer group",
        REDIS.replace("key: jobs", "key: jobs, kind: stream"),
        "metrics[0].consumer_group",
        "required when kind is stream",
    ),
    (
        "consumer group on a list",
        REDIS.replace("key: jobs", "key: jobs, consumer_group: g"),
        "metrics[0].consumer_group",
        "only used with kind: stream",
    ),
    ("negative target", REDIS.replace("100}", "-5}"), "metrics[0].target_per_replica", "must be > 0"),
    ("negative activation", REDIS.replace("100}", "1, activation: -1}"), "metrics[0].activation", ">= 0"),
    (
        "fallback above max",
        REDIS.replace("100}", "1, fallback: {replicas: 11}}"),
        "metrics[0].fallback.replicas",
        "within the group's [min, max] = [1, 10] (got 11)",
    ),
    (
        "fallback below min",
        REDIS.replace("100}", "1, fallback: {replicas: 0}}"),
        "metrics[0].fallback.replicas",
        "[1, 10] (got 0)",
    ),
    ("fallback word", REDIS.replace("100}", "1, fallback: zero}"), "metrics[0].fallback", "must be hold or"),
    (
        "fallback count",
        REDIS.replace("100}", "1, fallback: {replicas: -1}}"),
        "metrics[0].fallback.replicas",
        "",
    ),
    ("redis url", REDIS.replace("redis://r/0", "http://x"), "metrics[0].url", ""),
    (
        "rabbitmq count",
        "    metrics:\n"
        "      - {type: rabbitmq, url: 'http://r', queue: q, count: unacked, target_per_replica: 1}\n",
        "metrics[0].count",
        "messages, messages_ready",
    ),
    (
        "rabbitmq without queue",
        "    metrics:\n      - {type: rabbitmq, url: 'http://r', target_per_replica: 1}\n",
        "metrics[0].queue",
        "required",
    ),
    (
        "a password in the url",
        REDIS.replace("redis://r/0", "redis://:hunter2@r/0"),
        "metrics[0].url",
        "credentials never go in the config",
    ),
    ("login_env not a name", REDIS.replace("100}", "1, login_env: 'A B'}"), "metrics[0].login_env", ""),
    (
        "duplicate names",
        "    metrics:\n      - {type: redis, url: 'redis://r', key: a, target_per_replica: 1, name: q}\n"
        "      - {type: redis, url: 'redis://r', key: b, target_per_replica: 1, name: q}\n",
        "metrics[1].name",
        "duplicate metric name 'q' (also metrics[0])",
    ),
]


@pytest.mark.parametrize(("extra", "field", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_external_metric_is_one_line_naming_the_field(extra: str, field: str, words: str) -> None:
    got_field, message = _problem(extra)
    assert got_field == f"groups[0].{field}"
    assert words in message


def test_an_unknown_health_type_names_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(HEAD.format(min=1).replace("type: running", "type: ping") + REDIS, FILE)
    p = info.value.problems[0]
    assert p.field == "groups[0].health.type"
    assert "http, console, running, tcp" in p.message


def test_a_worker_group_at_zero_needs_something_to_wake_on() -> None:
    field, message = _problem("    scale_to_zero: {idle_after: 1m}\n", min_=0)
    assert field == "groups[0].scale_to_zero"
    assert "needs a balancer or a prometheus, redis or rabbitmq metric" in message
    assert _group(REDIS + "    scale_to_zero: {idle_after: 1m}\n", min_=0).scale_to_zero is not None


def test_the_login_comes_from_the_environment_at_each_read(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = settings_for(_group(REDIS.replace("100}", "1, login_env: Q_LOGIN}"))).metrics[0]
    monkeypatch.delenv("Q_LOGIN", raising=False)
    assert with_login(spec) == ("redis://r/0", "environment variable Q_LOGIN (login_env) is not set")
    monkeypatch.setenv("Q_LOGIN", "worker:p@ss:word")
    assert with_login(spec) == ("redis://worker:p%40ss%3Aword@r/0", None)
    monkeypatch.setenv("Q_LOGIN", "s3cret")  # a bare password: Redis' requirepass
    assert with_login(spec) == ("redis://:s3cret@r/0", None)


# ---- freshness ---------------------------------------------------------------------------------------------

READ = MetricInput("jobs", "total", 10.0, total=None, activation=0.0, error="redis r:1: connection refused")
GOOD = MetricInput("jobs", "total", 10.0, total=40.0, activation=0.0)

FRESH = [
    # (id, fallback, last good (value, at), now, -> total the policy sees, state)
    ("good read", None, None, 100.0, 40.0, "ok"),
    ("failed, last value 5 s old", None, (70.0, 95.0), 100.0, 70.0, "stale"),
    ("failed, last value exactly max_staleness old", None, (70.0, 90.0), 100.0, 70.0, "stale"),
    ("failed, too old, hold", None, (70.0, 89.0), 100.0, None, "hold"),
    ("failed, never read, hold", None, None, 100.0, None, "hold"),
    ("failed, too old, fallback 3", 3, (70.0, 80.0), 100.0, 30.0, "fallback"),
    ("failed, never read, the fallback waits max_staleness", 0, None, 100.0, None, "hold"),
]


@pytest.mark.parametrize(
    ("fallback", "last", "now", "total", "state"), [c[1:] for c in FRESH], ids=[c[0] for c in FRESH]
)
def test_freshness_rules(
    fallback: int | None, last: tuple[float, float] | None, now: float, total: float | None, state: str
) -> None:
    mem = Freshness() if last is None else Freshness(value=last[0], at=last[1])
    reading = GOOD if state == "ok" else READ
    out, new = settle(FreshnessRule(10.0, fallback), mem, reading, now)
    assert out.total == total
    assert new.state == state
    if state != "ok":
        assert new.failing_since == now and "connection refused" in (new.error or "")
        assert new.value == (None if last is None else last[0])  # the last good value is kept, not 0


def test_a_source_never_read_falls_back_max_staleness_after_its_first_failure() -> None:
    rule = FreshnessRule(10.0, 2)
    out, mem = settle(rule, Freshness(), READ, 100.0)
    assert (out.total, mem.state) == (None, "hold") and "fallback in 10s" in (out.error or "")
    out, mem = settle(rule, mem, READ, 109.0)
    assert (out.total, mem.state) == (None, "hold")
    out, mem = settle(rule, mem, READ, 110.0)
    assert (out.total, mem.state, mem.failing_since) == (20.0, "fallback", 100.0)


def test_an_outage_counts_from_its_first_failure_and_ends_at_the_first_good_read() -> None:
    rule = FreshnessRule(10.0, None)
    _, mem = settle(rule, Freshness(value=5.0, at=0.0), READ, 3.0)
    _, mem = settle(rule, mem, READ, 8.0)
    assert (mem.state, mem.failing_since) == ("stale", 3.0)
    _, mem = settle(rule, mem, READ, 11.0)
    assert (mem.state, mem.failing_since) == ("hold", 3.0)
    _, mem = settle(rule, mem, GOOD, 12.0)
    assert mem == Freshness(value=40.0, at=12.0)


# ---- activation at zero, through config → settings → policy_step ------------------------------------------

STZ_REDIS = REDIS.replace("100}", "100, activation: 5}") + "    scale_to_zero: {idle_after: 60s}\n"


def _snap(current: int, depth: float | None, now: float = 1000.0) -> GroupSnapshot:
    m = MetricInput("redis", "total", 100.0, total=depth, activation=5.0)
    return GroupSnapshot(now=now, current_replicas=current, min_replicas=0, max_replicas=10, metrics=(m,),
                         last_request_at=0.0)  # fmt: skip


WAKE = [
    # (id, depth, desired at zero)
    ("empty queue stays at zero", 0.0, 0),
    ("at activation stays at zero", 5.0, 0),
    ("above activation wakes to ceil(depth / target)", 6.0, 1),
    ("a backlog of 2000 at 100 each wakes to 10 at once", 2000.0, 10),
    ("a backlog beyond max wakes to max", 5000.0, 10),
    ("unknown never wakes (hold)", None, 0),
]


@pytest.mark.parametrize(("depth", "desired"), [c[1:] for c in WAKE], ids=[c[0] for c in WAKE])
def test_activation_wakes_a_worker_group(depth: float | None, desired: int) -> None:
    plan = settings_for(_group(STZ_REDIS, min_=0)).plan
    decision, _ = policy_step(plan, _snap(0, depth), PolicyState())
    assert decision.desired == desired


def test_idle_counts_from_the_last_time_the_queue_had_work() -> None:
    plan = settings_for(_group(STZ_REDIS, min_=0)).plan
    state = PolicyState()
    # Work at t=1000, then an empty queue: 1 replica until 60 s after the last busy look, then 0.
    d, state = policy_step(plan, _snap(1, 50.0, 1000.0), state)
    assert d.desired == 1
    d, state = policy_step(plan, _snap(1, 0.0, 1059.0), state)
    assert d.desired == 1
    d, state = policy_step(plan, _snap(1, 0.0, 1060.0), state)
    assert d.desired == 0 and "at or below activation for 60s" in d.reason


def test_an_unreadable_queue_is_never_idle() -> None:
    plan = settings_for(_group(STZ_REDIS, min_=0)).plan
    state = PolicyState()
    _, state = policy_step(plan, _snap(1, 0.0, 1000.0), state)
    for t in (1030.0, 1070.0, 1200.0):
        d, state = policy_step(plan, _snap(1, None, t), state)
        assert d.desired == 1, t


# ---- file-based service discovery --------------------------------------------------------------------------


def _status(*replicas: tuple[str, str | None, str]) -> GroupStatus:
    views = [
        ReplicaView(
            id=i,
            address=a,
            state=st,
            health="ok",
            cpu=None,
            rps=0.0,
            p95_ms=None,
            age=1.0,
            revision="r1",
            host="local",
        )
        for i, a, st in replicas
    ]
    return GroupStatus(group="w", tier="process", policy="hpa", min=1, max=3, desired=2, current=2, ready=1,
                       paused=False, replicas=views, last_decision=None)  # fmt: skip


def test_file_sd_lists_running_replicas_and_rewrites_only_on_change(tmp_path: Path) -> None:
    status = _status(
        ("b", "127.0.0.1:2", "starting"),
        ("a", "127.0.0.1:1", "ready"),
        ("c", None, "provisioning"),
        ("d", "127.0.0.1:4", "failed"),
    )
    assert [t["targets"] for t in targets_of(status, "process")] == [["127.0.0.1:1"], ["127.0.0.1:2"]]
    sd = PrometheusTargets(tmp_path, "w", "process")
    sd(0.0, status)
    body = json.loads(sd.path.read_text())
    assert body[0]["labels"] == {
        "group": "w",
        "tier": "process",
        "replica": "a",
        "revision": "r1",
        "host": "local",
    }
    assert sd.path.stat().st_mode & 0o777 == 0o644 and sd.path.parent.stat().st_mode & 0o777 == 0o755
    mtime = sd.path.stat().st_mtime_ns
    sd.path.write_text("[]")  # would be overwritten only by a change of targets
    sd(1.0, status)
    assert sd.path.read_text() == "[]" and sd.path.stat().st_mtime_ns >= mtime
    sd(2.0, _status(("a", "127.0.0.1:1", "ready")))
    assert len(json.loads(sd.path.read_text())) == 1
    other = PrometheusTargets(tmp_path, "v", "process")
    other(0.0, status)
    sd.remove()
    assert not sd.path.exists() and other.path.exists()  # the directory stays for the other group
    other.remove()
    assert not other.path.parent.exists()
