"""nginx against HAProxy under membership churn: the group scaled 1 ↔ 8 every 2 s under open-loop load.

Both balancers run in this one process on this machine, one after the other, against the same eight
backends (the static demo workload, `build/images/tierscale-workload`), the same load (300 req/s,
/work?ms=1) and the same schedule of changes, so the printed ratios (haproxy / nginx) compare like with
like. Per balancer:
  - failed requests (non-2xx or no answer) over the whole run, all of it during changes;
  - p99 and max latency of the answered requests;
  - time from a change (1 → 8) to the first request served by one of the seven new backends, from the
    balancer's own request log (nginx: includes its reload; HAProxy: its Runtime API calls);
  - the balancer's CPU seconds (master + workers, old workers of a reload included) and peak RSS.

    .venv/bin/python bench/balancer.py [--changes 200] [--every 2] [--rps 300]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tierscale.balancer.haproxy import HAProxyBalancer
from tierscale.balancer.nginx import NginxBalancer
from tierscale.loadgen import LoadRunner

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO / "build" / "images" / "tierscale-workload"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_backends(n: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    if not WORKLOAD.exists():
        sys.exit(f"bench/balancer.py: {WORKLOAD} is missing: run `make docker-image` (it builds it)")
    ports = [free_port() for _ in range(n)]
    procs = [
        subprocess.Popen(
            [str(WORKLOAD), "--port", str(p), "--host", "127.0.0.1", "--instance", f"b{i}"],
            stdout=subprocess.DEVNULL,
        )
        for i, p in enumerate(ports)
    ]
    return procs, [f"127.0.0.1:{p}" for p in ports]


class Sampler:
    """CPU seconds and peak RSS of a balancer's process tree. CPU is read at the start and the end only:
    a root's reaped children (nginx's old workers after each reload) are in its children_* times, and
    the live ones are added on their own, so none is lost or counted twice."""

    def __init__(self, roots: Any) -> None:
        self.roots = roots  # callable -> list[psutil.Process]
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cpu_and_rss(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for root in self.roots():
            with contextlib.suppress(psutil.Error):
                t = root.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                rss += root.memory_info().rss
                for child in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        c = child.cpu_times()
                        cpu += c.user + c.system
                        rss += child.memory_info().rss
        return cpu, rss

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_rss = max(self.peak_rss, self._cpu_and_rss()[1])

    def __enter__(self) -> Sampler:
        self.start_cpu, self.peak_rss = self._cpu_and_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end_cpu, rss = self._cpu_and_rss()
        self.peak_rss = max(self.peak_rss, rss)

    @property
    def cpu_seconds(self) -> float:
        return self.end_cpu - self.start_cpu


def nginx_tree(b: NginxBalancer) -> list[psutil.Process]:
    master = b._find_master()
    return ([master] if master else []) + b.orphan_workers()


def haproxy_tree(b: HAProxyBalancer) -> list[psutil.Process]:
    master = b._master()
    return [master] if master else []


def run_one(name: str, b: Any, tree: Any, backends: list[str], args: argparse.Namespace) -> dict[str, Any]:
    one, eight = backends[:1], backends
    new = set(backends[1:])
    b.ensure_running(one)
    log = b.traffic_log()
    duration = args.changes * args.every + 2
    to_traffic: list[float] = []
    failed_applies = 0
    url = f"{b.url}/work?ms=1"
    with Sampler(lambda: tree(b)) as sampler, LoadRunner(url, args.rps, duration, timeout=10) as load:
        time.sleep(1.0)
        for i in range(args.changes):
            changed_at = time.time()
            going_up = i % 2 == 0
            result = b.apply(eight if going_up else one)
            failed_applies += not result.ok
            if not going_up:
                for addr in backends[1:]:  # as the controller does before it deletes a replica
                    b.wait_drained(addr, args.every)
            if going_up:
                deadline = time.monotonic() + args.every
                while time.monotonic() < deadline:
                    log.poll()
                    first = log.first_request_to(new, changed_at)
                    if first is not None:
                        to_traffic.append(first - changed_at)
                        break
                    time.sleep(0.01)
            time.sleep(max(0.0, changed_at + args.every - time.time()))
        load.stop()
    res = load.result(timeout=60)
    b.stop()
    log.close()
    return {
        "name": name,
        "sent": res.sent,
        "failed": int(res.failed),
        "status": res.status,
        "errors": res.errors,
        "p99_ms": res.latencies.get("p99"),
        "max_ms": res.latencies.get("max"),
        "to_traffic_median_ms": 1000 * statistics.median(to_traffic) if to_traffic else None,
        "to_traffic_max_ms": 1000 * max(to_traffic) if to_traffic else None,
        "seen_changes": len(to_traffic),
        "failed_applies": failed_applies,
        "cpu_s": sampler.cpu_seconds,
        "peak_rss_mib": sampler.peak_rss / 2**20,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--rps", type=float, default=300.0)
    args = ap.parse_args()
    procs, backends = start_backends(8)
    rows = []
    try:
        time.sleep(0.5)
        with tempfile.TemporaryDirectory() as d:
            nginx = NginxBalancer("bench", f"127.0.0.1:{free_port()}", "round_robin", Path(d) / "nginx")
            rows.append(run_one("nginx", nginx, nginx_tree, backends, args))
            haproxy = HAProxyBalancer("bench", f"127.0.0.1:{free_port()}", "round_robin", Path(d) / "haproxy")
            rows.append(run_one("haproxy", haproxy, haproxy_tree, backends, args))
    finally:
        for p in procs:
            p.kill()
    print(f"{args.changes} changes (1 <-> 8 every {args.every:g}s) under {args.rps:g} req/s, /work?ms=1")
    keys = ["sent", "failed", "p99_ms", "max_ms", "to_traffic_median_ms", "to_traffic_max_ms", "cpu_s",
            "peak_rss_mib"]  # fmt: skip
    print(f"{'':22}" + "".join(f"{r['name']:>12}" for r in rows) + f"{'ratio h/n':>12}")
    for k in keys:
        vals = [r[k] for r in rows]
        cells = "".join(f"{v:>12.1f}" if isinstance(v, float) else f"{v!s:>12}" for v in vals)
        base, other = vals
        ratio = (
            f"{other / base:>12.2f}" if isinstance(base, int | float) and base and other is not None else ""
        )
        print(f"{k:22}{cells}{ratio}")
    for r in rows:
        print(f"{r['name']}: status {r['status']} errors {r['errors']} failed applies {r['failed_applies']} "
              f"changes seen {r['seen_changes']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
