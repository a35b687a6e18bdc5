"""A worker group on a real Redis list: a backlog of 2 000 wakes it from 0 straight to several workers,
they drain it, the group goes back to 0; Redis stopped mid-run holds the count instead of reading 0.

The workers are `python -m tierscale.worker` processes (the process tier) popping the list at a set
rate; no balancer, health `running`. Every count follows from KEDA's rules on the depth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from helpers.e2e import events, wait_for
from helpers.redis_server import running_redis
from helpers.worker_groups import worker_group_config
from tierscale.controller.down import down
from tierscale.metrics.redis_queue import redis_depth
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

BACKLOG = 2000
TARGET = 200  # jobs per replica: 2 000 → 10, capped at max 4
RATE = 100  # jobs/s per worker


def _config(state_dir: Path, url: str) -> object:
    worker = ["--redis", url, "--list", "jobs", "--rate", str(RATE)]
    metric = (
        f'{{type: redis, url: "{url}", key: jobs, target_per_replica: {TARGET}, activation: 0, '
        "max_staleness: 2s}"
    )
    return worker_group_config(state_dir, "workers", worker, metric)


def test_a_backlog_wakes_a_worker_group_it_drains_it_and_goes_back_to_zero(tmp_path: Path) -> None:
    with running_redis() as srv:
        r = redis.Redis.from_url(srv.url)
        cfg = _config(tmp_path / "state", srv.url)
        try:
            with BackgroundController(cfg) as bg:  # type: ignore[arg-type]
                wait_for(lambda: bg.status("workers")["desired"] == 0, 20, what="an empty queue: 0 workers")
                r.rpush("jobs", *range(BACKLOG))
                # Woken at once to ceil(2000 / 200) = 10, within max 4 — not 1 then up by steps.
                wait_for(lambda: bg.status("workers")["desired"] == 4, 20, what="woken to 4 workers")
                wait_for(lambda: r.llen("jobs") == 0, 60, what="the backlog drained")
                wait_for(lambda: bg.status("workers")["desired"] == 0, 30, what="back to 0 once idle")
                wait_for(lambda: not bg.status("workers")["replicas"], 30, what="workers gone")

                # The source stopped mid-run: with work in the queue, the count holds (never read as 0).
                r.rpush("jobs", *range(600))  # → ceil(600 / 200) = 3
                wait_for(lambda: bg.status("workers")["desired"] == 3, 20, what="woken to 3")
                srv.stop()
                wait_for(
                    lambda: bg.status("workers")["metric_sources"][0]["state"] == "hold",
                    20,
                    what="hold after max_staleness",
                )
                # Well past idle_after (4 s) and max_staleness (2 s): still 3, not 0.
                held = [
                    bg.status("workers")["desired"] for _ in range(3) if not asyncio.run(asyncio.sleep(2))
                ]
                assert held == [3, 3, 3], held
                srv.start()  # no persistence: it comes back empty, so the policy takes the group to 0
                wait_for(lambda: bg.status("workers")["metric_sources"][0]["state"] == "ok", 20, what="ok")
                wait_for(lambda: bg.status("workers")["desired"] == 0, 30, what="back to 0 on the real depth")
        finally:
            down(cfg)  # type: ignore[arg-type]
    scaled = events(tmp_path / "state", "workers", "scaled")
    assert any("woke: redis 2000 above activation 0 → 4" in e.message for e in scaled), [
        e.message for e in scaled
    ]
    kinds = [
        e.kind
        for e in events(tmp_path / "state", "workers", "metric_failed", "metric_fallback", "metric_recovered")
    ]
    assert kinds == ["metric_failed", "metric_fallback", "metric_recovered"], kinds


def test_the_depth_reader_on_a_real_redis() -> None:
    with running_redis() as srv:
        r = redis.Redis.from_url(srv.url)
        read = lambda kind, key, group=None: asyncio.run(redis_depth(srv.url, kind, key, group, 2.0))  # noqa: E731
        assert read("list", "nothing-here") == (0.0, None)  # Redis deletes empty lists
        r.rpush("q", "a", "b", "c")
        assert read("list", "q") == (3.0, None)
        r.set("s", "x")
        value, error = read("list", "s")
        assert value is None and error is not None and "is a string, not a list" in error
        r.xadd("st", {"n": 1})
        r.xadd("st", {"n": 2})
        r.xgroup_create("st", "g", id="0")
        assert read("stream", "st", "g") == (2.0, None)  # two not delivered yet (lag)
        r.xreadgroup("g", "c1", {"st": ">"}, count=1)
        assert read("stream", "st", "g") == (2.0, None)  # one pending + one lag
        value, error = read("stream", "st", "other")
        assert value is None and "no consumer group other" in (error or "")
        value, error = read("stream", "missing", "g")
        assert value is None and "stream missing does not exist" in (error or "")
        srv.stop()
        value, error = read("list", "q")
        assert value is None and error is not None and f"127.0.0.1:{srv.port}" in error
        srv.start()
        assert read("list", "q") == (0.0, None)  # back, empty: no persistence
