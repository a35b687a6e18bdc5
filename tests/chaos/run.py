"""`make chaos`: the full chaos run over the process, docker, docker-hosts and libvirt tiers, with a report.

    .venv/bin/python tests/chaos/run.py [--tiers process,docker,docker-hosts,libvirt]
        [--injections 20,18,20,14] [--seed 1]

Writes report.json and report.md under --out and prints the tables; exits 1 if anything leaked, was
duplicated, touched what is not ours, or did not converge, and 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: chaos, helpers

from chaos.harness import ChaosRun, TierReport, summarize
from chaos.tiers import TIERS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiers", default="process,docker,docker-hosts,libvirt")
    ap.add_argument("--injections", default="20,18,20,14", help="per tier, comma-separated, or one for all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("artifacts/chaos"))
    args = ap.parse_args(argv)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        ap.error(f"--tiers: unknown tier {unknown[0]!r} (choose from {', '.join(TIERS)})")
    try:
        counts = [int(x) for x in args.injections.split(",")]
    except ValueError:
        ap.error(f"--injections: {args.injections!r} is not a comma-separated list of integers")
    if len(counts) == 1:
        counts *= len(tiers)
    if len(counts) != len(tiers) or min(counts) < 1:
        ap.error("--injections: give one positive count, or one per tier")

    reports: list[TierReport] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (tier, n) in enumerate(zip(tiers, counts, strict=True)):
        ok, why = TIERS[tier]("probe").available()
        if not ok:
            print(f"chaos: {tier}: {why} is not available", file=sys.stderr)
            return 1
        print(f"chaos: {tier}, {n} injections, seed {args.seed + i}")
        # ignore_cleanup_errors: a state tmpfs that could not be unmounted must not hide the report.
        with tempfile.TemporaryDirectory(prefix=f"chaos-{tier}-", ignore_cleanup_errors=True) as work:
            reports.append(ChaosRun(TIERS[tier], Path(work), args.seed + i, n, logdir=args.out).run())

    table = summarize(reports)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps([r.to_json() for r in reports], indent=1))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (args.out / "report.md").write_text(f"Chaos run {stamp}, seed {args.seed}\n\n{table}\n")
    print()
    print(table)
    problems = [f"{r.tier}: {p}" for r in reports for p in r.problems()]
    for p in problems:
        print("PROBLEM", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
