"""A worker group on a real RabbitMQ queue: a depth at or below `activation` leaves it at 0, a backlog of
2 000 wakes it straight to several workers, they drain it, the group goes back to 0; the broker stopped
mid-run holds the count, then the fallback applies after max_staleness, and when the broker is back (its
persistent messages with it) the policy resumes and the workers finish the job.

The workers are `python -m tierscale.worker --amqp` processes (the process tier) acking one message at a
time; no balancer, health `running`; the depth is `messages` (ready + unacked) from the management API."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from helpers.e2e import events, wait_for
from helpers.rabbitmq_server import PASSWORD, USER, RabbitMQ, running_rabbitmq
from helpers.worker_groups import worker_group_config
from tierscale.controller.down import down
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

BACKLOG = 2000
TARGET = 200  # jobs per replica: 2 000 → 10, capped at max 4
RATE = 100  # jobs/s per worker
ACTIVATION = 5


def _config(state_dir: Path, mq: RabbitMQ) -> Any:
    amqp = f"amqp://{USER}:{PASSWORD}@127.0.0.1:{mq.amqp_port}/%2F?heartbeat=5&connection_attempts=1"
    worker = ["--amqp", amqp, "--queue", "jobs", "--rate", str(RATE)]
    metric = (
        f'{{type: rabbitmq, url: "{mq.management_url}", login_env: TS_TEST_RABBIT_LOGIN, queue: jobs, '
        f"count: messages, target_per_replica: {TARGET}, activation: {ACTIVATION}, max_staleness: 2s, "
        "fallback: {replicas: 2}}"
    )
    return worker_group_config(state_dir, "consumers", worker, metric)


def _publish(mq: RabbitMQ, n: int) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", mq.amqp_port))
    try:
        ch = conn.channel()
        ch.queue_declare("jobs", durable=True)
        persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        for i in range(n):
            ch.basic_publish("", "jobs", str(i).encode(), persistent)
    finally:
        conn.close()


def _depth(mq: RabbitMQ) -> int:
    """-1 until the management API has a count (it reports none for a moment after a declare)."""
    return int(mq.api("GET", "/api/queues/%2F/jobs").get("messages", -1))


def test_a_rabbitmq_backlog_wakes_a_worker_group_and_a_stopped_broker_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TS_TEST_RABBIT_LOGIN", f"{USER}:{PASSWORD}")
    with running_rabbitmq() as mq:
        # The queue is there before the group, as a user's would be, and its statistics are out.
        _publish(mq, 0)
        wait_for(lambda: _depth(mq) == 0, 30, what="the queue's first statistics")
        cfg = _config(tmp_path / "state", mq)
        try:
            with BackgroundController(cfg) as bg:

                def st() -> dict[str, Any]:
                    return bg.status("consumers")

                def source() -> dict[str, Any]:
                    sources = st()["metric_sources"]  # empty until the group's first pass
                    return sources[0] if sources else {}

                # At or below activation: seen, and the group stays at 0 decision after decision.
                _publish(mq, ACTIVATION - 2)
                small = ACTIVATION - 2
                wait_for(lambda: source().get("last_value") == small, 30, what="the small depth seen")
                seen_at = time.time()
                wait_for(
                    lambda: (st()["last_decision"] or {}).get("ts", 0) > seen_at + 2,
                    30,
                    what="two sync periods of decisions on it",
                )
                assert st()["desired"] == 0 and not st()["replicas"], st()

                # Woken at once to ceil(2003 / 200) = 11, within max 4 — not 1 then up by steps.
                _publish(mq, BACKLOG)
                wait_for(lambda: st()["desired"] == 4, 30, what="woken to 4 workers")
                wait_for(lambda: _depth(mq) == 0, 90, what="the backlog drained")
                wait_for(lambda: st()["desired"] == 0, 30, what="back to 0 once idle")
                wait_for(lambda: not st()["replicas"], 30, what="workers gone")

                # The broker stopped with work queued: hold on the last value, then the fallback (2).
                _publish(mq, 1200)  # → 6 by the policy, capped at 4; about 3 s of work for 4 workers
                wait_for(lambda: st()["desired"] == 4, 30, what="woken to 4 again")
                mq.stop()
                wait_for(lambda: source().get("state") == "fallback", 30, what="the fallback")
                wait_for(lambda: st()["desired"] == 2, 20, what="the fallback count")
                left = None
                mq.start()  # persistent messages on a durable queue survive the restart
                wait_for(lambda: source().get("state") == "ok", 30, what="the source back")
                left = _depth(mq)
                wait_for(lambda: _depth(mq) == 0, 90, what="the rest drained after the restart")
                wait_for(lambda: st()["desired"] == 0, 30, what="back to 0 on the real depth")
        finally:
            down(cfg)
    state = tmp_path / "state"
    scaled = [e.message for e in events(state, "consumers", "scaled")]
    # The depth read at the wake may be part of the backlog (statistics every 500 ms): any > 200 × 3 is 4.
    woke = [m for m in scaled if re.search(rf"woke: rabbitmq (\d+) above activation {ACTIVATION} → 4", m)]
    assert woke and all(int(re.findall(r"rabbitmq (\d+)", m)[0]) > 3 * TARGET for m in woke), scaled
    changes = ("metric_failed", "metric_fallback", "metric_recovered")
    kinds = [e.kind for e in events(state, "consumers", *changes)]
    assert kinds == list(changes), kinds
    print(f"after the broker restart {left} message(s) were left for the workers")
