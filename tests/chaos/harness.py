"""One chaos run on one tier: a group under steady open-loop load, faults injected at seeded random
moments, and after each one proof that the group is whole again and that nothing leaked.

"Whole again" (converged) means all of: the API answers; the controller wants the count the metric asks
for; that many replicas are ready and in the balancer; the infrastructure holds exactly the replicas the
controller believes in, all running; one nginx master of ours; no disk of ours without its VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chaos.fakeprom import FakePrometheus
from chaos.tiers import Tier
from helpers.e2e import free_port, nginx_processes, port_block
from tierscale.loadgen import LoadResult, LoadRunner

COMMON_KINDS = ("replica_kill", "replica_hang", "controller_restart", "nginx_kill", "metrics_garbage")
DISK_FULL = "disk_full"
SETTLE = 3.0  # seconds after convergence during which a failed request is still blamed on the injection


@dataclass
class Injection:
    index: int
    kind: str
    target: str | None = None
    at: float = 0.0  # seconds since the load started
    converged_after: float | None = None  # seconds from the injection; None: not whole again in time
    failed_requests: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class TierReport:
    tier: str
    group: str
    seed: int
    desired: int
    injections: list[Injection] = field(default_factory=list)
    requests_sent: int = 0
    requests_failed: int = 0
    failed_outside_injections: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    foreign_touched: list[str] = field(default_factory=list)
    controller_crashes: int = 0
    left_after_down: list[str] = field(default_factory=list)
    skipped_kinds: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def unconverged(self) -> list[Injection]:
        return [i for i in self.injections if i.converged_after is None]

    def problems(self) -> list[str]:
        """What makes the run a failure (failed requests are reported, and judged by the caller)."""
        out = [f"leak: {x}" for x in self.leaks] + [f"duplicate: {x}" for x in self.duplicates]
        out += [f"foreign object touched: {x}" for x in self.foreign_touched]
        out += [f"left after down: {x}" for x in self.left_after_down]
        out += [f"#{i.index} {i.kind} did not converge: {'; '.join(i.notes)}" for i in self.unconverged]
        if self.controller_crashes:
            out.append(f"controller died {self.controller_crashes} time(s) without being killed")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ChaosRun:
    def __init__(
        self,
        tier_cls: type[Tier],
        workdir: Path,
        seed: int,
        injections: int,
        desired: int = 3,
        log: Callable[[str], None] = print,
        logdir: Path | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.group = f"ch{tier_cls.name[:2]}{secrets.token_hex(3)}"
        self.tier = tier_cls(self.group)
        self.workdir = workdir
        self.state = workdir / "state"
        self.n = injections
        self.desired = desired
        self.log = log
        self.report = TierReport(self.tier.name, self.group, seed, desired)
        self.api_port = free_port()
        self.listen_port = free_port()
        self.ctl: subprocess.Popen[bytes] | None = None
        self.ctl_log = (logdir or workdir) / f"{self.tier.name}-controller.log"
        self._restarted_at = 0.0
        self.tmpfs = False
        self.prom = FakePrometheus(value=100.0 * desired)
        self.load: LoadRunner | None = None
        self.load_started = 0.0

    # ------------------------------------------------------------------ setup
    def _mount_state(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self._no_tmpfs("not root")
            return
        # A small tmpfs as the state dir, so "the disk is full" can be made true without touching the host.
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(self.state)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.tmpfs = done.returncode == 0
        if not self.tmpfs:
            self._no_tmpfs(done.stderr.strip())

    def _no_tmpfs(self, why: str) -> None:
        # In CI (root, a fresh machine) the full-disk injection must run: a silent skip would hide breakage.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise RuntimeError(f"no tmpfs for the chaos state dir in CI ({why}): disk_full cannot run")
        self.log(f"  (no tmpfs for the state dir: {why}; disk_full skipped)")

    def _write_config(self) -> Path:
        lo, hi = port_block(40)
        text = f"""\
