"""Helpers for end-to-end tests: group configs with unique ports, the scenarios every tier runs, waiting
and leak checks."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import psutil

from tierscale.config import load_config_text
from tierscale.eventstore import DecisionRecord, Event, EventStore
from tierscale.loadgen import LoadResult, LoadRunner, run_load_sync
from tierscale.providers import Replica, make_provider

if TYPE_CHECKING:  # only named in annotations: importing these helpers does not start the controller code
    from tierscale.service import BackgroundController


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP address (IPv4 or IPv6)."""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_block() -> int:
    # Below the kernel's ephemeral range (32768+, where free_port() lands). Under pytest-xdist each
    # worker owns a 2500-port stretch; a lone run starts at 22000.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return 22000 + (index % 4) * 2500


_port_block = [_first_block()]


def port_block(size: int = 20) -> tuple[int, int]:
    """A replica port range no other test in this run uses."""
    lo = _port_block[0]
    _port_block[0] += size
    return lo, lo + size - 1


# ---- configs ---------------------------------------------------------------------------------------------


def group_config(
    state_dir: Path,
    tier: str,
    template: str,
    *,
    name: str = "web",
    min_: int = 1,
    max_: int = 5,
    target: int = 50,
    down_window: str = "5s",
    metrics: str = "[{type: cpu, target: %(target)d}]",
    extra: str = "",
    listen_port: int | None = None,
    health_path: str = "/healthz",
    health_timeout: str = "3s",
    startup_grace: str = "15s",
    balancer: str = "",
    balancer_type: str = "nginx",
) -> tuple[Any, str]:
    """One group of `tier` behind nginx (or `balancer_type`: haproxy), written to
    `<state_dir>/../<name>.yaml` and loaded.

    `template` is the tier's template as a YAML flow mapping; `balancer` adds keys to the balancer
    mapping (e.g. `algorithm: least_conn`); `extra` is appended as is (more group keys, or top-level ones).
    `health_timeout` is the probe's: a replica that answers is not taken for hung because the machine is
    busy (two probes in a row timing out make it unhealthy).
    """
    listen = listen_port or free_port()
    # Each config gets its own API port unless it configures the API itself: two controllers running at
    # once (this run's and another's) must not fight over the default one.
    api_line = "" if "api:" in extra else f'api: {{listen: "127.0.0.1:{free_port()}"}}\n'
    balancer_keys = f", {balancer}" if balancer else ""
    text = f"""\
state_dir: {state_dir}
{api_line}groups:
  - name: {name}
    tier: {tier}
    min: {min_}
    max: {max_}
    sync_period: 1s
    template: {template}
    health: {{path: {health_path}, interval: 300ms, timeout: {health_timeout}, healthy_after: 1,
             unhealthy_after: 2, startup_grace: {startup_grace}}}
    metrics: {metrics % {"target": target}}
    cpu_initialization_period: 3s
    initial_readiness_delay: 1s
    behavior:
      scale_down:
        stabilization_window: {down_window}
        policies: [{{type: Percent, value: 100, period: 3s}}]
    drain_timeout: 5s
    balancer: {{type: {balancer_type}, listen: "127.0.0.1:{listen}"{balancer_keys}}}
{extra}"""
    path = Path(state_dir).parent / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_config_text(text, str(path)), str(path)


def process_group_config(state_dir: Path, cpus: float = 0.25, **knobs: Any) -> tuple[Any, str]:
    """A process-tier group of demo workloads on a port range of its own; `knobs` as for group_config."""
    lo, hi = port_block()
    command = '["python3", "-m", "tierscale.workload", "--port", "{port}"]'
    template = f"{{command: {command}, port_range: [{lo}, {hi}], cpus: {cpus}}}"
    return group_config(state_dir, "process", template, **knobs)


def work_url(cfg: Any, ms: int) -> str:
    """The demo workload's /work endpoint behind the group's balancer."""
    return f"http://{cfg.groups[0].balancer.listen}/work?ms={ms}"


# ---- the CLI ---------------------------------------------------------------------------------------------


def run_tierscale(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`tierscale ARGS` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tierscale", *args], capture_output=True, text=True, timeout=timeout
    )


