"""`make chaos`, the ha part: two controllers on one etcd lease, under load, through seeded faults.

    .venv/bin/python tests/chaos/ha.py [--injections 20] [--seed 1] [--ttl 10] [--out artifacts/chaos]

Hosts as in tests/e2e/test_ha_controllers.py (tests/helpers/ha_hosts.py): a Docker engine, etcd and two
controllers, each in its own test host, steady load (10 req/s) through both controllers' balancers.
Before each fault the count is changed through the standby (the CLI re-sends it to the leader), so the
leader is mid-act when it is hit. Faults, each at least once, the rest drawn from the seed:

  leader_kill       SIGKILL of the leader's `tierscale run`; started again once the other took over
  leader_partition  the leader's host cut off the bridge; back once the other took over
  etcd_restart      etcd stopped (SIGTERM) and started again on its data
  standby_kill      SIGKILL of the standby; started again

After each: whole again — exactly one controller acting, both naming it, the engine holding exactly the
count asked for, both balancers sending to all of them. At the end: the two controllers' event timelines
never show two acting at once, every create/delete lies in its controller's term, and requests through
a balancer failed only while its host was cut off. Writes ha-report.json / ha-report.md under --out;
exits 1 on any violation, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers

from helpers.e2e import run_tierscale
from helpers.ha_hosts import Ctl, HaFleet, acting_terms, acts_outside, ha_fleet, overlaps
from tierscale.coordination.etcd import EtcdLeaseStore
from tierscale.loadgen import LoadResult, LoadRunner

KINDS = ("leader_kill", "leader_partition", "etcd_restart", "standby_kill")
RATE = 10.0


def wait(pred: Callable[[], object], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:g}s")


class Run:
    def __init__(self, fleet: HaFleet, ttl: float) -> None:
        self.fleet = fleet
        self.group = fleet.group
        self.ttl = ttl
        self.kills: dict[str, list[float]] = {c.name: [] for c in fleet.ctls}
        self.cut_windows: dict[str, list[tuple[float, float]]] = {c.name: [] for c in fleet.ctls}
        self.store = EtcdLeaseStore([fleet.etcd.url], timeout=2.0)
        self.count = 2
        self.rows: list[dict[str, Any]] = []

    def leader(self) -> Ctl:
        leaders = self.fleet.leaders()
        assert len(leaders) == 1, f"leaders: {[c.name for c in leaders]}"
        return leaders[0]

    def other(self, c: Ctl) -> Ctl:
        return next(x for x in self.fleet.ctls if x is not c)

    def whole(self) -> bool:
        f, g = self.fleet, self.group
        leaders = f.leaders()
        if len(leaders) != 1:
            return False
        name = leaders[0].name
        if any(c.ha(g).get("leader") != name for c in f.ctls):
            return False
        if len(f.ours()) != self.count or f.running_ours() != self.count:
            return False
        return all(c.status(g).get("ready") == self.count for c in f.ctls)

    def published(self) -> int | None:
        body = self.store.get(f"/tierscale/groups/{self.group}")
        return json.loads(body).get("desired") if body else None

    def change_count(self) -> None:
        self.count = 3 if self.count == 2 else 2
        standby = self.other(self.leader())
        out = run_tierscale("scale", self.group, str(self.count), "--api", f"http://{standby.api}")
        if out.returncode != 0:
            raise RuntimeError(f"scale through the standby: {out.stdout} {out.stderr}")
        # Acknowledged is not yet published: the leader writes its state at its next try (0.5 s).
        wait(lambda: self.published() == self.count, 10, "the new count published")

    def inject(self, kind: str, t0: float) -> dict[str, Any]:
        leader = self.leader()
        standby = self.other(leader)
        row: dict[str, Any] = {"kind": kind, "leader_before": leader.name}
        if kind == "leader_kill":
            leader.kill()
            self.kills[leader.name].append(time.time())
            row["takeover_s"] = wait(lambda: standby.role(self.group) == "leader", self.ttl + 20, "takeover")
            leader.start()
        elif kind == "leader_partition":
            start = time.monotonic() - t0
            leader.link(up=False)
            row["takeover_s"] = wait(lambda: standby.role(self.group) == "leader", self.ttl + 20, "takeover")
            leader.link(up=True)
            wait(lambda: leader.ha(self.group).get("leader") == standby.name, 30, "the cut-off one rejoins")
            self.cut_windows[leader.name].append((start - 1, time.monotonic() - t0 + 3))
        elif kind == "etcd_restart":
            self.fleet.etcd.restart()
        elif kind == "standby_kill":
            standby.kill()
            self.kills[standby.name].append(time.time())
            standby.start()
        return row


def plan(n: int, rng: random.Random) -> list[str]:
    kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(max(0, n - len(KINDS)))]
    rng.shuffle(kinds)
    return kinds[:n]


def failures_outside(result: LoadResult, windows: list[tuple[float, float]]) -> list[float]:
    return [
        round(t, 1)
        for t, code, _ in result.timeline
        if code != 200 and not any(a <= t <= b for a, b in windows)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--injections", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ttl", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("artifacts/chaos"))
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.injections < 1 or args.ttl < 2:
        print("ha chaos: --injections must be >= 1 and --ttl >= 2", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    kinds = plan(args.injections, rng)
    os.environ["TIERSCALE_API_TOKEN"] = secrets.token_hex(16)  # the controllers' and the CLI's
    group = "hac-" + secrets.token_hex(3)
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="tierscale-ha-chaos-") as tmp,
        ha_fleet(Path(tmp), group, controllers=2, ttl=args.ttl) as fleet,
    ):
        c1, c2 = fleet.ctls
        run = Run(fleet, args.ttl)
        c1.start()
        wait(lambda: c1.role(group) == "leader" and c1.status(group).get("ready") == 2, 120, "c1 leads")
        c2.start()
        wait(lambda: c2.role(group) == "standby" and c2.status(group).get("ready") == 2, 60, "c2 stands by")
        t0 = time.monotonic()
        loads = {c.name: LoadRunner(c.url, RATE, 7200, timeout=10).start() for c in fleet.ctls}
        try:
            for i, kind in enumerate(kinds):
                run.change_count()
                row = run.inject(kind, t0)
                row["whole_s"] = round(wait(run.whole, 120, f"whole after {kind}"), 1)
                row["n"] = i + 1
                if "takeover_s" in row:
                    row["takeover_s"] = round(row["takeover_s"], 1)
                run.rows.append(row)
                print(json.dumps(row), flush=True)
        except (TimeoutError, AssertionError, RuntimeError) as exc:
            problems.append(f"injection {len(run.rows) + 1} ({kinds[len(run.rows)]}): {exc}")
        finally:
            for r in loads.values():
                r.stop()
        results = {n: r.result(timeout=60) for n, r in loads.items()}
        for name, result in results.items():
            bad = failures_outside(result, run.cut_windows[name])
            if bad:
                problems.append(f"{name}'s balancer: {len(bad)} failed outside its cuts, at {bad[:10]}")
        terms = {c.name: acting_terms(c, group, run.kills[c.name]) for c in fleet.ctls}
        problems += overlaps(terms)
        for c in fleet.ctls:
            problems += acts_outside(c, group, terms[c.name])
        for c in fleet.ctls:
            c.stop()
        args.out.mkdir(parents=True, exist_ok=True)
        for c in fleet.ctls:  # the controllers' own logs go with the report
            shutil.copyfile(c.log, args.out / f"ha-{c.name}.log")
        out = run_tierscale("down", str(c1.path), timeout=120)
        if out.returncode != 0:
            problems.append(f"tierscale down: {out.stdout} {out.stderr}")
        leaked = [x.name for x in fleet.ours()]
        if leaked:
            problems.append(f"leaked after down: {leaked}")
        run.store.close()
    takeovers = [r["takeover_s"] for r in run.rows if "takeover_s" in r]
    summary = {
        "seed": args.seed,
        "ttl": args.ttl,
        "injections": len(run.rows),
        "planned": len(kinds),
        "by_kind": {k: sum(r["kind"] == k for r in run.rows) for k in KINDS},
        "takeover_median_s": statistics.median(takeovers) if takeovers else None,
        "takeover_max_s": max(takeovers) if takeovers else None,
        "requests": {n: {"sent": r.sent, "failed": r.failed} for n, r in results.items()},
        "problems": problems,
        "rows": run.rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ha-report.json").write_text(json.dumps(summary, indent=2))
    md = [
        f"# ha chaos: {len(run.rows)} injections, seed {args.seed}, lease_ttl {args.ttl:g}s",
        "",
        "| # | fault | leader before | takeover s | whole after s |",
        "|---|---|---|---|---|",
        *(
            f"| {r['n']} | {r['kind']} | {r['leader_before']} | {r.get('takeover_s', '')} | {r['whole_s']} |"
            for r in run.rows
        ),
        "",
        f"takeover: median {summary['takeover_median_s']} s, max {summary['takeover_max_s']} s; "
        + "; ".join(f"{n}: {v['failed']} failed of {v['sent']}" for n, v in summary["requests"].items()),
        "",
        "problems: " + ("none" if not problems else "; ".join(problems)),
    ]
    (args.out / "ha-report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