state_dir: {self.state}
api: {{listen: "127.0.0.1:{self.api_port}"}}
groups:
  - name: {self.group}
    tier: {self.tier.config_tier or self.tier.name}
    min: 1
    max: {self.desired + 3}
    sync_period: 1s
    template: {self.tier.template(lo, hi)}
    health: {{path: /healthz, interval: 300ms, timeout: 1s, healthy_after: 1, unhealthy_after: 2,
             startup_grace: {self.tier.startup_grace}}}
    metrics: [{{type: prometheus, url: "{self.prom.url}", query: chaos_load, target_per_replica: 100}}]
    initial_readiness_delay: 1s
    behavior:
      scale_down: {{stabilization_window: 5s}}
    drain_timeout: 3s
    balancer: {{type: nginx, listen: "127.0.0.1:{self.listen_port}"}}
{self.tier.group_extra}"""
        path = self.workdir / f"{self.group}.yaml"
        path.write_text(text)
        return path

    def _start_controller(self) -> None:
        with self.ctl_log.open("ab") as out:
            self.ctl = subprocess.Popen(
                [sys.executable, "-m", "tierscale", "run", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    # ------------------------------------------------------------------ observation
    def status(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.api_port}/api/groups/{self.group}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (OSError, ValueError):
            return None

    def whole(self) -> tuple[bool, str]:
        st = self.status()
        if st is None:
            return False, "API not answering"
        ids = {r["id"] for r in st["replicas"]}
        ready = {r["address"] for r in st["replicas"] if r["state"] == "ready"}
        infra = self.tier.infra()
        backends = set((st.get("balancer") or {}).get("backends") or ())
        masters = nginx_processes(self.state)
        checks = [
            (st["desired"] == self.desired, f"desired {st['desired']}"),
            (len(ready) == self.desired and len(ids) == self.desired, f"ready {len(ready)} of {len(ids)}"),
            (set(infra) == ids, f"infrastructure {sorted(infra)} vs controller {sorted(ids)}"),
            (all(s == "running" for s in infra.values()), f"states {infra}"),
            (backends == ready, f"balancer {sorted(backends)} vs ready {sorted(ready)}"),
            (len(masters) == 1, f"{len(masters)} nginx masters"),
            (not self.tier.leaked_disks(ids), f"disks without a VM {self.tier.leaked_disks(ids)}"),
        ]
        failed = [why for ok, why in checks if not ok]
        return not failed, "; ".join(failed)

    def wait_whole(self, timeout: float) -> tuple[float | None, str]:
        start = time.monotonic()
        why = ""
        while time.monotonic() - start < timeout:
            try:
                ok, why = self.whole()
            except Exception as exc:  # the infrastructure itself may be restarting (dockerd, libvirtd)
                ok, why = False, f"cannot look: {exc}"[:300]
            if ok:
                return time.monotonic() - start, ""
            self._check_controller()
            time.sleep(0.25)
        return None, why

    def _check_controller(self) -> None:
        """A controller that died by itself is a finding; start another so the run can go on."""
        if self.ctl is not None and self.ctl.poll() is not None:
            if time.monotonic() - self._restarted_at < 2.0:
                return  # crash-looping: do not spin, the report already counts it
            self._restarted_at = time.monotonic()
            self.report.controller_crashes += 1
            self.log(f"  !! controller exited with {self.ctl.returncode}; see {self.ctl_log}")
            self._start_controller()

    # ------------------------------------------------------------------ injections
    def _running_replica(self) -> str:
        infra = self.tier.infra()
        running = sorted(rid for rid, s in infra.items() if s == "running")
        assert running, f"no running replica to target: {infra}"
        return self.rng.choice(running)

    def _inject(self, inj: Injection) -> None:
        kind = inj.kind
        if kind == "replica_kill":
            inj.target = self._running_replica()
            self.tier.kill(inj.target)
        elif kind == "replica_hang":
            inj.target = self._running_replica()
            self.tier.hang(inj.target)
        elif kind == "controller_restart":
            assert self.ctl is not None
            self.ctl.send_signal(signal.SIGKILL)
            self.ctl.wait(10)
            self._start_controller()
        elif kind == "nginx_kill":
            masters = nginx_processes(self.state)
            assert len(masters) == 1, f"{len(masters)} nginx masters before the injection"
            inj.target = f"nginx pid {masters[0].pid}"
            masters[0].kill()
        elif kind == "metrics_garbage":
            self._garbage(inj, seconds=6.0)
        elif kind == DISK_FULL:
            self._disk_full(inj, seconds=6.0)
        else:
            self.tier.daemon_injections()[kind]()

    def _garbage(self, inj: Injection, seconds: float) -> None:
        self.prom.garbage = True
        seen: set[int] = set()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                st = self.status()
                if st is not None:
                    seen.add(st["desired"])
                time.sleep(0.3)
        finally:
            self.prom.garbage = False
        moved = sorted(seen - {self.desired})
        if moved:
            inj.notes.append(f"desired moved to {moved} on garbage metrics")

    def _disk_full(self, inj: Injection, seconds: float) -> None:
        filler = self.state / "chaos-filler"
        with filler.open("wb") as f:
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
                    f.flush()
        # While nothing can be written: lose a replica, so the controller must create under a full disk.
        inj.target = self._running_replica()
        self.tier.kill(inj.target)
        time.sleep(seconds)
        filler.unlink()

    # ------------------------------------------------------------------ the run
    def kinds(self) -> list[str]:
        kinds = list(COMMON_KINDS) + list(self.tier.daemon_injections())
        if self.tmpfs:
            kinds.append(DISK_FULL)
        else:
            self.report.skipped_kinds.append(DISK_FULL)
        # Every kind at least once (as far as the count allows), the rest drawn at random.
        order = kinds[:]
        self.rng.shuffle(order)
        while len(order) < self.n:
            order.append(self.rng.choice(kinds))
        return order[: self.n]

    def run(self) -> TierReport:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._mount_state()
        try:
            with self.prom:
                self.tier.start()
                self.config = self._write_config()
                self.tier.make_foreign()
                self._start_controller()
                took, why = self.wait_whole(self.tier.converge_timeout * 2)
                if took is None:
                    raise AssertionError(f"the group never became whole: {why}; see {self.ctl_log}")
                self.log(f"  {self.tier.name}: {self.desired} replicas ready after {took:.1f}s; load on")
                url = f"http://127.0.0.1:{self.listen_port}/work?ms={self.tier.work_ms}"
                self.load = LoadRunner(url, self.tier.rate, 24 * 3600.0, timeout=15.0).start()
                self.load_started = time.monotonic()
                for index, kind in enumerate(self.kinds(), 1):
                    self._one(index, kind)
                self.load.stop()
                result = self.load.result(timeout=60)
                self._account(result)
                self._final_checks()
        finally:
            if self.load is not None:
                self.load.stop()
            self._teardown()
        self.report.duration_s = round(time.monotonic() - t0, 1)
        return self.report

    def _one(self, index: int, kind: str) -> None:
        time.sleep(self.rng.uniform(0.5, 3.0))  # a random moment, not right after the last repair
        inj = Injection(index, kind, at=round(time.monotonic() - self.load_started, 2))
        started = time.monotonic()
        try:
            self._inject(inj)
        except Exception as exc:  # the harness's own failure to inject is reported, not hidden
            inj.notes.append(f"injection failed: {exc}")
        if kind != "controller_restart":
            self._check_controller()
        took, why = self.wait_whole(self.tier.converge_timeout)
        inj.converged_after = None if took is None else round(time.monotonic() - started, 2)
        if took is None:
            inj.notes.append(why)
        self.report.injections.append(inj)
        state = f"whole after {inj.converged_after:.1f}s" if took is not None else f"NOT whole: {why}"
        target = f" {inj.target}" if inj.target else ""
        self.log(f"  #{index:02d} {kind}{target}: {state} {' '.join(inj.notes)}".rstrip())

    def _account(self, result: LoadResult) -> None:
        r = self.report
        r.requests_sent = result.sent
        r.requests_failed = int(result.failed)
        r.failure_kinds = {
            **{str(k): v for k, v in result.status.items() if not 200 <= k < 300},
            **result.errors,
        }
        windows = [
            (i.at, i.at + (i.converged_after or self.tier.converge_timeout) + SETTLE, i) for i in r.injections
        ]
        for t, status, _lat in result.timeline:
            if 200 <= status < 300:
                continue
            owner = next((i for lo, hi, i in reversed(windows) if lo <= t <= hi), None)
            if owner is None:
                r.failed_outside_injections += 1
            else:
                owner.failed_requests += 1

    def _final_checks(self) -> None:
        took, why = self.wait_whole(self.tier.converge_timeout)
        st = self.status() or {"replicas": []}
        believed = {x["id"] for x in st["replicas"]}
        infra = self.tier.infra()
        self.report.leaks += [
            f"{self.tier.name} replica {rid} ({s})" for rid, s in infra.items() if rid not in believed
        ]
        self.report.leaks += [f"disk {d}" for d in self.tier.leaked_disks(set(infra))]
        self.report.duplicates += [rid for rid in infra if "#dup-" in rid]
        if took is None:
            self.report.leaks.append(f"final state not whole: {why}")
        self.report.foreign_touched += self.tier.foreign_problems()

    def _teardown(self) -> None:
        # Every step runs even when an earlier one fails: a chaos run must not leave its own mess behind.
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop controller", self._stop_controller),
            ("tierscale down", self._down),
            ("remove foreign objects", self.tier.remove_foreign),
            ("scrub", self.tier.scrub),
            ("kill nginx", self._kill_nginx),
            ("stop the tier's hosts", self.tier.stop),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                self.log(f"  teardown: {what} failed: {exc}")
                self.report.left_after_down.append(f"teardown step {what!r} failed: {exc}")
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True, check=False)

    def _stop_controller(self) -> None:
        if self.ctl is not None and self.ctl.poll() is None:
            self.ctl.send_signal(signal.SIGTERM)
            try:
                self.ctl.wait(60)
            except subprocess.TimeoutExpired:
                self.ctl.kill()
                self.ctl.wait(10)

    def _down(self) -> None:
        if getattr(self, "config", None) is None:
            return
        down = subprocess.run(
            [sys.executable, "-m", "tierscale", "down", str(self.config)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        left = self.report.left_after_down
        if down.returncode != 0:
            left.append(f"tierscale down exited {down.returncode}: {down.stderr[-300:]}")
        left += [f"{self.tier.name} replica {rid}" for rid in self.tier.infra()]
        left += [f"disk {d}" for d in self.tier.leaked_disks(set())]
        left += [f"nginx pid {p.pid}" for p in nginx_processes(self.state)]

    def _kill_nginx(self) -> None:
        for p in nginx_processes(self.state):
            with contextlib.suppress(psutil.Error):
                p.kill()


def summarize(reports: list[TierReport]) -> str:
    """Markdown: one row per tier and injection kind, then the totals that the issue asks for."""
    lines = [
        "| tier | injection | count | failed requests | converged | time to whole: median / max (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        kinds: dict[str, list[Injection]] = {}
        for i in r.injections:
            kinds.setdefault(i.kind, []).append(i)
        for kind, items in sorted(kinds.items()):
            times = [i.converged_after for i in items if i.converged_after is not None]
            spread = f"{statistics.median(times):.1f} / {max(times):.1f}" if times else "-"
            lines.append(
                f"| {r.tier} | {kind} | {len(items)} | {sum(i.failed_requests for i in items)} | "
                f"{len(times)}/{len(items)} | {spread} |"
            )
    lines += [
        "",
        "| tier | injections | requests | failed | failed outside injections | leaks | duplicates | "
        "foreign touched | left after down | controller crashes | run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.tier} | {len(r.injections)} | {r.requests_sent} | {r.requests_failed} | "
            f"{r.failed_outside_injections} | {len(r.leaks)} | {len(r.duplicates)} | "
            f"{len(r.foreign_touched)} | "
            f"{len(r.left_after_down)} | {r.controller_crashes} | {r.duration_s:.0f} |"
        )
    return "\n".join(lines)
