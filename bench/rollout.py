"""Rolling 10 docker replicas to a new image under steady load: tierscale against Docker Swarm, one run.

The change: image `tierscale/demo:latest` → `tierscale/demo:rollout-v2` (a second tag of the same image,
made here and removed at the end) plus one changed env var (BENCH_REV=1 → 2), so both systems see a new
revision. Open-loop load (tierscale.loadgen) of --rps requests/s of a cheap path (/work?ms=1) runs from
--warm s before the change until --tail s after it is done. Three parts, in this order, in this process:

1. tierscale rolling update: a docker group of --replicas (min = max) behind its nginx on loopback,
   rollout {max_surge: 1, max_unavailable: 0, min_healthy_time: H}, health every 500 ms (1 success
   makes a replica ready); `Controller.apply(new config)` on the running controller (what `POST
   /api/config` and `tierscale apply` do). Load goes to nginx.
2. Docker Swarm: a second dockerd in a network namespace (tests/helpers/dockerd.py), a single-node
   swarm, a service of --replicas tasks with a health check (wget /healthz every 500 ms, healthy after
   one success) and the same 0.25 CPU / 64 MB limits, then `docker service update --image … --env-add
   BENCH_REV=2 --update-order start-first --update-parallelism 1 --update-delay H --update-monitor H`.
   Swarm waits for a new task to be healthy (running) before it stops the old one, then waits the
   update delay before the next: H is the same per-replica wait as tierscale's min_healthy_time. This
   kernel has no IPVS, so Swarm's VIP and ingress mesh cannot route; the service runs with
   `--endpoint-mode dnsrr` on an attachable overlay network and the load comes from inside a container
   on that network: our loadgen runs in that container's network namespace (nsenter), every request on
   a new connection to the first address Swarm's embedded DNS (127.0.0.11) returns for the service
   name, asked afresh per request (no client cache, no retry on another address). So Swarm alone
   decides which tasks get traffic, as its DNS round-robin does for any client.
3. Outage baseline: tierscale `down` then `run` on the new config (the same group, the same nginx port):
   from the start of `down` until --replicas are ready on the new revision.

Measured: duration (tierscale: apply → rollout state "complete"; Swarm: update command start →
UpdateStatus "completed"; both also "converged": the engine runs exactly --replicas containers, all of
the new image), failed requests (non-2xx or no response), peak containers running above --replicas
(sampled on the engine every 0.2 s for both; tierscale's own status as well).

    .venv/bin/python bench/rollout.py [--replicas 10] [--rps 50] [--repeat 1] [--healthy-time 3]
                                      [--sync-period 5] [--skip-swarm]

Needs root, the demo image (`make docker-image`) and nginx. Everything it starts (containers, the second
dockerd, its namespace, bridge and directories, nginx) is removed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.dockerd import DockerdError, NamespacedDockerd, namespaced_dockerd  # noqa: E402
from tierscale.config import load_config_text  # noqa: E402
from tierscale.controller.down import down  # noqa: E402
from tierscale.loadgen import LoadResult, LoadRunner  # noqa: E402
from tierscale.providers.docker import LABEL_GROUP  # noqa: E402
from tierscale.providers.docker_image import DEMO_IMAGE  # noqa: E402
from tierscale.service import BackgroundController  # noqa: E402

NEW_IMAGE = "tierscale/demo:rollout-v2"
PATH = "/work?ms=1"
SAMPLE_S = 0.2
SWARM_SERVICE = "web"
SWARM_NET = "benchnet"
HEALTH_CMD = "wget -q -O /dev/null http://127.0.0.1:8080/healthz || exit 1"

CONFIG = """\
state_dir: {state_dir}
groups:
  - name: {name}
    tier: docker
    min: {n}
    max: {n}
    sync_period: {sync}s
    metrics: [{{type: cpu, target: 50}}]
    template: {{image: {image}, port: 8080, cpus: 0.25, memory: 64m, env: {{BENCH_REV: "{rev}"}}}}
    health: {{path: /healthz, interval: 500ms, timeout: 1s, healthy_after: 1, unhealthy_after: 3,
             startup_grace: 30s}}
    rollout: {{max_surge: 1, max_unavailable: 0, min_healthy_time: {mht}s, healthy_deadline: 120s}}
    balancer: {{type: nginx, listen: "127.0.0.1:{port}"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(what: str, cond: Callable[[], bool], timeout: float, step: float = 0.2) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


# ---- what the engine runs ---------------------------------------------------------------------------------


@dataclass
class EngineSampler:
    """Counts running containers (old image / new image) on an engine every SAMPLE_S, in a thread."""

    client: Any
    label: str  # containers of the group or service
    new_image: str
    expect: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t since start, old, new)
    extra: Callable[[float], None] | None = None  # called each tick too (Swarm: the update status)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    t0: float = 0.0

    def start(self) -> EngineSampler:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self.t0
            try:
                rows = self.client.api.containers(filters={"label": self.label, "status": "running"})
                new = sum(1 for r in rows if r.get("Image") == self.new_image)
                self.samples.append((t, len(rows) - new, new))
                if self.extra is not None:
                    self.extra(t)
            except Exception as exc:  # a sample lost is a gap, not a failed bench
                log(f"sample failed: {exc}")
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def peak_total(self) -> int:
        return max((o + n for _, o, n in self.samples), default=0)

    def converged_at(self) -> float | None:
        """First time from which the engine ran exactly `expect` containers, all new, to the end."""
        at = None
        for t, old, new in self.samples:
            at = (t if at is None else at) if old == 0 and new == self.expect else None
        return at


def failures(result: LoadResult, offset: float) -> list[float] | None:
    """[first, last] failed request, in seconds since the change; None when none failed."""
    ts = [round(t - offset, 2) for t, s, _ in result.timeline if not 200 <= s < 300]
    return [ts[0], ts[-1]] if ts else None


def summarize(result: LoadResult) -> dict[str, Any]:
    return {
        "requests": result.sent,
        "failed": int(result.failed),
        "failures": {**{str(k): v for k, v in result.status.items() if not 200 <= k < 300}, **result.errors},
        "p99_ms": round(result.latencies.get("p99", 0.0), 1),
        "max_ms": round(result.latencies.get("max", 0.0), 1),
        "instances": len(result.instances),
    }


# ---- tierscale ---------------------------------------------------------------------------------------------


class Tierscale:
    """A docker group behind nginx; `configs` gives the old and the new config of the same group."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_dir = Path(tempfile.mkdtemp(prefix="tierscale-bench-rollout-"))
        self.name = "ro-" + secrets.token_hex(3)
        self.port = free_port()
        self.old = self._config(DEMO_IMAGE, "1")
        self.new = self._config(NEW_IMAGE, "2")
        self.url = f"http://127.0.0.1:{self.port}{PATH}"

    def _config(self, image: str, rev: str) -> Any:
        a = self.args
        text = CONFIG.format(
            state_dir=self.state_dir,
            name=self.name,
            n=a.replicas,
            sync=a.sync_period,
            image=image,
            rev=rev,
            mht=a.healthy_time,
            port=self.port,
        )
        return load_config_text(text, f"{self.name}.yaml")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            down(self.old)
        client = docker.from_env()
        try:  # down found what the controller knew of; a container it never saw must not stay either
            for c in client.containers.list(
                all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={self.name}"}
            ):
                c.remove(force=True)
        finally:
            client.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def revision_of(cfg: Any) -> str:
    from tierscale.config.revision import template_revision

    return template_revision(cfg.groups[0].template)


def wait_ready_on(bg: BackgroundController, group: str, n: int, revision: str, timeout: float) -> float:
    def ok() -> bool:
        st = bg.status(group)
        reps = [r for r in st["replicas"] if r["state"] == "ready" and r["revision"] == revision]
        return len(reps) == n and len(st["replicas"]) == n

    return wait_until(f"{n} ready replicas of {revision}", ok, timeout)


class StatusSampler:
    """bg.status every 0.1 s: the rollout state and the replicas the controller knows."""

    def __init__(self, bg: BackgroundController, group: str, t0: float) -> None:
        self.bg, self.group, self.t0 = bg, group, t0
        self.samples: list[tuple[float, str, str, int, int]] = []  # t, rollout state, target, known, ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                st = self.bg.status(self.group)
                ro = st.get("rollout") or {}
                reps = st["replicas"]
                ready = sum(1 for r in reps if r["state"] == "ready")
                self.samples.append(
                    (time.monotonic() - self.t0, ro.get("state", ""), ro.get("target", ""), len(reps), ready)
                )
            self._stop.wait(0.1)

    def start(self) -> StatusSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def tierscale_rollout(args: argparse.Namespace) -> dict[str, Any]:
    ts = Tierscale(args)
    new_rev = revision_of(ts.new)
    client = docker.from_env()
    bg = BackgroundController(ts.old, api="off")
    out: dict[str, Any] = {"system": "tierscale rolling update"}
    runner: LoadRunner | None = None
    sampler: EngineSampler | None = None
    status: StatusSampler | None = None
    try:
        bg.start()
        took = wait_ready_on(bg, ts.name, args.replicas, revision_of(ts.old), 120)
        log(f"tierscale: {args.replicas} replicas ready in {took:.1f}s; load {args.rps} req/s on {ts.url}")
        runner = LoadRunner(ts.url, args.rps, 3600.0, timeout=5.0).start()
        load_t0 = time.monotonic()
        time.sleep(args.warm)
        sampler = EngineSampler(client, f"{LABEL_GROUP}={ts.name}", NEW_IMAGE, args.replicas).start()
        t0 = sampler.t0
        wall0 = time.time() - (time.monotonic() - t0)
        status = StatusSampler(bg, ts.name, t0).start()
        assert bg.controller is not None and bg.loop is not None
        change = asyncio.run_coroutine_threadsafe(bg.controller.apply(ts.new), bg.loop).result(60)
        log(f"tierscale: applied ({change.summary()}) in {time.monotonic() - t0:.2f}s; rolling")

        def complete() -> bool:
            st = bg.status(ts.name)
            ro = st.get("rollout") or {}
            return ro.get("target") == new_rev and ro.get("state") == "complete"

        done = wait_until("the rollout to complete", complete, args.timeout, 0.1)
        log(f"tierscale: rollout complete after {done:.1f}s")
        wait_until("the engine to converge", lambda: sampler.converged_at() is not None, 60)
        time.sleep(args.tail)
        runner.stop()
        result = runner.result(timeout=30)
        sampler.stop()
        status.stop()
        out.update(
            duration_s=round(done, 2),
            converged_s=round(sampler.converged_at() or 0.0, 2),
            peak_extra=sampler.peak_total() - args.replicas,
            peak_extra_status=max((k for _, _, _, k, _ in status.samples), default=0) - args.replicas,
            min_ready=min((r for _, st, _, _, r in status.samples if st != "complete"), default=None),
            **summarize(result),
            failed_window=failures(result, t0 - load_t0),
        )
        if args.events:
            print_timeline(ts, wall0)
    finally:
        if runner is not None:
            runner.stop()
        for s in (sampler, status):
            if s is not None:
                s.stop()
        bg.stop()
        ts.cleanup()
        client.close()
    return out


TIMELINE_KINDS = (
    "replica_created",
    "replica_ready",
    "replica_draining",
    "replica_deleted",
    "rollout_complete",
)


def print_timeline(ts: Tierscale, wall0: float) -> None:
    """The group's rollout events and reconcile passes, in seconds since the change (--events)."""
    from tierscale.eventstore import EventStore

    store = EventStore(ts.state_dir / "events.db")
    try:
        rows = [(e.ts, e.kind, e.replica or "") for e in store.events(ts.name, since=wall0, limit=10000)]
        rows += [(d.ts, "pass", f"desired {d.desired}") for d in store.decisions(ts.name, since=wall0)]
    finally:
        store.close()
    print("tierscale rollout timeline (s since apply):", file=sys.stderr)
    for t, kind, what in sorted(rows):
        if kind in TIMELINE_KINDS or kind == "pass":
            print(f"  {t - wall0:7.2f}  {kind:<18} {what}", file=sys.stderr)


def tierscale_outage(args: argparse.Namespace) -> dict[str, Any]:
    ts = Tierscale(args)
    new_rev = revision_of(ts.new)
    bg = BackgroundController(ts.old, api="off")
    bg2: BackgroundController | None = None
    runner: LoadRunner | None = None
    out: dict[str, Any] = {"system": "tierscale down + run (outage)"}
    client = docker.from_env()
    sampler: EngineSampler | None = None
    try:
        bg.start()
        took = wait_ready_on(bg, ts.name, args.replicas, revision_of(ts.old), 120)
        log(f"outage: {args.replicas} replicas ready in {took:.1f}s; load {args.rps} req/s on {ts.url}")
        runner = LoadRunner(ts.url, args.rps, 3600.0, timeout=5.0).start()
        load_t0 = time.monotonic()
        time.sleep(args.warm)
        sampler = EngineSampler(client, f"{LABEL_GROUP}={ts.name}", NEW_IMAGE, args.replicas).start()
        t0 = sampler.t0
        bg.stop()  # the controller goes; `down` takes the group's lock next
        down(ts.old)
        t_down = time.monotonic() - t0
        log(f"outage: down took {t_down:.1f}s; run on the new config")
        bg2 = BackgroundController(ts.new, api="off").start()
        wait_ready_on(bg2, ts.name, args.replicas, new_rev, args.timeout)
        done = time.monotonic() - t0
        log(f"outage: {args.replicas} ready on the new revision after {done:.1f}s")
        time.sleep(args.tail)
        runner.stop()
        result = runner.result(timeout=30)
        sampler.stop()
        out.update(
            duration_s=round(done, 2),
            down_s=round(t_down, 2),
            converged_s=round(sampler.converged_at() or 0.0, 2),
            peak_extra=sampler.peak_total() - args.replicas,
            **summarize(result),
            failed_window=failures(result, t0 - load_t0),
        )
    finally:
        if runner is not None:
            runner.stop()
        if sampler is not None:
            sampler.stop()
        bg.stop()
        if bg2 is not None:
            bg2.stop()
        with contextlib.suppress(Exception):
            down(ts.new)
        ts.cleanup()
        client.close()
    return out


# ---- Docker Swarm ------------------------------------------------------------------------------------------


def _dns_query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", 1, 1)


def _skip_name(buf: bytes, i: int) -> int:
    while True:
        n = buf[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def _dns_a_records(buf: bytes, qid: int) -> list[str]:
    rid, _flags, qd, an, _, _ = struct.unpack(">HHHHHH", buf[:12])
    if rid != qid:
        raise OSError("DNS answer for another query")
    i = 12
    for _ in range(qd):
        i = _skip_name(buf, i) + 4
    found = []
    for _ in range(an):
        i = _skip_name(buf, i)
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", buf[i : i + 10])
        i += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(buf[i : i + 4]))
        i += length
    return found


async def swarm_dns(name: str, server: str = "127.0.0.11", timeout: float = 2.0) -> list[str]:
    """A records of `name` from Docker's embedded DNS, asked now (no cache), in the order it gave them."""
    loop = asyncio.get_running_loop()
    qid = secrets.randbelow(65536)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect((server, 53))
        await loop.sock_sendall(s, _dns_query(name, qid))
        data = await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)
    return _dns_a_records(data, qid)


