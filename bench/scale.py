"""What one group costs the controller at 100, 1000 and 5000 replicas, against the same run at 10.

One group on the fake tier (`FakeProvider(latency=0.02)`: every provider call sleeps 20 ms, as a remote
API would), the fake balancer and the fake prober, a real `EventStore` in a temp dir, driven through the
real `Controller` (a process-tier config whose provider is swapped in by `provider_factory`). The N
replicas are pre-adopted (`FakeProvider.add`), so reaching N costs no scale-up through rate limits. The
cpu target equals the fake's cpu_percent, so the HPA holds the count: every measured pass is steady
state. Per size, all in this one process (the machine is noisy: compare the ratios to 10 replicas):

  - pass: wall time of `GroupController.reconcile()` (median, p95 of --passes) and its CPU time. The
    adopted replicas are "started 10 minutes ago" (the clock is moved past the HPA's CPU-initialization
    period first); the `fresh pass` column is a pass right after adoption, while every replica is still
    inside its first sample window (the calculator counts them all unready),
  - store: what a pass spends in SQLite (`write_status` + `record_decision`), and events.db (+ WAL) size,
  - RSS of this process once the group holds N replicas (psutil; sizes run in ascending order),
  - API: GET /api/groups/{name} (the full status body) over loopback, median of --gets,
  - CPU share: process CPU time / wall time while the real loop runs (sync_period 5 s, health every
    2 s) for --cpu-seconds, i.e. the % of one core the controller uses in steady state.

    .venv/bin/python bench/scale.py                    # --sizes 10,100,1000,5000 --cpu-seconds 30
    .venv/bin/python bench/scale.py --quick            # smoke run: 5 s windows, fewer passes
    .venv/bin/python bench/scale.py --profile 1000     # also cProfile the steady passes at 1000

Goals (at 1000 replicas): a pass ≤ 1 s, ≤ 5 % of a core in steady state, RSS ≤ 120 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc as pygc
import io
import math
import os
import pstats
import resource
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tierscale.api import ApiServer
from tierscale.balancer.fake import FakeBalancer
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.controller.runner import Controller
from tierscale.providers.fake import FakeProber, FakeProvider

LATENCY = 0.02  # real seconds slept per provider call
CPU_PERCENT = 50.0  # what the fake reports for every replica; also the cpu target: no scaling
GROUP = "bench"
GOAL_SIZE = 1000
GOAL_PASS_S = 1.0
GOAL_CPU_PCT = 5.0
GOAL_RSS_MB = 120.0

CONFIG = """\
state_dir: {state_dir}
groups:
  - name: {group}
    tier: process
    min: 1
    max: {max}
    sync_period: 5s
    metrics: [{{type: cpu, target: {target}}}]
    health: {{interval: 2s}}
    template: {{command: ["true"]}}
