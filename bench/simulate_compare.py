"""Elasticity benchmark: the shipped configs on every trace, for several provisioning delays.

Part 1 (defaults): `examples/sim/lab-rule.yaml`, `hpa-defaults.yaml`, `recommended.yaml` and
`recommended-headroom.yaml` on each trace in the traces directory, for the container (1 s) and VM (3 s)
delays, plus the oracle. Goal: the recommended config scores below 1 against both baselines with no more
replica-hours than each. "score" is `tierscale.simulate.compare.score` (accuracy, timeshare, overflow and
churn, issue P); "SPEC" is the geometric mean of the θU, θO, τU, τO, υ ratios, the score before issue P.

Part 2 (predictive): `recommended.yaml` (reactive) against `predictive.yaml` (the same plus
`policy: predictive`) for the VM (3 s) and cloud (60 s) delays. Goal: predictive scores below 1 against
reactive.

Part 3 (speed): the 48-hour, 1-second WorldCup98 trace through `recommended.yaml`; goal under 30 s. The
time of the same simulation with the engine calls replaced by "keep the count" is printed as a baseline,
so the ratio shows what the policy engine costs on this machine.

Everything runs in this process; tables are printed as Markdown (paste into docs/simulate.md).

    .venv/bin/python bench/simulate_compare.py [--traces ../shared/traces] [--only NAME] [--skip-wiki]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tierscale.policy.types import Decision
from tierscale.simulate import SimOptions, run_simulation
from tierscale.simulate import run as sim_run
from tierscale.simulate.compare import Result, ratio, score, spec_score

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "sim"
DEFAULT_TRACES = REPO.parent / "shared" / "traces"
WC48 = "worldcup98_1998-06-26_1s.csv"
COLS = ("theta_u", "theta_o", "tau_u", "tau_o", "instability", "jitter", "overflow")
COLS += ("replica_hours", "scale_events", "scalings_per_hour")
HEAD = "| θU % | θO % | τU % | τO % | υ % | jitter/h | overflow % | replica-h | scalings | scalings/h |"


def fmt(key: str, v: float) -> str:
    if key == "jitter":
        return f"{v:.0f}"
    if key == "overflow":
        return f"{v:.4f}"
    if key == "replica_hours":
        return f"{v:.1f}"
    if key == "scale_events":
        return f"{v:.0f}"
    if key == "scalings_per_hour":
        return f"{v:.1f}"
    return f"{v:.2f}"


def row(r: Result, extra: list[str]) -> str:
    return "| " + " | ".join([r.name, *(fmt(k, r.metrics[k]) for k in COLS), *extra]) + " |"


def geo(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def simulate(trace: Path, configs: list[str], delay: str) -> tuple[list[Result], dict[str, Any], float]:
    started = time.perf_counter()
    rep = run_simulation(SimOptions(trace=str(trace), configs=configs, delay=delay, plots=False))
    return rep.results, rep.info, time.perf_counter() - started


CANDIDATES = ("recommended", "recommended-headroom")


def part_defaults(traces: list[Path]) -> None:
    names = ("lab-rule", "hpa-defaults", *CANDIDATES)
    configs = [str(EXAMPLES / f"{n}.yaml") for n in names]
    # candidate -> rows of (trace, delay, score vs lab, rh vs lab, score vs HPA, rh vs HPA)
    verdicts: dict[str, list[tuple[str, str, float, float, float, float]]] = {c: [] for c in CANDIDATES}
    print("## Recommended defaults against the lab rule and HPA defaults\n")
    for trace in traces:
        for delay in ("container", "vm"):
            results, info, took = simulate(trace, configs, delay)
            by_name = {r.name: r.metrics for r in results}
            lab, hpa = by_name["lab-rule"], by_name["hpa-defaults"]
            m = info["model"]
            print(
                f"### {trace.name}, delay {delay} ({m['delay_mean_s']:g} s)\n\n"
                f"capacity {m['capacity_rps']:.3g} req/s per replica at 100 % CPU, demand at "
                f"{m['reference_utilization'] * 100:g} %, peak demand {m['peak_demand']}; "
                f"{m['simulated_seconds'] / 3600:.1f} h simulated in {took:.1f} s (all configs)\n"
            )
            print(f"| config {HEAD} score vs lab | SPEC vs lab | score vs HPA | SPEC vs HPA |")
            print("|---" * (len(COLS) + 5) + "|")
            for r in results:
                vs = [score(r.metrics, lab), spec_score(r.metrics, lab)]
                vs += [score(r.metrics, hpa), spec_score(r.metrics, hpa)]
                print(row(r, [f"{v:.3f}" for v in vs]))
            print()
            for c in CANDIDATES:
                rec = by_name[c]
                verdicts[c].append(
                    (
                        trace.stem,
                        delay,
                        score(rec, lab),
                        rec["replica_hours"] / lab["replica_hours"],
                        score(rec, hpa),
                        rec["replica_hours"] / hpa["replica_hours"],
                    )
                )
    for c, rows in verdicts.items():
        print(f"### Summary: {c} against each baseline\n")
        print(
            "| trace | delay | score vs lab | replica-h vs lab | beats lab "
            "| score vs HPA | replica-h vs HPA | beats HPA |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, delay, sl, rl, sh, rh in rows:
            bl = "yes" if sl < 1 and rl <= 1 else "no"
            bh = "yes" if sh < 1 and rh <= 1 else "no"
            print(f"| {name} | {delay} | {sl:.3f} | {rl:.3f} | {bl} | {sh:.3f} | {rh:.3f} | {bh} |")
        g = [geo([v[i] for v in rows]) for i in range(2, 6)]
        print(f"| **geometric mean** | | {g[0]:.3f} | {g[1]:.3f} | | {g[2]:.3f} | {g[3]:.3f} | |\n")


def part_predictive(traces: list[Path]) -> None:
    configs = [str(EXAMPLES / f) for f in ("recommended.yaml", "predictive.yaml")]
    print("## Predictive against reactive (recommended.yaml)\n")
    print(f"| trace | delay | config {HEAD} score vs reactive | SPEC vs reactive |")
    print("|---" * (len(COLS) + 5) + "|")
    verdicts: list[tuple[str, str, float, float, float]] = []
    for trace in traces:
        for delay in ("vm", "cloud"):
            results, _, _ = simulate(trace, configs, delay)
            base = results[0].metrics
            for r in results:
                line = row(r, [f"{score(r.metrics, base):.3f}", f"{spec_score(r.metrics, base):.3f}"])
                print(f"| {trace.stem} | {delay} " + line)
            pred = results[1].metrics
            verdicts.append(
                (
                    trace.stem,
                    delay,
                    score(pred, base),
                    pred["replica_hours"] / base["replica_hours"],
                    ratio(pred["overflow"], base["overflow"], "overflow"),
                )
            )
    print(
        "\n| trace | delay | score vs reactive | replica-h vs reactive | overflow vs reactive "
        "| beats reactive |"
    )
    print("|---|---|---|---|---|---|")
    for name, delay, s, rh, ov in verdicts:
        print(f"| {name} | {delay} | {s:.3f} | {rh:.3f} | {ov:.3f} | {'yes' if s < 1 else 'no'} |")
    for delay in ("vm", "cloud"):
        sel = [v for v in verdicts if v[1] == delay]
        print(
            f"| **geometric mean** | {delay} | {geo([v[2] for v in sel]):.3f} | "
            f"{geo([v[3] for v in sel]):.3f} | {geo([v[4] for v in sel]):.3f} | |"
        )
    print()


def part_speed(traces_dir: Path) -> None:
    trace = traces_dir / WC48
    if not trace.exists():
        print(f"(speed: {trace} not found)\n")
        return
    config = str(EXAMPLES / "recommended.yaml")
    _, _, full = simulate(trace, [config], "vm")
    real_step = sim_run.policy_step

    def hold(s: Any, snap: Any, state: Any) -> Any:
        # Baseline: the same loop, snapshots and capacity model, with no engine call at all.
        n = snap.current_replicas
        return Decision("hold", snap.now, n, n, (), n, (), "hold"), state

    sim_run.policy_step = hold  # type: ignore[assignment]
    try:
        _, _, model_only = simulate(trace, [config], "vm")
    finally:
        sim_run.policy_step = real_step  # type: ignore[assignment]
    print("## Speed\n")
    print(
        f"48 h of 1-second WorldCup98 (172 800 rows) through recommended.yaml, VM delay, with the oracle: "
        f'**{full:.1f} s** (goal < 30 s). The same run with the engine call replaced by "keep the count": '
        f"{model_only:.1f} s (ratio {full / model_only:.2f}: the rest is the policy engine).\n"
    )


def select_traces(directory: Path, only: str | None, skip_wiki: bool) -> list[Path]:
    """The trace files to run: all CSVs, or those whose name contains `only`, without the slow 28-day one."""
    traces = sorted(directory.glob("*.csv"))
    if only:
        traces = [t for t in traces if only in t.name]
    if skip_wiki:
        traces = [t for t in traces if "wikipedia" not in t.name]
    return traces


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--only", help="only traces whose file name contains this")
    ap.add_argument("--skip-wiki", action="store_true", help="skip the 28-day hourly trace (slowest)")
    ap.add_argument("--part", choices=["all", "defaults", "predictive", "speed"], default="all")
    args = ap.parse_args()
    traces = select_traces(args.traces, args.only, args.skip_wiki)
    if not traces:
        print(f"no traces under {args.traces}", file=sys.stderr)
        return 2
    np.seterr(all="ignore")
    print(f"Command: `.venv/bin/python bench/simulate_compare.py {' '.join(sys.argv[1:])}`".rstrip() + "\n")
    if args.part in ("all", "defaults"):
        part_defaults(traces)
    if args.part in ("all", "predictive"):
        part_predictive(traces)
    if args.part in ("all", "speed"):
        part_speed(args.traces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