class CliControllers:
    """`tierscale run PATH` processes, as an operator starts them; the ones still running are stopped
    (SIGTERM, then waited for up to `stop_timeout` s) when the block ends, even when the test failed."""

    def __init__(self, path: str, stop_timeout: float) -> None:
        self.path = path
        self.stop_timeout = stop_timeout
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierscale", "run", self.path, *args],
            # Nobody reads it: a pipe would fill up and block a chatty controller mid-test.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def restart_after_sigkill(
        self, first: subprocess.Popen[bytes], url: str, rate: float
    ) -> subprocess.Popen[bytes]:
        """SIGKILL `first`, check the group keeps serving without it, then start a second controller."""
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # Replicas and the balancer outlive the controller: the service keeps answering meanwhile.
        assert run_load_sync(url, rate, 1.5).failed == 0
        return self.start()

    def __enter__(self) -> CliControllers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(self.stop_timeout)


# ---- the event store ---------------------------------------------------------------------------------------


def events(state_dir: Path, group: str, *kinds: str) -> list[Event]:
    """The group's events of `kinds` (all when none), oldest first."""
    store = EventStore(Path(state_dir) / "events.db")
    try:
        return store.events(group, kinds=kinds)
    finally:
        store.close()


def decisions(state_dir: Path, group: str, since: float | None = None) -> list[DecisionRecord]:
    """The group's decisions (the controller records one a pass), oldest first; `since`: from then on."""
    store = EventStore(Path(state_dir) / "events.db")
    try:
        return store.decisions(group, since=since)
    finally:
        store.close()


# ---- scenarios every tier runs ---------------------------------------------------------------------------


def replica_ids(bg: BackgroundController, group: str) -> set[str]:
    return {r["id"] for r in bg.status(group)["replicas"]}


def failed_message(result: LoadResult) -> str:
    """What failed and when: enough to tell a slow boot from a broken drain."""
    bad = [(round(t, 1), code) for t, code, _ in result.timeline if code != 200]
    return f"failed requests: {result.status} {result.errors} at {bad[:20]}"


class Step:
    """An offered rate: `base` for `start` s, then `peak` until `release()`, then `tail`. The peak ends on
    a condition (the test saw the group at its peak), not at a guessed time: on a loaded machine the
    replicas take longer to boot, and a step that ended by the clock would end before they were ready."""

    def __init__(self, base: float, peak: float, tail: float, start: float = 3.0) -> None:
        self.base, self.peak, self.tail, self.start = base, peak, tail, start
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __call__(self, t: float) -> float:
        if t < self.start:
            return self.base
        return self.tail if self._released.is_set() else self.peak


def scale_out_and_back(
    bg: BackgroundController,
    group: str,
    url: str,
    rate: Step,
    seconds: float,
    *,
    first_ready: float = 20,
    scaled_out: float = 30,
    back_to_min: float = 60,
    removed: float = 30,
    dwell: float = 4,
    at_peak: Callable[[], None] = lambda: None,
) -> set[str]:
    """Drive a load step through the balancer: the group scales out to ≥3 ready replicas, then back to one
    once the step ends. No request fails, every replica ready at the peak serves, and the events tell the
    story. `at_peak` checks the tier's own resources while the group is at its peak. Returns the replicas
    ready at the peak."""
    wait_for(lambda: bg.status(group)["ready"] >= 1, first_ready, what="first replica ready")
    runner = LoadRunner(url, rate, seconds).start()
    try:
        wait_for(lambda: bg.status(group)["ready"] >= 3, scaled_out, what="≥3 ready replicas under load")
        time.sleep(dwell)  # the step lasts a while yet: every replica ready now must get traffic
        peak = {r["id"] for r in bg.status(group)["replicas"] if r["state"] == "ready"}
        assert len(peak) >= 3
        at_peak()
        rate.release()
        wait_for(
            lambda: bg.status(group)["desired"] == 1,
            back_to_min,
            interval=0.5,
            what="scale back to min after the load stops",
        )
        wait_for(lambda: len(bg.status(group)["replicas"]) == 1, removed, what="drained replicas removed")
    finally:
        runner.stop()
    result = runner.result(timeout=30)
    assert result.failed == 0, failed_message(result)
    assert peak <= set(result.instances), f"replicas that never got traffic: {peak - set(result.instances)}"
    kinds = {e.kind for e in events(bg.config.state_dir, group)}
    assert {"scaled", "replica_drained", "replica_deleted"} <= kinds, kinds
    return peak


