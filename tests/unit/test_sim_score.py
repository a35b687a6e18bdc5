"""Issue P: the score of what users pay for, the replica-hours budget, progress, and parallel configs.

Every expected number below is worked out by hand from series short enough to check on paper.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from tierscale.simulate import SimOptions, run_simulation
from tierscale.simulate.command import summary_lines
from tierscale.simulate.compare import (
    SCORE_METRICS,
    SPEC_METRICS,
    Result,
    best_within_budget,
    factors,
    measure,
    ratio,
    score,
    spec_score,
    within_budget,
)
from tierscale.simulate.metrics import overflow_requests, scalings_per_hour
from tierscale.simulate.progress import SimProgress, format_sim_time
from tierscale.simulate.report import format_tables, summary
from tierscale.simulate.run import SimRun

# ---- the new metrics -----------------------------------------------------------------------------------


def test_scalings_per_hour() -> None:
    assert scalings_per_hour(3, 7200, 1.0) == pytest.approx(1.5)  # 3 in 2 h
    assert scalings_per_hour(3, 240, 60.0) == pytest.approx(0.75)  # 3 in 4 h of 1-minute cells
    assert scalings_per_hour(0, 10, 1.0) == 0.0
    assert scalings_per_hour(5, 0, 1.0) == 0.0  # no time: no rate rather than a division by zero


def test_overflow_requests_counts_requests_not_rates() -> None:
    # capacity 8/replica, cells of 2 s: 2 req/s over for 2 s, then 10 req/s over for 2 s = 24 requests.
    rates = np.array([10.0, 10.0, 0.0])
    assert overflow_requests(rates, np.array([1, 0, 0]), 8.0, 2.0) == pytest.approx(24.0)
    assert overflow_requests(rates, np.array([2, 2, 0]), 8.0, 2.0) == 0.0


def test_measure_on_a_four_cell_hour() -> None:
    # Four cells of 900 s (one hour). Demand 1,1,3,3; ready 1,1,1,3; paid for 1,3,3,3 (two replicas asked
    # for at cell 1, ready at cell 3); capacity 10 req/s per replica.
    demand = np.array([1, 1, 3, 3])
    supply = np.array([1, 1, 1, 3])
    allocated = np.array([1, 3, 3, 3])
    rates = np.array([5.0, 5.0, 25.0, 25.0])
    m = measure(demand, supply, allocated, rates, 10.0, 900.0, scalings=1)
    assert m["theta_u"] == pytest.approx(100 / 4 * (2 / 3))  # short 2 of 3 replicas for a quarter
    assert m["tau_u"] == pytest.approx(25.0)
    assert (m["theta_o"], m["tau_o"]) == (0.0, 0.0)
    assert m["replica_hours"] == pytest.approx((1 + 3 + 3 + 3) * 900 / 3600)  # 2.5
    assert m["overflow_requests"] == pytest.approx(15 * 900)  # 25 - 10 req/s over, for 900 s
    assert m["overflow"] == pytest.approx(100 * 15 / 60)  # of 5 + 5 + 25 + 25 = 60 req/s·cells
    assert (m["scale_events"], m["scalings_per_hour"]) == (1.0, pytest.approx(1.0))


# ---- the score -----------------------------------------------------------------------------------------

BASE = {
    "theta_u": 10.0,
    "theta_o": 10.0,
    "tau_u": 10.0,
    "tau_o": 10.0,
    "instability": 10.0,
    "overflow": 1.0,
    "scalings_per_hour": 2.0,
    "replica_hours": 100.0,
}


def test_score_weighs_four_factors_alike() -> None:
    assert set(SCORE_METRICS) == {*SPEC_METRICS, "overflow", "scalings_per_hour"}
    m = {
        **BASE,
        "theta_u": 40.0,  # x4
        "theta_o": 2.5,  # x1/4: accuracy √(4 · 1/4) = 1
        "tau_u": 20.0,
        "tau_o": 20.0,  # timeshare √(2 · 2) = 2
        "overflow": 16.0,  # overflow 16
        "scalings_per_hour": 8.0,  # churn √(1 · 4) = 2 (instability unchanged)
        "replica_hours": 500.0,  # not a factor: only the budget sees it
    }
    assert factors(m, BASE) == pytest.approx(
        {"accuracy": 1.0, "timeshare": 2.0, "overflow": 16.0, "churn": 2.0}
    )
    assert score(m, BASE) == pytest.approx((1 * 2 * 16 * 2) ** 0.25)  # 2.828
    # The SPEC score sees θU, θO, τU, τO, υ only: (4 · 1/4 · 2 · 2 · 1)^(1/5).
    assert spec_score(m, BASE) == pytest.approx(4 ** (1 / 5))
    assert score(BASE, BASE) == spec_score(BASE, BASE) == pytest.approx(1.0)


def test_overflow_and_churn_can_outweigh_better_accuracy() -> None:
    # The trap: accuracy and timeshare halved, bought with 3.8x the overflow and 5.4x the scalings.
    m = {**BASE, **{k: 5.0 for k in SPEC_METRICS[:4]}, "overflow": 3.8, "scalings_per_hour": 2 * 5.4}
    assert spec_score(m, BASE) == pytest.approx((0.5**4) ** (1 / 5))  # 0.574: looks much better
    assert score(m, BASE) == pytest.approx((0.5 * 0.5 * 3.8 * math.sqrt(5.4)) ** 0.25)  # 1.085: it is not
    assert score(m, BASE) > 1


def test_floors_keep_perfect_zeros_finite() -> None:
    perfect = {k: 0.0 for k in BASE}
    assert score(perfect, perfect) == pytest.approx(1.0)  # two perfect zeros tie
    assert ratio(0.0, 0.0, "overflow") == 1.0
    assert ratio(0.0, 0.01, "overflow") == pytest.approx(0.1)  # overflow floored at 0.001 %
    assert ratio(0.0, 1.0, "scalings_per_hour") == pytest.approx(0.1)  # one scaling in ten hours
    assert ratio(0.0, 1.0, "theta_u") == pytest.approx(0.01)  # SPEC metrics at 0.01 points
    assert ratio(0.0, 50.0, "overflow_requests") == pytest.approx(1 / 50)  # one request
    # A perfect config against BASE: every ratio floored, nothing infinite or zero.
    got = factors(perfect, BASE)
    assert got == pytest.approx(
        {"accuracy": 0.001, "timeshare": 0.001, "overflow": 0.001, "churn": math.sqrt(0.001 * 0.05)}
    )
    assert 0 < score(perfect, BASE) < 1


# ---- the replica-hours budget ----------------------------------------------------------------------------


def result(name: str, metrics: dict[str, float], oracle: bool = False) -> Result:
    empty = np.zeros(1, dtype=np.int64)
    run = None if oracle else SimRun(empty, empty, [], [0.0], [1], 0, 0.0)
    full = {**metrics, "jitter": 0.0, "scale_events": 1.0, "overflow_requests": 0.0}
    return Result(name, "oracle" if oracle else "hpa", full, empty, empty, run=run, extra={})


def test_budget_is_a_constraint_not_a_term() -> None:
    assert within_budget({**BASE, "replica_hours": 100.0}, BASE)  # exactly the baseline's: ok
    assert not within_budget({**BASE, "replica_hours": 100.5}, BASE)
    assert within_budget({**BASE, "replica_hours": 109.0}, BASE, max_ratio=1.1)
    assert not within_budget({**BASE, "replica_hours": 95.0}, BASE, max_ratio=0.9)
    cheap = {**BASE, "theta_u": 5.0, "replica_hours": 90.0}  # score 2^(-1/8): 0.917
    lavish = {**BASE, **{k: 1.0 for k in SPEC_METRICS}, "replica_hours": 140.0}  # far better, 1.4x the cost
    results = [
        result("base", BASE),
        result("lavish", lavish),
        result("cheap", cheap),
        result("oracle", {k: 0.0 for k in BASE} | {"replica_hours": 80.0}, oracle=True),
    ]
    assert score(lavish, BASE) < score(cheap, BASE) < 1
    assert best_within_budget(results).name == "cheap"  # lavish is over budget, the oracle no candidate
    assert best_within_budget(results, max_ratio=1.5).name == "lavish"
    assert best_within_budget(results, max_ratio=0.5) is None  # not even the baseline fits
    table = format_tables(results)
    budget = {line.split()[0]: line.split()[-1] for line in table.splitlines() if line.split()}
    assert (budget["base"], budget["lavish"], budget["cheap"], budget["oracle"]) == ("ok", "OVER", "ok", "ok")
    assert "SPEC score" in table and "scalings/h" in table
    info = {"score": {"max_replica_hours": 1.0}}
    runs = {r["name"]: r for r in summary(info, results)["runs"]}
    assert runs["lavish"]["within_budget"] is False and runs["cheap"]["within_budget"] is True
    assert runs["cheap"]["score"] == pytest.approx(2 ** (-1 / 8), abs=1e-6)
    assert runs["cheap"]["spec_score"] == pytest.approx(2 ** (-1 / 5), abs=1e-6)


# ---- run_simulation: parallel, budget, timing, progress --------------------------------------------------


def write_configs(tmp: Path) -> list[str]:
    bodies = {
        "base": (
            "    policy: hpa\n    metrics: [{type: cpu, target: 70}]\n    sync_period: 5s\n"
            "    behavior: {scale_down: {stabilization_window: 15s}}\n"
        ),
        "fast": (
            "    policy: hpa\n    metrics: [{type: cpu, target: 40}]\n    tolerance: 0\n    sync_period: 2s\n"
            "    behavior: {scale_down: {stabilization_window: 10s}}\n"
        ),
        "rule": (
            "    policy: threshold\n    metrics: [{type: cpu, target: 70}]\n"
            "    threshold: {metric: cpu, upper: 70, lower: 20, step: 1, cooldown: 5s}\n"
        ),
    }
    out = []
    for name, body in bodies.items():
        p = tmp / f"{name}.yaml"
        p.write_text(
            "groups:\n  - name: web\n    tier: docker\n    min: 1\n    max: 12\n    template: {image: x}\n"
            "    balancer: {type: none}\n" + body
        )
        out.append(str(p))
    return out


def write_wave(tmp: Path) -> Path:
    t = np.arange(1800)
    rates = 40 + 30 * np.sin(2 * np.pi * t / 600) + 10 * np.sin(2 * np.pi * t / 37)
    path = tmp / "wave.csv"
    path.write_text(
        "t_seconds,requests_per_second\n" + "".join(f"{i},{r:.3f}\n" for i, r in enumerate(rates))
    )
    return path


def test_parallel_configs_give_the_serial_results(tmp_path: Path) -> None:
    configs, trace = write_configs(tmp_path), write_wave(tmp_path)

    def go(jobs: int) -> object:
        # A random delay, so the seeded generator per config matters.
        return run_simulation(
            SimOptions(trace=str(trace), configs=configs, capacity="10", delay="2s..9s", seed=7, jobs=jobs)
        )

    serial, parallel = go(1), go(3)
    assert parallel.info["timing"]["jobs"] == 3 and serial.info["timing"]["jobs"] == 1
    assert [r.name for r in parallel.results] == ["base", "fast", "rule", "oracle"]
    for a, b in zip(serial.results, parallel.results, strict=True):
        assert a.metrics == b.metrics, a.name
        assert np.array_equal(a.supply, b.supply) and np.array_equal(a.allocated, b.allocated)
        if a.run is not None:
            assert a.run.events == b.run.events and a.run.passes == b.run.passes
    assert serial.table == parallel.table
    assert serial.results[1].metrics["scale_events"] > 5  # the comparison is not vacuous


def test_run_simulation_reports_budget_and_time_per_simulated_day(tmp_path: Path) -> None:
    configs, trace = write_configs(tmp_path), write_wave(tmp_path)
    out = tmp_path / "out"
    rep = run_simulation(
        SimOptions(trace=str(trace), configs=configs, capacity="10", delay="3s", out=str(out), plots=False)
    )
    base = rep.results[0].metrics
    rh = {r.name: r.metrics["replica_hours"] / base["replica_hours"] for r in rep.results}
    sc = rep.info["score"]
    assert set(sc["over_budget"]) == {n for n, v in rh.items() if v > 1}
    assert sc["over_budget"], "the 40 % target should spend more than the baseline"
    assert sc["best_within_budget"] not in sc["over_budget"]
    t = rep.info["timing"]
    assert t["simulated_days"] == pytest.approx(1800 / 86400)
    assert t["seconds_per_simulated_day"] == pytest.approx(t["wall_seconds"] / t["simulated_days"])
    assert set(t["per_config"]) == {"base", "fast", "rule"}
    lines = summary_lines(rep.info)
    assert any(line.startswith("budget: replica-hours at most 1.00× base's") for line in lines)
    assert any("per simulated day" in line for line in lines)
    data = json.loads((out / "summary.json").read_text())
    assert data["runs"][0]["score"] == data["runs"][0]["spec_score"] == 1.0
    assert {"scalings_per_hour", "overflow_requests"} <= set(data["runs"][1]["metrics"])
    assert set(data["runs"][1]["factors"]) == {"accuracy", "timeshare", "overflow", "churn"}
    assert data["score"]["max_replica_hours"] == 1.0 and data["timing"]["configs"] == 3
    assert "per simulated day" in (out / "table.txt").read_text()
    # A looser budget lets the expensive config back in.
    loose = run_simulation(
        SimOptions(trace=str(trace), configs=configs, capacity="10", delay="3s", max_replica_hours=10)
    )
    assert loose.info["score"]["over_budget"] == {}


def test_progress_bars_follow_simulated_time(tmp_path: Path) -> None:
    configs, trace = write_configs(tmp_path), write_wave(tmp_path)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with SimProgress(enabled=True, console=console) as bars:
        run_simulation(SimOptions(trace=str(trace), configs=configs, capacity="10", jobs=1), progress=bars)
    text = buf.getvalue()
    for name in ("base", "fast", "rule"):
        assert name in text
    assert "100%" in text and "30 min of 30 min" in text
    assert not SimProgress(enabled=False).enabled
    with SimProgress(enabled=False) as off:  # every call is a no-op
        off.update(off.add("x", 10.0), 5.0)


def test_transient_progress_drops_finished_runs() -> None:
    buf = io.StringIO()
    with SimProgress(enabled=True, transient=True, console=Console(file=buf, force_terminal=True)) as bars:
        overall = bars.add("runs", 2, unit="runs")
        run = bars.add("a", 3600.0)
        bars.update(run, 1800.0)
        bars.finish(run)
        bars.advance(overall)
        assert bars._bars == {overall: [1.0, 2, "runs"]}


def test_format_sim_time() -> None:
    assert [format_sim_time(s) for s in (90, 3 * 3600, 27 * 86400)] == ["2 min", "3.0 h", "27.0 d"]


def test_short_comparisons_stay_in_this_process_and_long_ones_start_longest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from tierscale.simulate import jobs

    def job(name: str, policy: str, sync: float, target: float) -> jobs.Job:
        cpu = SimpleNamespace(type="cpu", target=target)
        return jobs.Job(name, "", SimpleNamespace(policy=policy, sync_period=sync, metrics=[cpu]))

    monkeypatch.setattr(jobs, "default_jobs", lambda: 2)
    five = [job("a", "hpa", 15, 70), job("b", "threshold", 5, 70), job("c", "hpa", 5, 68)]
    five += [job("d", "hpa", 5, 64), job("e", "predictive", 5, 68)]
    # 27 days at these sync periods: ~2 million passes, far above the threshold; 10 minutes: ~500.
    assert jobs.auto_workers(five, 27 * 86400) == 2
    assert jobs.auto_workers(five, 600) == 1
    order = sorted(five, key=lambda j: -jobs._cost(j))
    # predictive > the lower target > the higher target > 15 s sync > the threshold rule
    assert [j.name for j in order] == ["e", "d", "c", "a", "b"]
