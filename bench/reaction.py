"""Reaction to a load step: tierscale's HPA settings against the lab's threshold rule, same harness.

For each config, one group (process tier, real nginx, real HTTP; 0.25-core allotment per replica,
/work?ms=20) starts at 1 replica under a light base load, then the offered rate jumps to one that needs
5 replicas at a 50 % CPU target (30 req/s ≈ 0.6 core ≈ 240 % of one allotment). The base load (1.5 req/s,
~12 %) is below the lab's 20 % upper threshold so both configs hold 1 replica before the step; the
step is 20x that base. Measured from the step:
  - first request served by a replica that did not exist before the step (from nginx's access log),
  - the group reaching 5 ready replicas.
Both configs run in this one process on this machine, so the printed ratios compare like with like.

    .venv/bin/python bench/reaction.py [--base-rps 1.5] [--step-rps 30] [--timeout 150] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.loadgen import LoadRunner
from tierscale.service import BackgroundController

POLICIES = {
    "tierscale (hpa, sync 1s)": """
    sync_period: 1s
    policy: hpa
    metrics: [{type: cpu, target: 50}]
    cpu_initialization_period: 3s
    initial_readiness_delay: 1s
""",
    "lab (threshold 20/5%, step 1, cooldown 15s, sync 8s)": """
    sync_period: 8s
    policy: threshold
    metrics: [{type: cpu, target: 50}]
    threshold: {metric: cpu, upper: 20, lower: 5, step: 1, cooldown: 15s}
""",
}

TEMPLATE = """\
state_dir: {state_dir}
groups:
  - name: bench
    tier: {tier}
    min: 1
    max: 5
{policy}
    template: {template}
    health: {{path: /healthz, interval: 250ms, timeout: 1s, healthy_after: 1, unhealthy_after: 3,
             startup_grace: 30s}}
    drain_timeout: 5s
    balancer: {{type: nginx, listen: "127.0.0.1:{port}", algorithm: least_conn}}
