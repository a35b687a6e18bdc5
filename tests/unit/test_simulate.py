"""The simulator: trace loading, the capacity model, the simulated controller, and `tierscale simulate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO
from tierscale.config import load_config_text
from tierscale.config.settings import settings_for
from tierscale.simulate import (
    CapacityModel,
    SimInputError,
    SimOptions,
    build_grid,
    load_trace,
    parse_delay,
    run_simulation,
    simulate,
)
from tierscale.simulate.jobs import settings_for_sim as _settings
from tierscale.simulate.model import DelayModel
from tierscale.simulate.trace import Trace, parse_window, select_window

TRACES = REPO.parent / "shared" / "traces"
SWIM = TRACES / "worldcup98_day53_swim_105min_1s.csv"


def write_trace(path: Path, rates: list[float], bin_s: int = 1) -> Path:
    path.write_text(
        "t_seconds,requests_per_second\n" + "".join(f"{i * bin_s},{r}\n" for i, r in enumerate(rates))
    )
    return path


def group(body: str, tier: str = "docker"):
    text = (
        "groups:\n  - name: web\n    tier: " + tier + "\n    min: 1\n    max: 20\n"
        "    template: {image: x}\n    balancer: {type: none}\n" + body
    )
    return load_config_text(text, "g.yaml").groups[0]


def run(body: str, rates: list[float], delay: str = "3s", capacity: float = 20.0, seed: int = 0):
    g = group(body)
    grid = build_grid(Trace("t", 1.0, 0.0, np.asarray(rates, dtype=float)))
    cap = CapacityModel(capacity, 0.5)
    d = parse_delay(delay)
    demand = cap.demand(grid.rate)
    initial = int(np.clip(demand[0], g.min, g.max))
    return simulate(_settings(g, d), grid, cap, d, initial=initial, seed=seed), demand


# ---- traces ------------------------------------------------------------------------------------------------


def test_load_trace_and_window(tmp_path: Path) -> None:
    tr = load_trace(write_trace(tmp_path / "a.csv", [1, 2, 3, 4.5], bin_s=60))
    assert (tr.name, tr.bin, tr.start, tr.rates.tolist(), tr.duration) == (
        "a",
        60.0,
        0.0,
        [1, 2, 3, 4.5],
        240.0,
    )
    assert parse_window("1m:3m") == (60.0, 180.0)
    assert parse_window(":90") == (None, 90.0)
    cut = select_window(tr, 60.0, 180.0)
    assert (cut.start, cut.rates.tolist()) == (60.0, [2.0, 3.0])
    with pytest.raises(SimInputError, match="no rows in the window; the trace covers 0s to 240s"):
        select_window(tr, 1000.0, None)
    with pytest.raises(SimInputError, match="END must be after START"):
        parse_window("3m:1m")


# Every format and refusal of the loader, with gaps, duplicates and order: test_trace_formats.py. What the
# lab format refused before and still does:
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t_seconds,requests_per_second\n", "a.csv: 0 rows with a value: a trace needs at least 2"),
        ("t_seconds,requests_per_second\n0,1\n1,x\n", "a.csv:3: value must be a number"),
        ("t_seconds,requests_per_second\n0,1\n1,-2\n", "a.csv:3: value must be finite and >= 0"),
        ("t_seconds,requests_per_second\n0,1\n1,nan\n", "a.csv:3: value must be finite"),
        ("t_seconds,requests_per_second\n0,1\n1,1\n2,1\n2.5,1\n", "a.csv:5: time 2.5s is 50% of a step off"),
        ("t_seconds,requests_per_second\n0,1,2\n", "a.csv:2: expected 2 values like the header, got 3"),
    ],
)
def test_bad_traces(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(SimInputError) as info:
        load_trace(path)
    assert str(info.value).startswith(str(tmp_path / message.split(":")[0]) + message[len("a.csv") :])


def test_delay_models() -> None:
    rng = np.random.default_rng(1)
    assert parse_delay("vm") == DelayModel("fixed", 3.0, text="vm")
    assert parse_delay("1500ms").sample(rng) == 1.5
    uni = parse_delay("2s..5s")
    draws = [uni.sample(rng) for _ in range(200)]
    assert min(draws) >= 2.0 and max(draws) <= 5.0 and uni.mean == 3.5
    logn = parse_delay("lognormal:60s:0.3")
    assert np.median([logn.sample(rng) for _ in range(2001)]) == pytest.approx(60.0, rel=0.06)
    for bad in ("soon", "5s..2s", "lognormal:60s", "lognormal:0s:0.3"):
        with pytest.raises(SimInputError, match="--delay"):
            parse_delay(bad)


def test_grid_compresses_time_and_splits_long_bins() -> None:
    tr = Trace("t", 3600.0, 0.0, np.array([10.0, 20.0]))
    g1 = build_grid(tr, 1.0)
    assert (g1.dt, g1.n, g1.duration) == (1.0, 7200, 7200.0)
    g60 = build_grid(tr, 60.0)  # each hour lasts a minute; rates are kept
    assert (g60.dt, g60.n, g60.rate[59], g60.rate[60]) == (1.0, 120, 10.0, 20.0)
    fast = build_grid(Trace("t", 1.0, 0.0, np.ones(10)), 4.0)
    assert (fast.dt, fast.n, fast.duration) == (0.25, 10, 2.5)
    assert g1.cell(0.0) == 0 and g1.cell(2.5) == 3 and g1.cell(1e9) == g1.n


# ---- the simulated controller -------------------------------------------------------------------------

HPA_RPS = """\
    sync_period: 5s
    metrics: [{type: requests_per_replica, target: 10}]
    behavior: {scale_down: {stabilization_window: 0s}}
