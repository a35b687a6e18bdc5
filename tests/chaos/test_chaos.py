"""The chaos suite inside `make test`: a short seeded run per tier (the full one is `make chaos`).

Each run injects every kind of fault at least once into a group serving steady load, and asserts that the
group is whole again after each, that nothing leaked, was duplicated or outside the group was touched,
and that no request failed beyond the one that may be in flight on a replica killed under it.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import aiohttp
import pytest

from chaos.fakeprom import GARBAGE, FakePrometheus
from chaos.harness import ChaosRun, TierReport
from chaos.tiers import TIERS
from helpers.ci import require
from tierscale.metrics.prometheus import query_prometheus

pytestmark = pytest.mark.e2e

# Injections that kill a replica outright: the request it is serving at that instant may be lost.
KILLS = ("replica_kill", "disk_full")


def test_every_garbage_answer_reads_as_no_value_and_a_good_one_as_its_number() -> None:
    async def read_all(url: str, n: int) -> list[float | None]:
        async with aiohttp.ClientSession() as s:
            return [await query_prometheus(s, url, "q", 2.0) for _ in range(n)]

    with FakePrometheus(value=250.0) as prom:
        assert asyncio.run(read_all(prom.url, 1)) == [250.0]
        prom.garbage = True
        values = asyncio.run(read_all(prom.url, len(GARBAGE)))
    assert values == [None] * len(GARBAGE), [v for v in values if v is None or not math.isnan(v)]


def _run(tier: str, tmp_path: Path, seed: int, injections: int) -> TierReport:
    ok, why = TIERS[tier]("probe").available()
    require(ok, why or tier)
    report = ChaosRun(TIERS[tier], tmp_path, seed, injections, logdir=tmp_path).run()
    print(report.to_json())
    return report


def _judge(report: TierReport, allowed_extra: int = 0) -> None:
    assert report.problems() == []
    kinds = {i.kind for i in report.injections}
    assert "replica_kill" in kinds and "controller_restart" in kinds and "nginx_kill" in kinds
    kills = sum(1 for i in report.injections if i.kind in KILLS)
    assert report.failed_outside_injections == 0
    assert report.requests_failed <= kills + allowed_extra, report.failure_kinds
    assert report.requests_sent > 100  # the load really ran through it all


# Each injection waits for the group to be whole again: on a busy machine that is slower, not wrong,
# so the bound is the harness's own per-injection timeouts, not pytest's default 300 s.
CHAOS_TIMEOUT = 900


@pytest.mark.timeout(CHAOS_TIMEOUT)
def test_chaos_process_tier(tmp_path: Path) -> None:
    _judge(_run("process", tmp_path, seed=11, injections=8))


@pytest.mark.timeout(CHAOS_TIMEOUT)
def test_chaos_docker_tier(tmp_path: Path) -> None:
    _judge(_run("docker", tmp_path, seed=12, injections=8))


@pytest.mark.timeout(CHAOS_TIMEOUT)
@pytest.mark.libvirtd_exclusive  # one of its faults restarts libvirtd
def test_chaos_libvirt_tier(tmp_path: Path) -> None:
    _judge(_run("libvirt", tmp_path, seed=13, injections=8))
