"""Simulator speed on a long trace (issue P): 27 days of 1-minute rows through the five shipped configs.

There is no 27-day 1-minute trace in `../shared/traces/`, so this builds one (deterministic, seed 27):
the first 27 days of the hourly Wikipedia trace (`wikipedia_en_2011-01-17_28d_3600s.csv`, real
measurements), each hourly mean placed at the middle of its hour and linearly interpolated to 1-minute
rows, times a multiplicative AR(1) noise (φ = 0.9 per minute, innovation σ = 0.02, so about ±5 % that
persists for ~10 minutes: the Wikipedia curve itself is too smooth to move a group within an hour), and
the requests of each minute drawn as a Poisson count. The rows are written to a temporary CSV.

Then `tierscale simulate` runs on it as a user would (a subprocess, plots included), with
`hpa-defaults.yaml` as the baseline and `lab-rule`, `recommended`, `recommended-headroom` and
`predictive` compared; `--jobs` values are given with `--jobs 1 2`. `--before SRC` also times another
checkout's `src/` directory (e.g. a copy taken before a change) on the same trace, so before and after
are measured in the same run on the same machine load; `--also LABEL=SRC` times more `src/` trees with
the current options (e.g. a proposed change elsewhere) and checks that their tables equal this
checkout's. Goal: under 3 minutes with five configs.

    .venv/bin/python bench/simulate_speed.py [--days 27] [--jobs 1 2] [--before /tmp/old/src]
        [--also patched=/tmp/patched/src] [--delay vm] [--keep DIR] [--profile]

`--profile` runs `recommended.yaml` alone in this process under cProfile for `--profile-days` days and
prints the 25 most expensive functions (by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "sim"
WIKI = REPO.parent / "shared" / "traces" / "wikipedia_en_2011-01-17_28d_3600s.csv"
CONFIGS = ("hpa-defaults", "lab-rule", "recommended", "recommended-headroom", "predictive")
GOAL_SECONDS = 180.0


def make_trace(path: Path, days: float, source: Path = WIKI, seed: int = 27) -> Path:
    """Write `days` of 1-minute rows derived from the hourly Wikipedia trace (see the module docstring)."""
    hourly = np.loadtxt(source, delimiter=",", skiprows=1)
    n = round(days * 1440)
    if n > len(hourly) * 60:
        raise SystemExit(f"--days {days}: the source covers {len(hourly) / 24:g} days")
    t = np.arange(n) * 60.0
    # Each hourly value is the mean over its hour: place it at the middle, the minute at its middle.
    base = np.interp(t + 30.0, hourly[:, 0] + 1800.0, hourly[:, 1])
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal(n) * 0.02
    noise = np.empty(n)
    level = 0.0
    for i, e in enumerate(shocks.tolist()):
        level = 0.9 * level + e
        noise[i] = level
    counts = rng.poisson(base * np.exp(noise) * 60.0)
    rows = zip(t.astype(int).tolist(), (counts / 60.0).tolist(), strict=True)
    path.write_text("t_seconds,requests_per_second\n" + "".join(f"{a},{r!r}\n" for a, r in rows))
    return path


@dataclass
class Timed:
    label: str
    jobs: int | None
    wall: float  # seconds, the whole command
    cpu: float | None  # CPU seconds of the configs' simulations, summed
    stdout: str
    runs: list[dict[str, Any]]  # summary.json's runs
    hours: float  # simulated


def simulate_cli(label: str, src: Path, trace: Path, out: Path, delay: str, jobs: int | None) -> Timed:
    """Time `tierscale simulate` run from `src` (a `src/` directory) on the five configs."""
    configs = [str(EXAMPLES / f"{c}.yaml") for c in CONFIGS]
    argv = [sys.executable, "-m", "tierscale", "simulate", "--trace", str(trace), "--config", configs[0]]
    argv += ["--compare", *configs[1:], "--delay", delay, "--out", str(out)]
    if jobs is not None:
        argv += ["--jobs", str(jobs), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    took = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {r.returncode}\n{r.stderr}")
    data = json.loads((out / "summary.json").read_text())
    runs = [r for r in data["runs"] if r.get("passes") is not None]  # not the oracle
    # The configs' own CPU time (recorded since issue P): robust to whatever else the machine runs.
    cpu = sum(r["cpu_seconds"] for r in runs) if all("cpu_seconds" in r for r in runs) else None
    return Timed(label, jobs, took, cpu, r.stdout, runs, data["model"]["simulated_seconds"] / 3600)


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def metrics_of(stdout: str) -> str:
    """The output without what varies from run to run (timings, the output directory)."""
    return "\n".join(ln for ln in stdout.splitlines() if not ln.startswith(("time:", "wrote ")))


def profile(trace: Path, days: float, delay: str) -> None:
    from tierscale.simulate import SimOptions, run_simulation

    opts = SimOptions(
        trace=str(trace),
        configs=[str(EXAMPLES / "recommended.yaml")],
        delay=delay,
        window=f"0:{days * 86400:g}",
        plots=False,
        oracle=False,
        jobs=1,
    )
    prof = cProfile.Profile()
    prof.enable()
    rep = run_simulation(opts)
    prof.disable()
    r = rep.results[0]
    passes, took = r.extra["passes"], r.extra["sim_seconds"]
    print(f"profile: recommended.yaml, {days:g} days, {passes:.0f} passes, {took:.1f} s")
    print("```")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    print("```")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=27.0)
    ap.add_argument("--delay", default="vm")
    ap.add_argument("--jobs", type=int, nargs="*", default=[], help="--jobs values to time (default: auto)")
    ap.add_argument("--before", type=Path, help="another src/ directory to time on the same trace")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=SRC", help="more src/ trees")
    ap.add_argument("--keep", type=Path, help="write the trace and the outputs here instead of a temp dir")
    ap.add_argument("--profile", action="store_true", help="cProfile recommended.yaml in this process")
    ap.add_argument("--profile-days", type=float, default=1.0)
    args = ap.parse_args()
    print(f"Command: `.venv/bin/python bench/simulate_speed.py {' '.join(sys.argv[1:])}`".rstrip() + "\n")
    with tempfile.TemporaryDirectory(prefix="simulate-speed-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        trace = make_trace(work / f"wikipedia_{args.days:g}d_60s.csv", args.days)
        print(f"trace {trace.name}: {round(args.days * 1440)} rows of 60 s, delay {args.delay}\n")
        if args.profile:
            profile(trace, args.profile_days, args.delay)
            return 0
        runs: list[tuple[str, Path, int | None]] = []
        if args.before:
            runs.append(("before", args.before, None))
        runs += [("after", REPO / "src", j) for j in (args.jobs or [None])]
        for spec in args.also:
            label, _, src = spec.partition("=")
            runs += [(label, Path(src), j) for j in (args.jobs or [None])]
        print("| code | --jobs | wall s | Σ config CPU s | goal | time line printed | load after |")
        print("|---|---|---|---|---|---|---|")
        timed: list[Timed] = []
        for label, src, jobs in runs:
            t = simulate_cli(label, src, trace, work / f"out-{label}-{jobs}", args.delay, jobs)
            line = next((ln for ln in t.stdout.splitlines() if ln.startswith("time:")), "")
            goal = "met" if t.wall < GOAL_SECONDS else "missed"
            cpu = f"{t.cpu:.1f}" if t.cpu is not None else "—"
            cells = [label, str(jobs or "auto"), f"{t.wall:.1f}", cpu, goal, line, load_line()]
            print("| " + " | ".join(cells) + " |", flush=True)
            timed.append(t)
        print(
            "\nPer config: policy passes, mean replicas paid for (replica-hours / hours), wall and CPU "
            "seconds of its simulation\n"
        )
        print("| code | --jobs | config | passes | mean replicas | wall s | CPU s |")
        print("|---|---|---|---|---|---|---|")
        for t in timed:
            for r in t.runs:
                cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "—"
                print(
                    f"| {t.label} | {t.jobs or 'auto'} | {r['name']} | {r['passes']:.0f} | "
                    f"{r['metrics']['replica_hours'] / t.hours:.1f} | {r['sim_seconds']:.1f} | {cpu} |"
                )
        reference = next((metrics_of(t.stdout) for t in timed if t.label == "after"), None)
        for t in timed:
            if t.label not in ("before", "after"):
                same = "the same tables as" if metrics_of(t.stdout) == reference else "DIFFERENT tables from"
                print(f"\n{t.label}, --jobs {t.jobs or 'auto'}: {same} this checkout's")
                continue
            table = re.sub(r"^wrote .*$", "", t.stdout, flags=re.M).rstrip()
            print(f"\n{t.label}, --jobs {t.jobs or 'auto'}:\n\n```\n{table}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
