"""What the HTTP API and the dashboard cost the controller: resident memory and tick delay at 50 replicas.

One group of 50 real process-tier replicas (the SPEC §6 workload) behind nginx, sync_period 1s, health
every 1s. The replicas are created once, then the same controller config runs in fresh child processes,
alternating `api: off` and `api: on`; each child adopts the 50 replicas, warms up, then measures:
  - RSS of the controller process at the end of the run (psutil),
  - tick delay: interval between consecutive reconcile passes minus sync_period (from the decision log),
  - event-loop lag: how late a 100 ms timer fires on the controller's loop,
  - mean reconcile duration (tierscale_reconcile_seconds).
While an `api: on` child measures, this process plays one open dashboard (the page's polls every 2s:
/api/groups, the series, the events) plus a Prometheus scraping /metrics every 5s. The load comes from
this process, so the client's own memory is not counted in the controller's RSS.

    .venv/bin/python bench/api_overhead.py [--replicas 50] [--seconds 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

CONFIG = """\
state_dir: {state_dir}
api: {{listen: "127.0.0.1:{api_port}"}}
groups:
  - name: bench
    tier: process
    min: {n}
    max: {n}
    sync_period: 1s
    template: {{command: ["python3", "-m", "tierscale.workload", "--port", "{{port}}"],
               port_range: [{lo}, {hi}], cpus: 0.1}}
    health: {{path: /healthz, interval: 1s, timeout: 2s, startup_grace: 120s}}
    metrics: [{{type: cpu, target: 60}}, {{type: requests_per_replica, target: 50}}]
    balancer: {{type: nginx, listen: "127.0.0.1:{lb_port}"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_range(n: int) -> tuple[int, int]:
    """`n` consecutive ports nobody listens on (checked, then used at once)."""
    for _ in range(200):
        lo = random.randrange(30000, 60000 - n)
        ok = True
        for port in range(lo, lo + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return lo, lo + n - 1
    raise RuntimeError("no free port range")


# ---------------------------------------------------------------------------------------------- child
def child(config_path: str, mode: str, seconds: float, warmup: float, out: str) -> None:
    import psutil

    from tierscale.config import load_config
    from tierscale.controller.runner import Controller
    from tierscale.service import serve

    cfg = load_config(Path(config_path))
    n = cfg.groups[0].min
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    controller = Controller(cfg)
    stop = asyncio.Event()
    lags: list[float] = []
    window: dict[str, float] = {}

    async def lag_probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.1)
            lags.append(time.perf_counter() - t0 - 0.1)

    async def script() -> None:
        gc = controller.groups["bench"]
        deadline = time.time() + 180
        while len(gc.ctx.rt.backends or ()) < n and time.time() < deadline:
            await asyncio.sleep(0.5)
        if len(gc.ctx.rt.backends or ()) < n:
            raise SystemExit(f"only {len(gc.ctx.rt.backends or ())}/{n} replicas ready")
        print("ready", flush=True)  # the parent starts its dashboard polling now
        await asyncio.sleep(warmup)
        lags.clear()
        hist = controller.telemetry.reconcile_seconds.labels("bench")
        window["start"] = time.time()
        window["rec_sum0"], window["rec_n0"] = _hist(hist)
        await asyncio.sleep(seconds)
        window["end"] = time.time()
        window["rec_sum1"], window["rec_n1"] = _hist(hist)
        window["rss"] = psutil.Process().memory_info().rss
        print("measured", flush=True)  # the parent stops polling before the server goes away
        stop.set()

    async def main() -> None:
        probe = asyncio.ensure_future(lag_probe())
        runner = asyncio.ensure_future(serve(controller, stop, api=mode))  # type: ignore[arg-type]
        await script()
        await runner
        await probe

    try:
        loop.run_until_complete(main())
    finally:
        controller.close()
        loop.close()
    from tierscale.eventstore import EventStore

    store = EventStore(Path(cfg.state_dir) / "events.db")
    ticks = [d.ts for d in store.decisions("bench", window["start"], 100000)]
    store.close()
    period = cfg.groups[0].sync_period
    delays = [b - a - period for a, b in itertools.pairwise(ticks)]
    result = {
        "mode": mode,
        "rss_mb": window["rss"] / 2**20,
        "ticks": len(ticks),
        "tick_delay_ms": _summary([d * 1000 for d in delays]),
        "loop_lag_ms": _summary([x * 1000 for x in lags]),
        "reconcile_ms": 1000
        * (window["rec_sum1"] - window["rec_sum0"])
        / max(1.0, window["rec_n1"] - window["rec_n0"]),
    }
    Path(out).write_text(json.dumps(result))


def _hist(h: Any) -> tuple[float, float]:
    total = count = 0.0
    for metric in h.collect():
        for s in metric.samples:
            if s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
    return total, count


def _summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
    xs = sorted(xs)
    return {"median": statistics.median(xs), "p95": xs[int(0.95 * (len(xs) - 1))], "max": xs[-1]}


# ---------------------------------------------------------------------------------------------- parent
class Dashboard(threading.Thread):
    """One browser tab's polling plus a Prometheus scrape, against the child's API."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stopped = threading.Event()
        self.requests = 0
        self.bytes = 0
        self.failures = 0

    def get(self, path: str) -> None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                self.bytes += len(r.read())
                self.requests += 1
        except OSError:
            self.failures += 1

    def run(self) -> None:
        for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
            self.get(path)
        last_scrape = 0.0
        while not self.stopped.is_set():
            self.get("/api/groups")
            self.get("/api/groups/bench/series")
            self.get("/api/events?group=bench&since=15m&limit=200")
            if time.monotonic() - last_scrape >= 5.0:
                last_scrape = time.monotonic()
                self.get("/metrics")
            self.stopped.wait(2.0)


def run_child(config: Path, mode: str, seconds: float, warmup: float, api_base: str) -> dict[str, Any]:
    out = config.parent / f"result-{mode}-{time.monotonic_ns()}.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--config",
            str(config),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    dash = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready" and mode != "off":
            dash = Dashboard(api_base)
            dash.start()
        elif line.strip() == "measured" and dash is not None:
            dash.stopped.set()
            dash.join(15)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"child ({mode}) failed with exit {proc.returncode}")
    result = json.loads(out.read_text())
    if dash is not None:
        result["dashboard_requests"] = dash.requests
        result["dashboard_failures"] = dash.failures
        result["dashboard_kb"] = dash.bytes / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", choices=["off", "optional"])
    ap.add_argument("--config")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.config, args.child, args.seconds, args.warmup, args.out)
        return

    from tierscale.config import load_config
    from tierscale.controller.down import down

    tmp = Path(tempfile.mkdtemp(prefix="tierscale-api-bench-"))
    lo, hi = free_range(args.replicas + 10)
    api_port = free_port()
    path = tmp / "bench.yaml"
    path.write_text(
        CONFIG.format(
            state_dir=tmp / "state", api_port=api_port, n=args.replicas, lo=lo, hi=hi, lb_port=free_port()
        )
    )
    cfg = load_config(path)
    api_base = f"http://127.0.0.1:{api_port}"
    results: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic()
        # A first short run creates the replicas; the measured runs adopt them, so all start alike.
        run_child(path, "off", 1.0, 0.0, api_base)
        print(f"{args.replicas} replicas created and ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        for r in range(args.rounds):
            for mode in ("off", "optional") if r % 2 == 0 else ("optional", "off"):
                res = run_child(path, mode, args.seconds, args.warmup, api_base)
                res["mode"] = "api on" if mode == "optional" else "api off"
                results.append(res)
                print(json.dumps(res), file=sys.stderr)
    finally:
        down(cfg)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def med(mode: str, key: str, sub: str | None = None) -> float:
        vals = [r[key][sub] if sub else r[key] for r in results if r["mode"] == mode]
        return statistics.median(vals)

    print(
        f"API + dashboard overhead, {args.replicas} process replicas, sync_period 1s, "
        f"{args.seconds:g}s per run, {args.rounds} run(s) per mode, medians:"
    )
    print(f"{'':24}{'api off':>12}{'api on':>12}{'on - off':>12}{'on / off':>10}")
    rows = [
        ("RSS MB", "rss_mb", None),
        ("tick delay median ms", "tick_delay_ms", "median"),
        ("tick delay p95 ms", "tick_delay_ms", "p95"),
        ("loop lag p95 ms", "loop_lag_ms", "p95"),
        ("reconcile mean ms", "reconcile_ms", None),
    ]
    for label, key, sub in rows:
        off, on = med("api off", key, sub), med("api on", key, sub)
        ratio = on / off if off else float("nan")
        print(f"{label:<24}{off:>12.2f}{on:>12.2f}{on - off:>12.2f}{ratio:>10.2f}")
    on_runs = [r for r in results if r["mode"] == "api on"]
    reqs = sum(r.get("dashboard_requests", 0) for r in on_runs)
    fails = sum(r.get("dashboard_failures", 0) for r in on_runs)
    print(f"dashboard+scrape requests served while measuring: {reqs} ({fails} failed)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