def swarm_client_main(url: str, rps: float, max_s: float) -> int:
    """Run inside the network namespace of a container on the swarm's overlay network (see the module
    docstring): the stock loadgen, with a connector that resolves the service name through Swarm's DNS
    per request and connects to the first address only. Prints the LoadResult as JSON on stdout."""
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

    from tierscale import loadgen

    class SwarmResolver(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            addrs = await swarm_dns(host)
            if not addrs:
                raise OSError(f"Swarm DNS has no address for {host}")
            return [
                ResolveResult(
                    hostname=host,
                    host=addrs[0],
                    port=port,
                    family=socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]

        async def close(self) -> None:
            return None

    base = aiohttp.TCPConnector

    class SwarmConnector(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw.update(resolver=SwarmResolver(), use_dns_cache=False, force_close=True)
            super().__init__(*a, **kw)

    loadgen.aiohttp.TCPConnector = SwarmConnector  # type: ignore[misc]

    async def main() -> LoadResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("started", file=sys.stderr, flush=True)
        return await loadgen.run_load(url, rps, max_s, timeout=5.0, stop=stop)

    result = asyncio.run(main())
    print(result.to_json())
    return 0


class SwarmLoad:
    """This script's swarm client, in the network namespace of the container `lg` on the overlay."""

    def __init__(self, engine: NamespacedDockerd, rps: float) -> None:
        pid = engine.container_pid("lg")
        url = f"http://{SWARM_SERVICE}:8080{PATH}"
        cmd = ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, __file__, "--swarm-client", url]
        self.proc = subprocess.Popen(
            [*cmd, "--rps", str(rps)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "started" not in line:
            raise RuntimeError(f"the swarm load client did not start: {line}{self.proc.stderr.read()}")
        self.t0 = time.monotonic()

    def stop(self) -> LoadResult:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the swarm load client failed: {err.strip()[-2000:]}")
        return LoadResult.from_json(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def swarm_rollout(args: argparse.Namespace, engine: NamespacedDockerd) -> dict[str, Any]:
    n, h = args.replicas, args.healthy_time
    out: dict[str, Any] = {"system": "Docker Swarm service update"}
    client = engine.client()
    load: SwarmLoad | None = None
    sampler: EngineSampler | None = None
    try:
        engine.docker("network", "create", "-d", "overlay", "--attachable", SWARM_NET)
        engine.docker(
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            SWARM_SERVICE,
            "--network",
            SWARM_NET,
            "--endpoint-mode",
            "dnsrr",
            "--replicas",
            str(n),
            "--limit-cpu",
            "0.25",
            "--limit-memory",
            "64m",
            "--env",
            "BENCH_REV=1",
            "--health-cmd",
            HEALTH_CMD,
            "--health-interval",
            "500ms",
            "--health-timeout",
            "1s",
            "--health-retries",
            "3",
            DEMO_IMAGE,
        )
        engine.docker("run", "-d", "--name", "lg", "--network", SWARM_NET, DEMO_IMAGE)
        label = f"com.docker.swarm.service.name={SWARM_SERVICE}"

        def all_healthy() -> bool:
            rows = client.api.containers(filters={"label": label, "health": "healthy"})
            return len(rows) == n

        took = wait_until(f"{n} healthy swarm tasks", all_healthy, 120)
        log(f"swarm: {n} tasks healthy in {took:.1f}s; load {args.rps} req/s through Swarm's DNS")
        load = SwarmLoad(engine, args.rps)
        time.sleep(args.warm)
        state: dict[str, Any] = {"completed_at": None, "states": []}
        sid = client.api.inspect_service(SWARM_SERVICE)["ID"]

        def update_status(t: float) -> None:
            us = client.api.inspect_service(sid).get("UpdateStatus") or {}
            st = us.get("State", "")
            if not state["states"] or state["states"][-1][1] != st:
                state["states"].append((round(t, 2), st))
            if st == "completed" and state["completed_at"] is None:
                state["completed_at"] = t

        sampler = EngineSampler(client, label, NEW_IMAGE, n, extra=update_status).start()
        t0 = sampler.t0
        engine.docker(
            "service",
            "update",
            "--detach",
            "--no-resolve-image",
            "--image",
            NEW_IMAGE,
            "--env-add",
            "BENCH_REV=2",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "1",
            "--update-delay",
            f"{h}s",
            "--update-monitor",
            f"{h}s",
            SWARM_SERVICE,
        )
        log(f"swarm: update issued in {time.monotonic() - t0:.2f}s; rolling")
        wait_until("the swarm update to complete", lambda: state["completed_at"] is not None, args.timeout)
        done = state["completed_at"]
        log(f"swarm: UpdateStatus completed after {done:.1f}s")
        wait_until("the engine to converge", lambda: sampler.converged_at() is not None, 60)
        time.sleep(args.tail)
        load_t0 = load.t0
        result = load.stop()
        load = None
        sampler.stop()
        bad = [s for _, s in state["states"] if s not in ("", "updating", "completed")]
        out.update(
            duration_s=round(done, 2),
            converged_s=round(sampler.converged_at() or 0.0, 2),
            peak_extra=sampler.peak_total() - n,
            update_states=state["states"],
            **summarize(result),
            # the client's clock starts when it prints "started" (load_t0), within a few ms
            failed_window=failures(result, t0 - load_t0),
        )
        if bad:
            out["note"] = f"update went through {bad}"
    finally:
        if load is not None:
            load.kill()
        if sampler is not None:
            sampler.stop()
        client.close()
    return out


# ---- the run -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def second_tag() -> Iterator[None]:
    subprocess.run(["docker", "tag", DEMO_IMAGE, NEW_IMAGE], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["docker", "rmi", NEW_IMAGE], check=False, capture_output=True)


def run_swarm(args: argparse.Namespace) -> dict[str, Any]:
    t = time.monotonic()
    with namespaced_dockerd(swarm=True) as engine:
        log(f"swarm: dockerd in netns {engine.netns} at {engine.address} up in {time.monotonic() - t:.1f}s")
        engine.load_images(DEMO_IMAGE)
        engine.docker("tag", DEMO_IMAGE, NEW_IMAGE)
        return swarm_rollout(args, engine)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(runs[-1])
    for key in ("duration_s", "converged_s", "peak_extra", "p99_ms"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            row[key] = statistics.median(vals)
    row["failed"] = sum(r["failed"] for r in runs)
    row["requests"] = sum(r["requests"] for r in runs)
    merged: dict[str, int] = {}
    for r in runs:
        for k, v in r["failures"].items():
            merged[k] = merged.get(k, 0) + v
    row["failures"] = merged
    row["runs"] = [{k: r.get(k) for k in ("duration_s", "converged_s", "failed")} for r in runs]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rps", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per part; medians (failures: sums)")
    ap.add_argument(
        "--healthy-time",
        type=float,
        default=3.0,
        help="tierscale min_healthy_time = Swarm --update-delay = --update-monitor (s)",
    )
    ap.add_argument("--sync-period", type=float, default=5.0, help="tierscale sync_period (its default: 5)")
    ap.add_argument("--warm", type=float, default=3.0, help="load before the change (s)")
    ap.add_argument("--tail", type=float, default=5.0, help="load after the change is done (s)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on one change after this (s)")
    ap.add_argument("--skip-swarm", action="store_true")
    ap.add_argument("--events", action="store_true", help="print tierscale's rollout timeline (stderr)")
    ap.add_argument("--swarm-client", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.swarm_client:
        return swarm_client_main(args.swarm_client, args.rps, 3600.0)

    def terminate(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # so every finally below runs

    signal.signal(signal.SIGTERM, terminate)
    if os.geteuid() != 0 and not args.skip_swarm:
        print(
            "bench/rollout.py: the Swarm part needs root (a network namespace); --skip-swarm", file=sys.stderr
        )
        return 2
    rows: list[dict[str, Any]] = []
    swarm_error = None
    with second_tag():
        rows.append(median_row([tierscale_rollout(args) for _ in range(args.repeat)]))
        if not args.skip_swarm:
            try:
                rows.append(median_row([run_swarm(args) for _ in range(args.repeat)]))
            except (DockerdError, RuntimeError, subprocess.SubprocessError) as exc:
                swarm_error = f"Swarm part failed: {exc}"
                log(swarm_error)
        rows.append(median_row([tierscale_outage(args) for _ in range(args.repeat)]))

    print(
        f"{args.replicas} docker replicas, {args.rps:g} req/s of {PATH}, max_surge 1, max_unavailable 0, "
        f"min_healthy_time = swarm update-delay = update-monitor = {args.healthy_time:g}s, "
        f"tierscale sync_period {args.sync_period:g}s, repeat {args.repeat}"
    )
    head = f"{'':<32} {'done s':>7} {'converged s':>12} {'peak extra':>11} {'requests':>9} {'failed':>7}"
    print(head + f" {'p99 ms':>8}  failures")
    for r in rows:
        print(
            f"{r['system']:<32} {r['duration_s']:>7} {r['converged_s']:>12} {r['peak_extra']:>11} "
            f"{r['requests']:>9} {r['failed']:>7} {r['p99_ms']:>8}  {r['failures'] or '-'}"
        )
    by = {r["system"]: r for r in rows}
    ts, sw = by["tierscale rolling update"], by.get("Docker Swarm service update")
    if sw:
        print(f"ratio tierscale/swarm, done (own definition): {ts['duration_s'] / sw['duration_s']:.2f}x")
        print(f"ratio tierscale/swarm, converged on the engine: {ts['converged_s'] / sw['converged_s']:.2f}x")
        print(f"failed requests: tierscale {ts['failed']}, swarm {sw['failed']}")
    else:
        print(swarm_error or "Swarm skipped (--skip-swarm)")
    out = by["tierscale down + run (outage)"]
    print(
        f"outage baseline: {out['duration_s']}s to {args.replicas} ready, {out['failed']} failed; "
        f"rollout/outage duration {ts['duration_s'] / out['duration_s']:.2f}x"
    )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench/rollout.py: interrupted; everything it started was removed", file=sys.stderr)
        sys.exit(130)
