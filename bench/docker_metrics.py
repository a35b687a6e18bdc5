"""Time of one CPU/memory metric pass over N containers: tierscale's docker provider vs the lab's method.

The lab ran `docker stats --no-stream <container>` once per container, one after the other; each call
waits for the engine to take two samples about a second apart. tierscale takes one reading per
container per pass and keeps the previous one (`providers/docker_stats.py`), from the cgroup files when
the engine is local (`auto`), or from the Engine API's one-shot stats, concurrently (`api`).

For each N in --counts: start N demo containers (0.1 core each, half of them busy), time the lab's
sequential loop once, then time tierscale passes (the first pass, which also inspects each container
once, and the median of --passes steady-state passes), and print the ratios. Everything runs in this
one process against the same engine, so the ratios compare like with like.

    .venv/bin/python bench/docker_metrics.py [--counts 5,20,50] [--passes 5] [--baseline-max 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import psutil

from tierscale.providers.docker import LABEL_GROUP, DockerProvider
from tierscale.providers.docker_image import DEMO_IMAGE, build_demo_image

GOAL_AT_50 = 0.25  # seconds for one pass at 50 containers (issue B)
SOURCES = ("auto", "stream", "oneshot")


def lab_pass(containers: list[str]) -> float:
    """The lab's loop: `docker stats --no-stream` per container, sequentially (CLI: it is the method)."""
    cli = shutil.which("docker")
    if cli is None:
        raise SystemExit("the docker CLI is needed for the baseline (apt-get install docker.io)")
    t0 = time.perf_counter()
    for cid in containers:
        subprocess.run(
            [cli, "stats", "--no-stream", "--format", "{{.CPUPerc}} {{.MemUsage}}", cid],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return time.perf_counter() - t0


def dockerd_cpu_seconds() -> float | None:
    """CPU time dockerd has used so far (local engine only): what watching containers costs the engine."""
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except (OSError, ValueError, psutil.Error):
        return None


def timed_passes(
    provider: DockerProvider, replicas: list[Any], passes: int
) -> tuple[float, float, int, float | None]:
    """(first pass s, median steady pass s, replicas with a sample, dockerd CPU % while passing)."""
    t0 = time.perf_counter()
    got = len(provider.stats(replicas))
    first = time.perf_counter() - t0
    deadline = time.monotonic() + 10
    while got < len(replicas) and time.monotonic() < deadline:  # streams: until every first reading is in
        time.sleep(0.2)
        got = len(provider.stats(replicas))
    times = []
    cpu0, wall0 = dockerd_cpu_seconds(), time.monotonic()
    for _ in range(passes):
        time.sleep(1.0)  # a pass per sync period in real life
        t0 = time.perf_counter()
        out = provider.stats(replicas)
        times.append(time.perf_counter() - t0)
        got = len(out)
    cpu1 = dockerd_cpu_seconds()
    engine_pct = None
    if cpu0 is not None and cpu1 is not None:
        engine_pct = round(100 * (cpu1 - cpu0) / (time.monotonic() - wall0), 1)
    return first, statistics.median(times), got, engine_pct


def keep_busy(addresses: list[str], stop: threading.Event) -> None:
    """Light load on some containers so their CPU counters move (2 ms of CPU every 50 ms each)."""
    while not stop.is_set():
        for a in addresses:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{a}/work?ms=2", timeout=5).read()
        stop.wait(0.05)


def run_count(n: int, passes: int, baseline_max: int) -> dict[str, Any]:
    group = "bench-" + secrets.token_hex(3)
    maker = DockerProvider(group, DEMO_IMAGE, cpus=0.1, memory=32 * 1024**2, revision="bench")
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(maker.create, [f"r-{i:03d}" for i in range(n)]))
        replicas = maker.list()
        assert len(replicas) == n, f"created {len(replicas)} of {n}"
        busy = threading.Thread(
            target=keep_busy, args=([r.address for r in replicas[: n // 2] if r.address], stop), daemon=True
        )
        busy.start()
        time.sleep(1.0)
        row: dict[str, Any] = {"containers": n}
        for source in SOURCES:
            p = DockerProvider(group, DEMO_IMAGE, cpus=0.1, stats_source=source, revision="bench")
            try:
                first, steady, got, engine_pct = timed_passes(p, replicas, passes)
                if source == "auto":
                    row["cgroup_sources"] = sum(1 for k in p._known.values() if k.cgroup is not None)
            finally:
                p.close()
            row[f"{source}_first_s"] = round(first, 4)
            row[f"{source}_pass_s"] = round(steady, 4)
            row[f"{source}_samples"] = got
            row[f"{source}_dockerd_cpu_pct"] = engine_pct
        if n <= baseline_max:
            row["lab_sequential_s"] = round(lab_pass([r.ref for r in replicas]), 2)
        return row
    finally:
        stop.set()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: maker.delete(r, 1), maker.list()))
        client = docker.from_env()
        for c in client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{LABEL_GROUP}={group}"}
        ):
            c.remove(force=True)
        client.close()
        maker.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="5,20,50")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--baseline-max", type=int, default=50, help="skip the slow lab loop above this N")
    args = ap.parse_args()
    client = docker.from_env()
    build_demo_image(client)
    engine = client.version()
    client.close()
    print(f"engine: Docker {engine.get('Version')} (API {engine.get('ApiVersion')})", flush=True)
    rows = []
    for n in (int(x) for x in args.counts.split(",")):
        rows.append(run_count(n, args.passes, args.baseline_max))
        r = rows[-1]
        print(f"  {n} containers done: {json.dumps(r)}", flush=True)
    print()
    print(
        f"{'containers':>10} {'lab: stats seq':>15} {'auto (cgroup)':>14} {'stream':>9} {'oneshot':>9} "
        f"{'first pass auto/stream/oneshot':>31} {'lab/auto':>9} {'lab/stream':>10} {'lab/oneshot':>11}"
    )
    for r in rows:
        lab = r.get("lab_sequential_s")
        ratios = [f"{lab / r[f'{s}_pass_s']:.0f}x" if lab else "-" for s in SOURCES]
        firsts = "/".join(f"{r[f'{s}_first_s']:.3f}" for s in SOURCES)
        print(
            f"{r['containers']:>10} {lab if lab is not None else '-':>14}s {r['auto_pass_s']:>13.4f}s "
            f"{r['stream_pass_s']:>8.4f}s {r['oneshot_pass_s']:>8.3f}s {firsts:>31} "
            f"{ratios[0]:>9} {ratios[1]:>10} {ratios[2]:>11}"
        )
    print(
        "dockerd CPU % while passing once a second (auto/stream/oneshot): "
        + ", ".join(
            f"{r['containers']}: " + "/".join(str(r[f"{s}_dockerd_cpu_pct"]) for s in SOURCES) for r in rows
        )
    )
    at50 = next((r for r in rows if r["containers"] == 50), None)
    if at50 is not None:
        verdict = "meets" if at50["auto_pass_s"] <= GOAL_AT_50 else "MISSES"
        print(
            f"goal ≤ {GOAL_AT_50} s per pass at 50 containers: {verdict} ({at50['auto_pass_s']:.4f} s, auto)"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
