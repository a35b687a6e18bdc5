"""Scale to zero and back on the process tier: a burst at zero, the limits of holding, a killed controller."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.cold import (
    Answer,
    at_zero,
    burst,
    burst_at_zero_and_back,
    metric_samples,
    stz_extra,
)
from helpers.e2e import (
    CliControllers,
    decisions,
    events,
    group_config,
    port_block,
    wait_for,
    workload_processes,
)
from tierscale.controller.down import down
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

METRIC = "[{type: requests_per_replica, target: 5}]"


def _config(
    tmp_path: Path, command: str, extra: str, max_: int = 4, balancer_type: str = "nginx"
) -> tuple[Any, str, tuple[int, int]]:
    lo, hi = port_block()
    template = f"{{command: {command}, port_range: [{lo}, {hi}], cpus: 0.25}}"
    cfg, path = group_config(
        tmp_path / "state",
        "process",
        template,
        min_=0,
        max_=max_,
        metrics=METRIC,
        extra=extra,
        balancer_type=balancer_type,
    )
    return cfg, path, (lo, hi)


WORKLOAD = '["python3", "-m", "tierscale.workload", "--port", "{port}"]'
# The workload after a delay: a replica slow enough to boot that requests are still held a while.
SLOW = (
    '["python3", "-c", "import runpy, sys, time; time.sleep(float(sys.argv[1])); '
    "sys.argv = ['workload', '--port', sys.argv[2]]; runpy.run_module('tierscale.workload', "
    'run_name=\'__main__\')", "{delay}", "{{port}}"]'
)
# Listens never: nothing ever turns ready, so held requests meet their limits.
NEVER = '["python3", "-c", "import time, sys; time.sleep(3600)", "{port}"]'


def _cleanup(cfg: Any, ports: tuple[int, int]) -> None:
    down(cfg)
    assert workload_processes(ports) == []


def _url(cfg: Any) -> str:
    return f"http://{cfg.groups[0].balancer.listen}/work?ms=5"


def test_a_burst_at_zero_is_served_whole_and_the_group_returns_to_zero(
    tmp_path: Path, balancer_type: str
) -> None:
    cfg, _, ports = _config(tmp_path, WORKLOAD, stz_extra(idle="5s"), balancer_type=balancer_type)
    g = cfg.groups[0].name
    try:
        with BackgroundController(cfg):
            burst_at_zero_and_back(
                Path(cfg.state_dir), g, _url(cfg), lambda: workload_processes(ports), 5.0, boot=30
            )
            api = cfg.api.listen
            count = metric_samples(api, "tierscale_cold_start_seconds_count")
            assert sum(count.values()) >= 1, count
            held = metric_samples(api, "tierscale_held_requests")
            assert held and all(v == 0 for v in held.values()), held
            # Once at zero, the next request is held again and wakes the group again.
            again = burst(_url(cfg), 1, timeout=60)
            assert again[0].status == 200 and "X-Tierscale-Held" in again[0].headers, again
    finally:
        _cleanup(cfg, ports)


def _by_status(answers: list[Answer]) -> dict[int | str, list[Answer]]:
    out: dict[int | str, list[Answer]] = {}
    for a in answers:
        out.setdefault(a.status, []).append(a)
    return out


def test_beyond_max_pending_503_with_retry_after_and_at_hold_timeout_504(tmp_path: Path) -> None:
    cfg, _, ports = _config(tmp_path, NEVER, stz_extra(idle="1h", hold="2s", pending=3), max_=1)
    try:
        with BackgroundController(cfg):
            wait_for(lambda: at_zero(Path(cfg.state_dir), cfg.groups[0].name, []), 30, what="first pass")
            answers = burst(_url(cfg), 6, timeout=60)
            by = _by_status(answers)
            assert sorted(by) == [503, 504], {k: len(v) for k, v in by.items()}
            assert len(by[503]) == 3 and len(by[504]) == 3
            for a in by[503]:
                assert a.headers.get("Retry-After") == "1", a.headers
                assert "max_pending 3" in a.json()["error"]
                assert a.seconds < 2.0  # refused at once, not held
            for a in by[504]:
                assert "no replica became ready within 2s" in a.json()["error"]
                assert a.seconds >= 1.9
            held = metric_samples(cfg.api.listen, "tierscale_held_requests")
            assert all(v == 0 for v in held.values()), held
    finally:
        _cleanup(cfg, ports)


def test_a_controller_killed_while_requests_are_held_leaves_no_dead_endpoint(tmp_path: Path) -> None:
    cfg, path, ports = _config(tmp_path, SLOW.format(delay=4), stz_extra(idle="3s", hold="60s"), max_=2)
    state, g = Path(cfg.state_dir), cfg.groups[0].name
    answers: list[Answer] = []
    try:
        with CliControllers(path, stop_timeout=30) as ctl:
            first = ctl.start()
            wait_for(lambda: at_zero(state, g, workload_processes(ports)), 30, what="the group at zero")
            sender = threading.Thread(target=lambda: answers.extend(burst(_url(cfg), 4, timeout=60)))
            sender.start()
            wait_for(lambda: events(state, g, "woke"), 20, interval=0.05, what="the group woken")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            sender.join(70)
            # What was held when the controller died is answered, not left hanging: 503 + Retry-After
            # (the requests were not sent to any replica, so retrying them is safe).
            assert [a.status for a in answers] == [503] * 4, [(a.status, a.body) for a in answers]
            assert all(a.headers.get("Retry-After") == "1" for a in answers)
            # With no controller, a new request gets the same clean answer, not held (hold is 60 s).
            while_down = burst(_url(cfg), 1, timeout=50)[0]
            assert while_down.status == 503 and while_down.seconds < 30, while_down
            restarted = time.time()
            ctl.start()

            # The new controller adopts the replica the first one started (if the kill came after the
            # create) and goes back to zero: no workload process left behind by either controller.
            def settled() -> bool:
                last = decisions(state, g, since=restarted)
                return bool(last) and last[-1].desired == 0 and not workload_processes(ports)

            wait_for(settled, 60, interval=0.5, what="back at zero, no replica left")
            started = time.time()
            # ...and then holds requests again.
            again = burst(_url(cfg), 2, timeout=60)
            assert [a.status for a in again] == [200, 200], [(a.status, a.body) for a in again]
            assert all("X-Tierscale-Held" in a.headers for a in again)
            assert [e for e in events(state, g, "woke") if e.ts >= started]
    finally:
        _cleanup(cfg, ports)