class Replacement(NamedTuple):
    victim: Replica
    before: set[str]  # replica ids before the kill
    after: set[str]  # and once the replacement is ready
    result: LoadResult  # the load that ran across the kill


def replace_under_load(
    bg: BackgroundController,
    kill: Callable[[Replica], None],
    rate: float,
    seconds: float,
    timeout: float,
) -> Replacement:
    """With two ready replicas serving a load, `kill` one behind the controller's back and wait until a
    replacement is ready and the victim is gone."""
    cfg = bg.config
    group = cfg.groups[0].name
    wait_for(lambda: bg.status(group)["ready"] == 2, timeout, what="two ready replicas")
    before = replica_ids(bg, group)
    victim = make_provider(cfg.groups[0], Path(cfg.state_dir)).list()[0]
    with LoadRunner(work_url(cfg, 2), rate, seconds) as runner:
        time.sleep(1)
        kill(victim)
        wait_for(
            lambda: bg.status(group)["ready"] == 2 and victim.id not in replica_ids(bg, group),
            timeout,
            what="replacement ready",
        )
    result = runner.result(timeout=30)
    return Replacement(victim, before, replica_ids(bg, group), result)


# ---- waiting and leaks -------------------------------------------------------------------------------------


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def wait_passes(state_dir: Path, group: str, n: int, *, at_least: float = 0.0, timeout: float = 60) -> None:
    """Return once the group's controller has made `n` passes from now (one recorded decision each) and at
    least `at_least` seconds have gone by.

    For checks that something does *not* happen (no duplicate after an adoption, no change while paused):
    the time it would take is counted in the controller's passes, so on a busy machine, where a pass takes
    longer, the check waits longer instead of looking too early.
    """
    since = time.time()

    def done() -> bool:
        return time.time() - since >= at_least and len(decisions(state_dir, group, since)) >= n

    wait_for(done, timeout + at_least, what=f"{n} passes of the controller of {group}")


def workload_processes(port_range: tuple[int, int]) -> list[psutil.Process]:
    """Live demo-workload processes for a port of `port_range` (one test's replicas): `-m
    tierscale.workload --port P`, or a wrapper that names the module in its code and takes the port as
    its last argument (a replica that sleeps before it starts the workload still counts)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info.get("cmdline") or []
            if not any("tierscale.workload" in arg for arg in cmd) or p.status() == psutil.STATUS_ZOMBIE:
                continue
            port = int(cmd[cmd.index("--port") + 1] if "--port" in cmd else cmd[-1])
        except (psutil.Error, ValueError, IndexError):
            continue
        if port_range[0] <= port <= port_range[1]:
            out.append(p)
    return out


def nginx_processes(state_dir: Path) -> list[psutil.Process]:
    """nginx masters started under `state_dir` (their command line names the prefix; workers' does not)."""
    needle = str(state_dir)
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "nginx" and needle in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def haproxy_processes(state_dir: Path) -> list[psutil.Process]:
    """HAProxy masters and workers started under `state_dir` (each names its config, which lives there)."""
    needle = str(state_dir)
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "haproxy" and needle in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def balancer_processes(state_dir: Path) -> list[psutil.Process]:
    """Every nginx master and HAProxy process of ours under `state_dir`."""
    return nginx_processes(state_dir) + haproxy_processes(state_dir)


def balancer_log_tail(state_dir: Path, group: str, lines: int = 12) -> str:
    """nginx's own account of a failure: its error log's last lines and its last non-200 requests."""
    from tierscale.controller.locks import group_dir

    logs = group_dir(Path(state_dir), group) / "nginx" / "logs"
    out = []
    for name, keep in (("error.log", lambda ln: True), ("access.log", lambda ln: '"status":"200"' not in ln)):
        try:
            text = (logs / name).read_text(errors="replace").splitlines()
        except OSError as exc:
            out.append(f"{name}: {exc}")
            continue
        picked = [ln for ln in text if keep(ln)][-lines:]
        out.append(f"--- {name} ({len(picked)} shown)\n" + "\n".join(picked))
    return "\n".join(out)
