"""End to end on the process tier: real replica processes, real nginx, real HTTP, the real controller."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from helpers.e2e import (
    CliControllers,
    Step,
    balancer_processes,
    decisions,
    events,
    haproxy_processes,
    nginx_processes,
    process_group_config,
    replace_under_load,
    replica_ids,
    run_tierscale,
    scale_out_and_back,
    wait_for,
    wait_passes,
    work_url,
    workload_processes,
)
from tierscale.controller.down import down
from tierscale.loadgen import run_load_sync
from tierscale.providers import make_provider
from tierscale.service import BackgroundController
from tierscale.views import read_statuses

pytestmark = pytest.mark.e2e


@pytest.fixture
def state_dir(tmp_path: Path):
    sd = tmp_path / "state"
    yield sd


def _cleanup(cfg) -> None:
    down(cfg)
    port_range = tuple(cfg.groups[0].template.port_range)
    for p in workload_processes(port_range):  # belt and braces: a failed test must not leak processes
        p.kill()
    assert not balancer_processes(Path(cfg.state_dir))


def test_scale_out_under_load_and_back_in_with_zero_failures(state_dir: Path, balancer_type: str) -> None:
    cfg, _ = process_group_config(state_dir, min_=1, max_=5, balancer_type=balancer_type)
    try:
        with BackgroundController(cfg) as bg:
            scale_out_and_back(bg, "web", work_url(cfg, 20), Step(4.0, 30.0, 2.0), 80)
    finally:
        _cleanup(cfg)


def test_killed_replica_is_replaced_without_downtime(state_dir: Path, balancer_type: str) -> None:
    cfg, _ = process_group_config(state_dir, min_=2, max_=2, balancer_type=balancer_type)
    try:
        with BackgroundController(cfg) as bg:
            victim, before, after, result = replace_under_load(
                bg, lambda r: os.kill(int(r.ref), signal.SIGKILL), 20, 12, timeout=20
            )
        assert victim.id in before and victim.id not in after and len(after) == 2
        # nginx and HAProxy retry an idempotent GET on the other replica: the kill costs no client request.
        assert result.failed == 0, f"{result.status} {result.errors}"
        replaced = [e for e in events(state_dir, "web", "replica_replaced") if e.replica == victim.id]
        assert replaced and replaced[0].data["reason"] == "exited"
    finally:
        _cleanup(cfg)


def test_controller_sigkill_then_restart_adopts_every_replica(state_dir: Path, balancer_type: str) -> None:
    cfg, path = process_group_config(state_dir, min_=3, max_=3, balancer_type=balancer_type)
    provider = make_provider(cfg.groups[0], state_dir)
    port_range = tuple(cfg.groups[0].template.port_range)
    try:
        with CliControllers(path, stop_timeout=20) as runs:
            first = runs.start()
            wait_for(
                lambda: len([r for r in provider.list() if r.state == "running"]) == 3,
                20,
                what="three replicas",
            )
            wait_for(lambda: len(workload_processes(port_range)) == 3, 10, what="three processes")
            wait_for(
                lambda: any(st["ready"] == 3 for st in read_statuses(state_dir)),
                20,
                what="three replicas in the balancer",
            )
            before = {r.id for r in provider.list()}
            runs.restart_after_sigkill(first, work_url(cfg, 1), 20)
            # Several passes of the new controller: long enough for duplicates to appear if adoption failed.
            wait_passes(state_dir, "web", 5, at_least=6)
            after = {r.id for r in provider.list()}
            assert after == before, f"before {before}, after {after}"
            assert len(workload_processes(port_range)) == 3
            if balancer_type == "nginx":
                assert len(nginx_processes(state_dir)) == 1  # the adopted master, not a second one
            else:
                procs = haproxy_processes(state_dir)
                masters = [p for p in procs if p.ppid() not in {q.pid for q in procs}]
                assert len(masters) == 1, masters  # the adopted master, not a second one
            res = run_load_sync(work_url(cfg, 1), 30, 2)
            assert res.failed == 0 and set(res.instances) == before
    finally:
        _cleanup(cfg)


def test_second_controller_on_the_same_group_refuses(state_dir: Path) -> None:
    cfg, path = process_group_config(state_dir, min_=1, max_=1)
    try:
        with CliControllers(path, stop_timeout=20) as runs:
            runs.start()
            wait_for(
                lambda: (state_dir / "events.db").exists() and make_provider(cfg.groups[0], state_dir).list(),
                20,
                what="first controller running",
            )
            second = run_tierscale("run", path, timeout=30)
            assert second.returncode == 1
            assert "already managed by another tierscale process" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        _cleanup(cfg)


def test_balancer_rejected_config_is_recorded_and_last_good_keeps_serving(state_dir: Path) -> None:
    cfg, _ = process_group_config(state_dir, min_=1, max_=2)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    url = work_url(cfg, 1)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status("web")["ready"] == 1, 20, what="ready replica")
            gc = bg.controller.groups["web"]  # type: ignore[union-attr]
            # The operator moves the listener to a port another program holds: nginx -t rejects that.
            bg.call(lambda: setattr(gc.ctx.balancer, "listen", f"127.0.0.1:{taken}"))
            bg.call(lambda: setattr(gc.ctx.rt, "backends", None))  # force a re-render on the next pass
            wait_for(
                lambda: any(e.kind == "balancer_failed" for e in gc.ctx.store.events("web")),
                10,
                what="balancer_failed event",
            )
            res = run_load_sync(url, 20, 1.5)
            assert res.failed == 0 and res.ok > 0
            failed = next(e for e in gc.ctx.store.events("web") if e.kind == "balancer_failed")
            assert str(taken) in failed.message or "Address already in use" in failed.message
    finally:
        blocker.close()
        _cleanup(cfg)


def test_down_leaves_no_process_no_nginx_and_only_the_event_store(
    state_dir: Path, balancer_type: str
) -> None:
    cfg, path = process_group_config(state_dir, min_=2, max_=2, balancer_type=balancer_type)
    port_range = tuple(cfg.groups[0].template.port_range)
    try:
        once = run_tierscale("run", path, "--once")
        assert once.returncode == 0, once.stderr
        wait_for(lambda: len(workload_processes(port_range)) == 2, 10, what="two replicas after --once")
        assert balancer_processes(state_dir)  # --once leaves the balancer serving, like the replicas
        out = run_tierscale("down", path)
        assert out.returncode == 0, out.stderr
        assert "deleted 2 replica(s)" in out.stdout
        assert workload_processes(port_range) == []
        assert balancer_processes(state_dir) == []
        left = {p.name for p in state_dir.iterdir()}
        assert left <= {"events.db", "events.db-shm", "events.db-wal"} and "events.db" in left, left
    finally:
        _cleanup(cfg)


def test_dry_run_decides_but_creates_nothing(state_dir: Path) -> None:
    cfg, path = process_group_config(state_dir, min_=2, max_=3)
    port_range = tuple(cfg.groups[0].template.port_range)
    try:
        out = run_tierscale("run", path, "--once", "--dry-run")
        assert out.returncode == 0, out.stderr
        assert workload_processes(port_range) == []
        made = decisions(state_dir, "web")
        assert made and made[-1].desired == 2
    finally:
        _cleanup(cfg)


def test_hung_replica_is_replaced_and_the_loop_keeps_ticking(state_dir: Path) -> None:
    cfg, _ = process_group_config(state_dir, min_=2, max_=2)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status("web")["ready"] == 2, 20, what="two ready replicas")
            victim = make_provider(cfg.groups[0], state_dir).list()[0]
            os.kill(int(victim.ref), signal.SIGSTOP)  # alive, but answers nothing
            hung_at = time.time()
            wait_for(
                lambda: victim.id not in replica_ids(bg, "web") and bg.status("web")["ready"] == 2,
                30,
                what="hung replica replaced",
            )
            ticks = [d for d in decisions(state_dir, "web") if d.ts >= hung_at]
            unhealthy = [e for e in events(state_dir, "web", "replica_unhealthy") if e.replica == victim.id]
        assert unhealthy and "timeout" in unhealthy[0].message
        # One decision per 1 s sync period went on while the probes of the hung replica timed out.
        span = ticks[-1].ts - ticks[0].ts
        assert len(ticks) >= 0.5 * span, (len(ticks), span)
    finally:
        _cleanup(cfg)