"""


class OffsetClock:
    """Wall time plus an offset the bench can move forward (past the HPA's CPU-initialization period)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass
class Row:
    n: int
    adopt_s: float = 0.0
    fresh_pass_s: float | None = None
    pass_med: float = 0.0
    pass_p95: float = 0.0
    pass_cpu_med: float = 0.0
    store_med: float = 0.0
    status_med: float = 0.0
    db_bytes: int = 0
    wal_bytes: int = 0
    health_med: float = 0.0
    rss_mb: float = 0.0
    api_med: float = 0.0
    body_bytes: int = 0
    cpu_pct: float = 0.0
    window_passes: int = 0
    notes: list[str] = field(default_factory=list)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[..., Any], acc: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - t

    return wrapper


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


async def measure(n: int, args: argparse.Namespace) -> Row:
    row = Row(n)
    state_dir = Path(tempfile.mkdtemp(prefix=f"tierscale-scale-{n}-"))
    cfg = load_config_text(CONFIG.format(state_dir=state_dir, group=GROUP, max=2 * n, target=CPU_PERCENT))
    clock = OffsetClock()
    fakes: dict[str, FakeProvider] = {}

    def provider_factory(g: Any, _sd: Path, _sink: Any) -> FakeProvider:
        p = FakeProvider(
            g.name,
            revision=template_revision(g.template),
            latency=LATENCY,
            clock=clock.now,
            cpu_percent=CPU_PERCENT,
        )
        for i in range(n):
            p.add(f"r-{i:06d}")  # left by an earlier run: adopted at start, no create calls
        fakes[g.name] = p
        return p

    c = Controller(
        cfg,
        clock=clock,
        provider_factory=provider_factory,
        balancer_factory=lambda g, s: FakeBalancer(),
        prober_factory=lambda g, p: FakeProber(p),  # type: ignore[arg-type]
    )
    gc = c.groups[GROUP]
    try:
        # ---- reach N: adopt, probe, start the balancer
        t = time.perf_counter()
        await gc.start()
        row.adopt_s = time.perf_counter() - t
        st = gc.status()
        if (st.desired, st.ready) != (n, n):
            row.notes.append(f"after start: desired {st.desired}, ready {st.ready}")

        # ---- passes while every replica is inside its first sample window (all unready to the HPA)
        fresh = []
        for _ in range(3):
            t = time.perf_counter()
            d = await gc.reconcile()
            if d is None or "invalid-metric" not in d.limits:
                break
            fresh.append(time.perf_counter() - t)
        row.fresh_pass_s = statistics.median(fresh) if fresh else None

        # ---- steady state: replicas started 10 minutes ago, ready, cpu on target
        clock.offset += 600.0
        for _ in range(2):
            await gc.reconcile()
        store_acc = [0.0]
        c.store.write_status = timed(c.store.write_status, store_acc)  # type: ignore[method-assign]
        c.store.record_decision = timed(c.store.record_decision, store_acc)  # type: ignore[method-assign]
        walls, cpus, stores = [], [], []
        prof = cProfile.Profile() if n in args.profile else None
        for _ in range(args.passes):
            store_acc[0] = 0.0
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            d = await gc.reconcile()
            if prof:
                prof.disable()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            stores.append(store_acc[0])
            if d is None or d.desired != n or "tolerance" not in d.limits:
                row.notes.append(f"not steady: {d.reason if d else 'no decision'}")
                break
        row.pass_med, row.pass_p95 = statistics.median(walls), p95(walls)
        row.pass_cpu_med, row.store_med = statistics.median(cpus), statistics.median(stores)
        status_t = []
        for _ in range(5):
            t = time.perf_counter()
            gc.status().model_dump(mode="json")
            status_t.append(time.perf_counter() - t)
        row.status_med = statistics.median(status_t)
        row.db_bytes = file_size(state_dir / "events.db")
        row.wal_bytes = file_size(state_dir / "events.db-wal")
        health_t = []
        for _ in range(5):
            c0 = time.process_time()
            await gc.health_rounds.probe_all()
            health_t.append(time.process_time() - c0)
        row.health_med = statistics.median(health_t)
        pygc.collect()
        row.rss_mb = psutil.Process().memory_info().rss / 2**20
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
            print(f"\n--- cProfile of {args.passes} steady passes at {n} replicas ---\n{out.getvalue()}")

        # ---- API: the full status body over loopback
        server = ApiServer(c.handle(), cfg.api, listen=f"127.0.0.1:{free_port()}")
        await server.start()
        try:
            url = f"{server.url}/api/groups/{GROUP}"
            gets = []
            async with aiohttp.ClientSession() as session:
                for i in range(args.gets + 2):
                    t = time.perf_counter()
                    async with session.get(url) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"GET {url}: {resp.status} {body[:200]!r}")
                    if i >= 2:  # the first two warm the connection and the route
                        gets.append(time.perf_counter() - t)
            row.api_med, row.body_bytes = statistics.median(gets), len(body)
        finally:
            await server.stop()

        # ---- CPU share of the real loop (sync 5 s, health 2 s), after its first pass
        stop = asyncio.Event()
        passes: list[float] = []
        first = asyncio.Event()

        def on_pass(_now: float, _st: Any) -> None:
            passes.append(time.perf_counter())
            first.set()

        gc.status_listeners.append(on_pass)
        task = asyncio.create_task(c.run(stop))
        await asyncio.wait_for(first.wait(), 120)
        await asyncio.sleep(0.2)
        loop_prof = cProfile.Profile() if n in args.profile else None
        if loop_prof:
            loop_prof.enable()
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(args.cpu_seconds)
        c1, w1 = time.process_time(), time.perf_counter()
        if loop_prof:
            loop_prof.disable()
            out = io.StringIO()
            pstats.Stats(loop_prof, stream=out).sort_stats("tottime").print_stats(20)
            title = f"cProfile of the loop's {args.cpu_seconds:g} s window at {n} replicas"
            print(f"\n--- {title} ---\n{out.getvalue()}")
        row.cpu_pct = 100.0 * (c1 - c0) / (w1 - w0)
        row.window_passes = sum(1 for p in passes if w0 <= p <= w1)
        stop.set()
        await task
        if gc.desired != n:
            row.notes.append(f"the loop moved desired to {gc.desired}")
    finally:
        for p in fakes.values():
            p.close()
        c.store.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    return row


def ratio(x: float, base: float) -> str:
    return f"{x / base:.1f}x" if base > 0 else "-"


def size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


COLUMNS = (
    "pass median",
    "pass p95",
    "pass CPU",
    "fresh pass",
    "store / pass",
    "status build",
    "health round CPU",
    "events.db + WAL",
    "RSS",
    "GET status",
    "body",
    "CPU share",
)


def _cells(r: Row) -> list[str]:
    return [
        ms(r.pass_med),
        ms(r.pass_p95),
        ms(r.pass_cpu_med),
        ms(r.fresh_pass_s) if r.fresh_pass_s is not None else "-",
        ms(r.store_med),
        ms(r.status_med),
        ms(r.health_med),
        f"{size(r.db_bytes)} + {size(r.wal_bytes)}",
        f"{r.rss_mb:.0f} MB",
        ms(r.api_med),
        f"{r.body_bytes / 1024:.0f} KiB",
        f"{r.cpu_pct:.2f} % ({r.window_passes} passes)",
    ]