"""


def test_step_up_then_down_with_provisioning_delay() -> None:
    rates = [10.0] * 60 + [100.0] * 240 + [10.0] * 300  # demand (10 req/s per replica) 1 -> 10 -> 1
    r, demand = run(HPA_RPS, rates, delay="3s")
    assert demand[:60].tolist() == [1] * 60 and demand[60:300].max() == 10
    assert r.ready[:60].tolist() == [1] * 60
    up = next(e for e in r.events if e.desired > e.current)
    assert up.t >= 60.0  # it cannot know before the step
    t = int(up.t)
    assert r.ready[t : t + 3].tolist() == [up.current] * 3  # pending for the 3 s delay
    assert r.ready[t + 3] == up.desired  # ready exactly then
    assert r.ready[250] == 10  # caught up
    assert r.ready[-1] == 1  # and back to one after the load went away
    assert (r.allocated >= r.ready).all()  # pending replicas are paid for, not served by
    assert r.allocated[t + 1] == up.desired


def test_cpu_saturates_so_each_scale_up_at_most_doubles() -> None:
    # One replica at 100 % CPU cannot tell 2x from 10x: with a 50 % target the HPA can ask for 2x per pass.
    body = "    sync_period: 5s\n    metrics: [{type: cpu, target: 50}]\n    cpu_initialization_period: 30s\n"
    r, _ = run(body, [5.0] * 30 + [200.0] * 300, delay="1s")  # 200 req/s needs 20 replicas at 50 %
    ups = [e for e in r.events if e.desired > e.current]
    assert len(ups) >= 3
    assert all(e.desired <= 2 * e.current for e in ups), [(e.current, e.desired) for e in ups]
    assert r.ready[-1] == 20


def test_threshold_steps_by_one_and_honours_the_cooldown() -> None:
    body = (
        "    sync_period: 5s\n    policy: threshold\n    metrics: [{type: cpu, target: 70}]\n"
        "    threshold: {metric: cpu, upper: 70, lower: 20, step: 1, cooldown: 15s}\n"
    )
    r, _ = run(body, [5.0] * 20 + [150.0] * 200, delay="1s")
    assert len(r.events) >= 3
    assert all(abs(e.desired - e.current) == 1 for e in r.events)
    gaps = np.diff([e.t for e in r.events])
    assert (gaps >= 15.0).all()


def test_random_delays_are_reproducible_with_the_seed() -> None:
    a, _ = run(HPA_RPS, [10.0] * 30 + [150.0] * 120, delay="1s..20s", seed=7)
    b, _ = run(HPA_RPS, [10.0] * 30 + [150.0] * 120, delay="1s..20s", seed=7)
    c, _ = run(HPA_RPS, [10.0] * 30 + [150.0] * 120, delay="1s..20s", seed=8)
    assert np.array_equal(a.ready, b.ready)
    assert not np.array_equal(a.ready, c.ready)


def test_schedule_raises_min_in_the_simulation() -> None:
    # Epoch 0 is 1970-01-01 00:00 UTC: "*/10 * * * *" fires at 0, 600, 1200 ... and holds min 5 for 5 min.
    body = HPA_RPS + "    schedule: [{cron: '*/10 * * * *', duration: 5m, min: 5}]\n"
    r, _ = run(body, [1.0] * 1000, delay="1s")
    assert r.ready[200] == 5
    assert r.ready[450] == 1
    assert r.ready[800] == 5


def test_predictive_beats_reactive_on_a_ramp_with_a_slow_tier() -> None:
    ramp = [5.0 + 0.1 * t for t in range(1800)]  # +6 req/s per minute, demand 1 -> 19 replicas
    base = "    sync_period: 5s\n    metrics: [{type: requests_per_replica, target: 10}]\n"
    reactive, demand = run(base, ramp, delay="60s")
    predictive, _ = run(base + "    policy: predictive\n", ramp, delay="60s")
    under = lambda r: float(np.maximum(demand - r.ready, 0).sum())  # noqa: E731
    assert under(predictive) < 0.5 * under(reactive)


def test_settings_use_the_simulated_delay_for_auto_horizon() -> None:
    g = group("    policy: predictive\n")
    assert _settings(g, parse_delay("cloud")).forecast.horizon == 60.0 + 5.0
    assert settings_for(g).forecast.horizon == 1.0 + 5.0  # the controller: the tier's typical delay


# ---- run_simulation and the CLI ----------------------------------------------------------------------------

EXAMPLES = sorted(str(p) for p in (REPO / "examples" / "sim").glob("*.yaml"))


def test_compare_the_shipped_configs_on_a_real_trace(tmp_path: Path) -> None:
    report = run_simulation(
        SimOptions(trace=str(SWIM), configs=EXAMPLES, out=str(tmp_path), delay="vm", plots=False)
    )
    names = [r.name for r in report.results]
    assert names == [Path(p).stem for p in EXAMPLES] + ["oracle"]
    oracle = report.results[-1].metrics
    assert (oracle["theta_u"], oracle["tau_u"], oracle["theta_o"], oracle["overflow"]) == (0, 0, 0, 0)
    for r in report.results[:-1]:
        assert r.metrics["theta_u"] > 0  # a reactive policy cannot follow 1-second noise
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["runs"][0]["score"] == 1.0 and data["runs"][0]["ratios"]["theta_u"] == 1.0
    assert data["model"]["delay"] == "vm" and data["model"]["peak_demand"] == 33
    assert all(k in data["runs"][1]["metrics"] for k in ("theta_u", "tau_o", "jitter", "overflow"))
    assert "<svg" not in (tmp_path / "report.html").read_text()  # plots skipped


def tierscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierscale", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_writes_table_json_png_and_html(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", [10.0] * 60 + [60.0] * 120 + [20.0] * 120)
    cfg = tmp_path / "a.yaml"
    cfg.write_text("groups:\n  - {name: web, tier: docker, max: 10, template: {image: x}}\n")
    out = tmp_path / "out"
    r = tierscale(
        "simulate", "--trace", str(trace), "--config", str(cfg), "--out", str(out),
        "--compare", EXAMPLES[0], EXAMPLES[1], "--capacity", "10", "--delay", "2s",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ratio to a" in r.stdout and "oracle" in r.stdout and "score" in r.stdout
    assert "scalings/h" in r.stdout and "SPEC score" in r.stdout and "budget: replica-hours" in r.stdout
    assert "per simulated day" in r.stdout
    assert "━" not in r.stderr  # no progress bars when stderr is not a terminal
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "<svg" in page and "ratio to a" in page
    data = json.loads((out / "summary.json").read_text())
    assert [x["name"] for x in data["runs"]] == [
        "a",
        Path(EXAMPLES[0]).stem,
        Path(EXAMPLES[1]).stem,
        "oracle",
    ]
    assert data["model"]["capacity_rps"] == 10.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "{missing}"], "cannot read"),
        (["--speed", "0"], "--speed: must be > 0 (got 0)"),
        (["--speed", "fast"], "--speed: expected a number"),
        (["--window", "5m"], "--window: expected START:END"),
        (["--delay", "sometimes"], "--delay: expected a duration"),
        (["--capacity", "-3"], "--capacity: must be > 0"),
        (["--utilization", "120"], "--utilization: must be > 0 and <= 100"),
        (["--group", "api"], "no group named 'api'"),
        (["--config", "{bad}"], "groups[0].max: must be >= min (5)"),
        (["--config", "{prom}"], "a prometheus query cannot be simulated"),
        (["--out", None], "--out is required"),
        (["stray.yaml"], "unexpected argument 'stray.yaml'"),
        (["--jobs", "0"], "--jobs: expected a whole number >= 1 (got '0')"),
        (["--jobs", "many"], "--jobs: expected a whole number >= 1"),
        (["--max-replica-hours", "0"], "--max-replica-hours: must be > 0 (got 0)"),
        (["--max-replica-hours", "x"], "--max-replica-hours: expected a number"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str | None], message: str) -> None:
    trace = write_trace(tmp_path / "t.csv", [10.0] * 30)
    good = tmp_path / "good.yaml"
    good.write_text("groups:\n  - {name: web, tier: docker, max: 10, template: {image: x}}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - {name: web, tier: docker, min: 5, max: 2, template: {image: x}}\n")
    prom = tmp_path / "prom.yaml"
    prom.write_text(
        "groups:\n  - {name: web, tier: docker, max: 2, template: {image: x},\n"
        "     metrics: [{type: prometheus, url: 'http://x', query: q, target_per_replica: 5}]}\n"
    )
    opts: dict[str, str | None] = {"--trace": str(trace), "--config": str(good), "--out": str(tmp_path / "o")}
    extra: list[str] = []
    it = iter(args)
    for a in it:
        if a is not None and a.startswith("--"):
            opts[a] = next(it)
        elif a is not None:
            extra.append(a)
    subst = {"{missing}": str(tmp_path / "nope.csv"), "{bad}": str(bad), "{prom}": str(prom)}
    argv = [x for k, v in opts.items() if v is not None for x in (k, subst.get(v, v))]
    r = tierscale("simulate", *argv, *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_schedules_see_the_start_time_plus_the_window(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.csv", [1.0] * 1200)
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "groups:\n  - name: web\n    tier: docker\n    max: 10\n    template: {image: x}\n"
        "    metrics: [{type: requests_per_replica, target: 10}]\n"
        "    behavior: {scale_down: {stabilization_window: 0s}}\n"
        "    schedule: [{cron: '10 22 * * *', duration: 2m, min: 5}]\n"
    )
    # t = 0 is 21:59:00, the window starts at 660 s = 22:10:00, when the schedule fires.
    opts = SimOptions(
        trace=str(trace), configs=[str(cfg)], window="660:", start="2024-05-01T21:59:00Z",
        capacity="20", delay="1s", oracle=False, plots=False,
    )  # fmt: skip
    supply = run_simulation(opts).results[0].supply
    assert supply[60] == 5  # raised for the 2 minutes after 22:10
    assert supply[300] == 1  # back to the group's min afterwards


@pytest.mark.parametrize("flag", [None, "--no-progress"])
def test_cli_progress_bars_on_a_terminal(tmp_path: Path, flag: str | None) -> None:
    import os
    import pty

    trace = write_trace(tmp_path / "t.csv", [10.0] * 60 + [60.0] * 120 + [20.0] * 120)
    argv = [sys.executable, "-m", "tierscale", "simulate", "--trace", str(trace), "--config", EXAMPLES[0]]
    argv += ["--compare", EXAMPLES[1], "--out", str(tmp_path / "o"), "--no-plots", "--capacity", "10"]
    master, slave = pty.openpty()  # stderr is a terminal, as in an interactive shell
    proc = subprocess.Popen([*argv, *([flag] if flag else [])], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out, _ = proc.communicate(timeout=120)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    assert b"ratio to" in out  # the table still goes to stdout
    shown = "100%" in err and Path(EXAMPLES[1]).stem in err
    assert shown is (flag is None), err