"""

PROCESS_TEMPLATE = (
    '{{command: ["python3", "-m", "tierscale.workload", "--port", "{{port}}"], '
    "port_range: [{lo}, {hi}], cpus: 0.25}}"
)


# docker: the same 0.25-core allotment, but enforced (CFS quota): a replica cannot use more than its
# allotment, so the first one queues requests until new ones serve. The demo image (make docker-image).
DOCKER_TEMPLATE = "{{image: tierscale/demo:latest, port: 8080, cpus: 0.25, memory: 64m}}"
TIER_TEMPLATES = {"process": PROCESS_TEMPLATE, "docker": DOCKER_TEMPLATE}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_new_upstream_after(log: Path, step_wall: float, old: set[str]) -> float | None:
    """Wall time of the first request after the step answered by an upstream that is not in `old`."""
    with log.open() as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            t = float(rec.get("msec") or rec.get("time") or 0)
            addr = str(rec.get("upstream_addr") or "").split(",")[-1].strip()
            if (
                t >= step_wall
                and addr
                and addr != "-"
                and addr not in old
                and str(rec.get("status")) == "200"
            ):
                return t
    return None


def run_one(
    name: str, policy: str, tier: str, base_rps: float, step_rps: float, timeout: float, rng: random.Random
) -> dict[str, Any]:
    sd = Path(tempfile.mkdtemp(prefix="tierscale-bench-"))
    port = free_port()
    lo = 23000 + (port % 40) * 25
    template = TIER_TEMPLATES[tier].format(lo=lo, hi=lo + 24)
    cfg = load_config_text(
        TEMPLATE.format(state_dir=sd, tier=tier, policy=policy, template=template, port=port), "bench.yaml"
    )
    url = f"http://127.0.0.1:{port}/work?ms=20"
    out: dict[str, Any] = {"config": name}
    bg = BackgroundController(cfg)
    try:
        bg.start()
        deadline = time.monotonic() + 30
        while bg.status("bench")["ready"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("first replica never became ready")
            time.sleep(0.1)
        # Start the step at a random point of the sync period, as real load steps do (seeded: repeatable).
        warm = 6.0 + rng.uniform(0.0, cfg.groups[0].sync_period)
        step_mono: list[float] = []

        def rate(t: float) -> float:
            return base_rps if t < warm else step_rps

        runner = LoadRunner(url, rate, warm + timeout).start()
        t0 = time.monotonic()
        time.sleep(warm)
        step_wall = time.time()
        step_mono.append(time.monotonic())
        old = {r["address"] for r in bg.status("bench")["replicas"]}
        to_five = None
        while time.monotonic() - step_mono[0] < timeout:
            st = bg.status("bench")
            if st["ready"] >= 5:
                to_five = time.monotonic() - step_mono[0]
                break
            time.sleep(0.1)
        time.sleep(1.0)  # let the access log catch the first requests of the last replica
        runner.stop()
        result = runner.result(timeout=30)
        gc = bg.controller.groups["bench"]  # type: ignore[union-attr]
        log = Path(gc.ctx.balancer.access_log_path)  # type: ignore[union-attr]
        first_new = first_new_upstream_after(log, step_wall, old)
        out.update(
            step_to_first_new_replica_s=None if first_new is None else round(first_new - step_wall, 2),
            step_to_five_ready_s=None if to_five is None else round(to_five, 2),
            requests=result.sent,
            failed=result.failed,
            failures={**{str(k): v for k, v in result.status.items() if not 200 <= k < 300}, **result.errors},
            p95_ms=round(result.latencies.get("p95", 0.0), 1),
            elapsed_s=round(time.monotonic() - t0, 1),
        )
    finally:
        bg.stop()
        down(cfg)
        shutil.rmtree(sd, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-rps", type=float, default=1.5)
    ap.add_argument("--step-rps", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=150.0, help="give up on reaching 5 replicas after this")
    ap.add_argument("--tier", default="process", choices=sorted(TIER_TEMPLATES))
    ap.add_argument("--repeat", type=int, default=3, help="runs per config; medians are reported")
    args = ap.parse_args()
    rows = []
    for name, pol in POLICIES.items():
        # The lab's 8 s sync makes its reaction depend on where the step falls in a tick: take medians.
        rng = random.Random(7)
        runs = [
            run_one(name, pol, args.tier, args.base_rps, args.step_rps, args.timeout, rng)
            for _ in range(args.repeat)
        ]
        row = dict(runs[0])
        for key in ("step_to_first_new_replica_s", "step_to_five_ready_s", "p95_ms"):
            vals = [r[key] for r in runs if r[key] is not None]
            row[key] = round(statistics.median(vals), 2) if len(vals) == len(runs) else None
        row["failed"] = sum(r["failed"] for r in runs)
        row["requests"] = sum(r["requests"] for r in runs)
        row["failures"] = [r["failures"] for r in runs if r["failures"]]
        row["runs"] = [
            {k: r[k] for k in ("step_to_first_new_replica_s", "step_to_five_ready_s")} for r in runs
        ]
        rows.append(row)
    base, lab = rows[0], rows[1]
    print(f"{'config':<55} {'step→new replica':>17} {'step→5 ready':>13} {'failed':>7} {'p95 ms':>7}")
    for r in rows:
        print(
            f"{r['config']:<55} {r['step_to_first_new_replica_s']!s:>17} {r['step_to_five_ready_s']!s:>13} "
            f"{r['failed']:>7} {r['p95_ms']:>7}"
        )
    for key, label in (
        ("step_to_first_new_replica_s", "first new replica serving"),
        ("step_to_five_ready_s", "1 → 5 ready"),
    ):
        if base[key] and lab[key]:
            print(f"ratio lab/tierscale, {label}: {lab[key] / base[key]:.1f}x")
        else:
            print(f"ratio lab/tierscale, {label}: n/a (lab {lab[key]}, tierscale {base[key]})")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