def _ratios(r: Row, b: Row) -> list[str]:
    fresh = "-" if r.fresh_pass_s is None or b.fresh_pass_s is None else ratio(r.fresh_pass_s, b.fresh_pass_s)
    return [
        ratio(r.pass_med, b.pass_med),
        ratio(r.pass_p95, b.pass_p95),
        ratio(r.pass_cpu_med, b.pass_cpu_med),
        fresh,
        ratio(r.store_med, b.store_med),
        ratio(r.status_med, b.status_med),
        ratio(r.health_med, b.health_med),
        ratio(r.db_bytes + r.wal_bytes, b.db_bytes + b.wal_bytes),
        ratio(r.rss_mb, b.rss_mb),
        ratio(r.api_med, b.api_med),
        ratio(r.body_bytes, b.body_bytes),
        ratio(r.cpu_pct, b.cpu_pct),
    ]


def table(rows: list[Row]) -> str:
    base = rows[0]
    rule = "|---:|" + "---:|" * len(COLUMNS)
    lines = ["| replicas | " + " | ".join(COLUMNS) + " |", rule]
    lines += [f"| {r.n} | " + " | ".join(_cells(r)) + " |" for r in rows]
    if len(rows) > 1:
        lines += ["", f"| ratio to {base.n} | " + " | ".join(COLUMNS) + " |", rule]
        lines += [f"| {r.n} | " + " | ".join(_ratios(r, base)) + " |" for r in rows[1:]]
    return "\n".join(lines)


def goals(rows: list[Row]) -> list[str]:
    by_n = {r.n: r for r in rows}
    r = by_n.get(GOAL_SIZE, rows[-1])

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    others = [x for x in rows if x.n > r.n]
    extra = "".join(
        f"; at {x.n}: p95 {ms(x.pass_p95)}, {x.cpu_pct:.2f} % of a core, RSS {x.rss_mb:.0f} MB"
        for x in others
    )
    return [
        f"- a pass at {r.n} replicas ≤ {GOAL_PASS_S:g} s: {verdict(r.pass_p95 <= GOAL_PASS_S)}, "
        f"p95 {ms(r.pass_p95)} (median {ms(r.pass_med)})",
        f"- ≤ {GOAL_CPU_PCT:g} % of a core in steady state at {r.n}: {verdict(r.cpu_pct <= GOAL_CPU_PCT)}, "
        f"{r.cpu_pct:.2f} %",
        f"- RSS ≤ {GOAL_RSS_MB:g} MB at {r.n}: {verdict(r.rss_mb <= GOAL_RSS_MB)}, {r.rss_mb:.0f} MB{extra}",
    ]


async def main_async(args: argparse.Namespace) -> None:
    # What `tierscale run` gives the loop: provider calls run in a roomy pool.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=32, thread_name_prefix="tierscale")
    )
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        row = await measure(n, args)
        rows.append(row)
        note = f" NOTE: {'; '.join(row.notes)}" if row.notes else ""
        print(
            f"{n:>5} replicas: pass {ms(row.pass_med)} (p95 {ms(row.pass_p95)}), CPU {row.cpu_pct:.2f} %, "
            f"RSS {row.rss_mb:.0f} MB, GET {ms(row.api_med)}  [{time.perf_counter() - t:.0f} s]{note}",
            flush=True,
        )
    print()
    print(
        f"fake tier, {LATENCY * 1000:g} ms per provider call, sync 5 s, health 2 s, "
        f"{args.passes} passes, {args.gets} GETs, CPU window {args.cpu_seconds:g} s; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, pid {os.getpid()}"
    )
    print()
    print(table(rows))
    print()
    print("\n".join(goals(rows)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000,5000", help="replica counts; the first is the baseline")
    ap.add_argument("--cpu-seconds", type=float, default=None, help="wall window for the CPU share (30)")
    ap.add_argument("--passes", type=int, default=None, help="steady passes measured per size (20)")
    ap.add_argument("--gets", type=int, default=20, help="GET /api/groups/{name} per size")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 s CPU window, 5 passes, 5 GETs")
    ap.add_argument("--profile", default="", help="sizes whose steady passes are run under cProfile")
    args = ap.parse_args()
    args.sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    args.profile = {int(x) for x in args.profile.split(",") if x.strip()}
    if args.quick:
        args.cpu_seconds = 5.0 if args.cpu_seconds is None else args.cpu_seconds
        args.passes = 5 if args.passes is None else args.passes
        args.gets = min(args.gets, 5)
    args.cpu_seconds = 30.0 if args.cpu_seconds is None else args.cpu_seconds
    args.passes = 20 if args.passes is None else args.passes
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
