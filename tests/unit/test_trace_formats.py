"""Trace files as monitoring systems export them: every accepted format, every refusal, and gap filling.

Inputs are small hand-written files; expected rates are worked out by hand in the comments. 1714521600 is
2024-05-01T00:00:00Z in epoch seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tierscale.simulate import SimInputError, SimOptions, load_trace, run_simulation
from tierscale.simulate.command import info_lines
from tierscale.simulate.compare import score
from tierscale.simulate.trace import Trace, select_window

MAY1 = 1714521600.0  # 2024-05-01T00:00:00Z
LAB = "t_seconds,requests_per_second\n"


def load(tmp_path: Path, text: str | bytes, name: str = "a.csv", **kw: Any) -> Trace:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return load_trace(path, **kw)


def counts(tr: Trace) -> tuple[int, int, int, int]:
    return tr.load.filled, tr.load.duplicates, tr.load.out_of_order, tr.load.empty


# ---- accepted: the lab's format, gaps, duplicates, order ------------------------------------------------


def test_the_lab_format_is_read_as_before(tmp_path: Path) -> None:
    tr = load(tmp_path, LAB + "300,1\n360,2\n420,3.5\n")
    assert (tr.name, tr.bin, tr.start, tr.rates.tolist(), tr.epoch) == ("a", 60.0, 300.0, [1, 2, 3.5], None)
    assert counts(tr) == (0, 0, 0, 0)
    assert (tr.load.format, tr.load.times, tr.load.columns, tr.load.rows) == (
        "CSV",
        "seconds",
        ("t_seconds", "requests_per_second"),
        3,
    )


def test_a_missing_row_is_filled_by_linear_interpolation(tmp_path: Path) -> None:
    # The case: a 5-minute export with a 600 s step where row 600 is missing: (20 + 50) / 2 = 35.
    tr = load(tmp_path, LAB + "0,10\n300,20\n900,50\n1200,40\n")
    assert (tr.bin, tr.rates.tolist(), counts(tr)) == (300.0, [10, 20, 35, 50, 40], (1, 0, 0, 0))


def test_a_longer_gap_is_a_straight_line(tmp_path: Path) -> None:
    # 30 -> 60 over three steps: 40, 50 in between.
    tr = load(tmp_path, LAB + "0,0\n60,30\n240,60\n")
    assert (tr.rates.tolist(), tr.load.filled) == ([0, 30, 40, 50, 60], 2)


def test_a_duplicate_time_keeps_the_last_row(tmp_path: Path) -> None:
    tr = load(tmp_path, LAB + "0,1\n60,2\n60,5\n120,3\n")
    assert (tr.rates.tolist(), counts(tr)) == ([1, 5, 3], (0, 1, 0, 0))


def test_unsorted_rows_are_sorted_and_counted(tmp_path: Path) -> None:
    # Newest first, as some dashboards download: two rows are earlier than a row above them.
    tr = load(tmp_path, LAB + "120,3\n60,2\n0,1\n")
    assert (tr.start, tr.rates.tolist(), counts(tr)) == (0.0, [1, 2, 3], (0, 0, 2, 0))


def test_unsorted_with_duplicates_keeps_the_last_row_in_the_file(tmp_path: Path) -> None:
    # Times 120, 0, 60, 60: "last" is the file's order, not the sorted one, so 60 -> 2.
    tr = load(tmp_path, LAB + "120,3\n0,1\n60,5\n60,2\n")
    assert (tr.rates.tolist(), counts(tr)) == ([1, 2, 3], (0, 1, 3, 0))


def test_an_empty_value_is_a_missing_row(tmp_path: Path) -> None:
    tr = load(tmp_path, LAB + "0,1\n60,\n120,3\n180,null\n240,5\n")
    assert (tr.rates.tolist(), counts(tr)) == ([1, 2, 3, 4, 5], (2, 0, 0, 2))


def test_stamps_a_few_ms_off_are_snapped_to_the_grid(tmp_path: Path) -> None:
    tr = load(tmp_path, LAB + "0,1\n60.004,2\n119.998,3\n180.002,4\n")
    assert (tr.bin, tr.start, tr.rates.tolist(), tr.load.filled) == (60.0, 0.0, [1, 2, 3, 4], 0)


def test_max_gap_is_inclusive_and_can_be_lifted(tmp_path: Path) -> None:
    text = LAB + "0,0\n60,6\n3720,0\n"  # 60 rows missing between 60 and 3720: exactly one hour
    assert load(tmp_path, text).load.filled == 60
    with pytest.raises(SimInputError, match="longer than --max-gap 59m"):
        load(tmp_path, text, max_gap=59 * 60)
    assert load(tmp_path, LAB + "0,0\n60,6\n90060,0\n", max_gap=math.inf).load.filled == 1499


# ---- accepted: times -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t0", "t1", "kind"),
    [
        ("2024-05-01T00:00:00Z", "2024-05-01T00:05:00Z", "ISO 8601"),
        ("2024-05-01T02:00:00+02:00", "2024-05-01T00:05:00Z", "ISO 8601"),  # zones may differ per row
        ("2024-05-01T00:00:00", "2024-05-01T00:05:00", "ISO 8601"),  # no zone: UTC
        ("2024-05-01 00:00:00", "2024-05-01 00:05:00.000", "ISO 8601"),  # space for T, fractions
        ("2024-05-01T00:00:00.000000000Z", "2024-05-01T00:05:00.000000000Z", "ISO 8601"),  # ns fraction
        ("1714521600", "1714521900", "epoch s"),
        ("1714521600.0", "1714521900.0", "epoch s"),
        ("1714521600000", "1714521900000", "epoch ms"),
        ("1714521600000000", "1714521900000000", "epoch µs"),
        ("1714521600000000000", "1714521900000000000", "epoch ns"),
    ],
)
def test_absolute_times(tmp_path: Path, t0: str, t1: str, kind: str) -> None:
    tr = load(tmp_path, f"time,value\n{t0},4\n{t1},6\n")
    # Trace time counts from the first row; its wall clock goes to `epoch` (for schedules).
    assert (tr.bin, tr.start, tr.epoch, tr.rates.tolist(), tr.load.times) == (300.0, 0.0, MAY1, [4, 6], kind)


def test_a_window_on_an_absolute_trace_counts_from_the_first_row(tmp_path: Path) -> None:
    rows = "".join(f"{int(MAY1) + 3600 * i},{i}\n" for i in range(6))
    cut = select_window(load(tmp_path, "ts,value\n" + rows), 2 * 3600.0, 4 * 3600.0)
    assert (cut.start, cut.epoch, cut.rates.tolist()) == (7200.0, MAY1, [2, 3])


def test_the_trace_clock_is_the_default_start_for_schedules(tmp_path: Path) -> None:
    # 21:59:00Z, one row a minute; the schedule fires at 22:10 UTC, so the replay sees 5 replicas from
    # minute 11 to minute 13 with no --start given.
    first = MAY1 + 21 * 3600 + 59 * 60
    rows = "".join(f"{int(first) + 60 * i},1\n" for i in range(20))
    trace = tmp_path / "s.csv"
    trace.write_text("timestamp,rps\n" + rows)
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "groups:\n  - name: web\n    tier: docker\n    max: 10\n    template: {image: x}\n"
        "    metrics: [{type: requests_per_replica, target: 10}]\n"
        "    behavior: {scale_down: {stabilization_window: 0s}}\n"
        "    schedule: [{cron: '10 22 * * *', duration: 2m, min: 5}]\n"
    )
    opts = SimOptions(
        trace=str(trace), configs=[str(cfg)], capacity="20", delay="1s", oracle=False, plots=False
    )
    rep = run_simulation(opts)
    supply = rep.results[0].supply
    assert supply[11 * 60 + 30] == 5 and supply[16 * 60] == 1
    assert rep.info["model"]["epoch"] == first and rep.info["trace"]["first_time"] == "2024-05-01T21:59:00Z"


# ---- accepted: columns, delimiters, counts ---------------------------------------------------------------


def test_named_columns_counts_and_epoch_ms(tmp_path: Path) -> None:
    text = (
        "host,ts_ms,reqs,errors\n"
        "a,1714521600000,600,1\n"
        "a,1714521660000,1200,0\n"
        "a,1714521780000,2400,0\n"  # the row at +120 s is missing: counts 1800 -> 30 req/s
    )
    tr = load(tmp_path, text, time_col="ts_ms", value_col="reqs", counts=True)
    # counts per 60 s row / 60: 10, 20, (30 filled), 40
    assert (tr.bin, tr.epoch, tr.rates.tolist(), tr.load.filled) == (60.0, MAY1, [10, 20, 30, 40], 1)
    assert (tr.load.columns, tr.load.counts, tr.load.notes) == (("ts_ms", "reqs"), True, ())


def test_column_names_match_without_case(tmp_path: Path) -> None:
    tr = load(tmp_path, "When,Hits,Other\n0,1,9\n10,2,9\n", time_col="WHEN", value_col="hits")
    assert (tr.bin, tr.rates.tolist()) == (10.0, [1, 2])


def test_counts_without_the_flag_get_a_hint(tmp_path: Path) -> None:
    tr = load(tmp_path, "time,count\n0,600\n60,1200\n")
    assert tr.rates.tolist() == [600, 1200]  # rates unless told otherwise
    assert tr.load.notes == (
        "the value column is named 'count': if it holds requests per row, not per second, pass --counts",
    )
    assert load(tmp_path, "time,count\n0,600\n60,1200\n", counts=True).rates.tolist() == [10, 20]


@pytest.mark.parametrize(
    "text",
    [
        '"Time","A-series"\n"2024-05-01 00:00:00",4\n"2024-05-01 00:05:00",6\n',  # Grafana, quoted
        "timestamp;requests_per_second\n1714521600;4\n1714521900;6\n",  # semicolons
        "time\tvalue\n1714521600\t4\n1714521900\t6\n",  # tabs
        "1714521600,4\n1714521900,6\n",  # no header (VictoriaMetrics' /api/v1/export/csv)
        "\ufefftime,value\r\n# exported by a tool\r\n1714521600,4\r\n\r\n1714521900,6\r\n",  # BOM, CRLF, #
        "date,rate\n2024-05-01T00:00:00Z,4\n2024-05-01T00:05:00Z,6\n",
    ],
)
def test_headers_and_delimiters(tmp_path: Path, text: str) -> None:
    tr = load(tmp_path, text)
    assert (tr.bin, tr.epoch, tr.rates.tolist()) == (300.0, MAY1, [4, 6])


def test_a_headerless_file_takes_columns_by_position(tmp_path: Path) -> None:
    tr = load(tmp_path, "4,1714521600\n6,1714521900\n", time_col="2", value_col="1")
    assert (tr.bin, tr.epoch, tr.rates.tolist(), tr.load.columns) == (300.0, MAY1, [4, 6], None)


def test_two_unknown_columns_are_time_then_value(tmp_path: Path) -> None:
    tr = load(tmp_path, "minute,load\n0,4\n60,6\n")
    assert (tr.load.columns, tr.rates.tolist()) == (("minute", "load"), [4, 6])


# ---- accepted: Prometheus query_range JSON ---------------------------------------------------------------


def prom(values: list[list[Any]], **series: Any) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": series, "values": values}]},
    }


def test_prometheus_query_range(tmp_path: Path) -> None:
    doc = prom([[MAY1, "1"], [MAY1 + 15, "2"], [MAY1 + 45, "4"]], job="web")
    tr = load(tmp_path, json.dumps(doc), "p.json")
    # 15 s step, the sample at +30 s missing (Prometheus leaves out steps without data): (2 + 4) / 2 = 3.
    assert (tr.bin, tr.epoch, tr.start, tr.rates.tolist()) == (15.0, MAY1, 0.0, [1, 2, 3, 4])
    assert (tr.load.format, tr.load.times, tr.load.filled, tr.load.notes) == (
        "Prometheus JSON",
        "epoch s",
        1,
        ('series {job="web"}',),
    )


def test_prometheus_data_object_found_by_content_with_fractional_times(tmp_path: Path) -> None:
    data = prom([[MAY1 + 0.5, "2"], [MAY1 + 60.5, "4"]])["data"]
    tr = load(tmp_path, json.dumps(data, indent=2), "export.txt")  # no .json: the content says JSON
    assert (tr.bin, tr.epoch, tr.rates.tolist()) == (60.0, MAY1 + 0.5, [2, 4])


def test_prometheus_counts_from_increase(tmp_path: Path) -> None:
    tr = load(tmp_path, json.dumps(prom([[MAY1, "300"], [MAY1 + 300, "600"]])), "p.json", counts=True)
    assert tr.rates.tolist() == [1, 2]


# ---- refused: one line naming the row and the problem ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        (LAB + "0,1\n60,abc\n", {}, "a.csv:3: value must be a number (got 'abc')"),
        (LAB + "0,1\n60,-2\n", {}, "a.csv:3: value must be finite and >= 0 (got -2)"),
        (LAB + "0,1\n60,nan\n", {}, "a.csv:3: value must be finite and >= 0 (got nan)"),
        (LAB + "0,1\n60,1\n120,-inf\n", {}, "a.csv:4: value must be finite and >= 0 (got -inf)"),
        (LAB + "0,1\nyesterday,1\n", {}, "a.csv:3: unparseable time 'yesterday'"),
        (LAB + "0,1\ninf,1\n", {}, "a.csv:3: unparseable time 'inf' (not finite)"),
        (
            "time,value\n2024-05-01T00:00:00Z,1\n60,1\n",
            {},
            "a.csv:3: time '60' is not in the first row's format (ISO 8601, read as seconds)",
        ),
        (
            "time,value\n1714521600,1\n1714521660000,1\n",
            {},
            "a.csv:3: time '1714521660000' is not in the first row's format (epoch s, read as epoch ms)",
        ),
        ("", {}, "a.csv: empty file: fewer than 2 rows, a trace needs at least 2"),
        (LAB, {}, "a.csv: 0 rows with a value: a trace needs at least 2"),
        (LAB + "0,1\n", {}, "a.csv: 1 row with a value: a trace needs at least 2"),
        (LAB + "0,1\n60,\n", {}, "a.csv: 1 row with a value: a trace needs at least 2"),
        (LAB + "0,1\n0,2\n", {}, "a.csv: every row has the same time (0s)"),
        (
            LAB + "0,1\n",
            {"time_col": "ts"},
            "a.csv:1: --time-col ts: no such column (the header has: t_seconds, requests_per_second)",
        ),
        (
            LAB + "0,1\n",
            {"value_col": "rps"},
            "a.csv:1: --value-col rps: no such column (the header has: t_seconds, requests_per_second)",
        ),
        (
            "0,1\n60,2\n",
            {"value_col": "3"},
            "a.csv:1: --value-col 3: no such column (no header; 2 columns)",
        ),
        (
            "time,a,b\n0,1,2\n",
            {},
            "a.csv:1: which column holds the values? the header has: time, a, b (pick one with --value-col)",
        ),
        ("requests\n1\n2\n", {}, "a.csv:1: need a time column and a value column; found 1 column (requests)"),
        (
            LAB + "0,1\n60\n",
            {},
            "a.csv:3: expected 2 values like the header, got 1",
        ),
        (LAB + "0,1\n60,1,2\n", {}, "a.csv:3: expected 2 values like the header, got 3"),
        (
            LAB + "0,1\n60,1\n120,1\n150,1\n",
            {},
            "a.csv:5: time 150s is 50% of a step off the 1m grid of the other rows",
        ),
        (
            "time,value\n2024-05-01T00:00:00Z,1\n2024-05-01T00:05:00Z,1\n2024-05-01T02:10:00Z,1\n",
            {},
            "a.csv:4: 24 rows missing before this row (a gap of 2h after the row at 2024-05-01T00:05:00Z), "
            "longer than --max-gap 1h: pass a larger --max-gap to fill it",
        ),
        (
            LAB + "0,1\n60,1\n180,1\n",
            {"max_gap": 0.0},
            "a.csv:4: 1 row missing before this row (a gap of 1m after the row at 60s), longer than "
            "--max-gap 0s",
        ),
        (b"t_seconds,requests_per_second\n0,\xff\n", {}, "a.csv: not UTF-8 text"),
    ],
)
def test_refused(tmp_path: Path, text: str | bytes, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SimInputError) as info:
        load(tmp_path, text, **kw)
    got = str(info.value).replace(str(tmp_path) + "/", "")
    assert got.startswith(message), got
    assert "\n" not in got


def _bad_json(doc: Any) -> str:
    return doc if isinstance(doc, str) else json.dumps(doc)


@pytest.mark.parametrize(
    ("doc", "kw", "message"),
    [
        ('{"status": "success",\n "data": {', {}, "p.json:2: not valid JSON: Expecting property name"),
        ([1, 2], {}, "p.json: expected a Prometheus query_range response"),
        ({"foo": 1}, {}, "p.json: expected a Prometheus query_range response"),
        (
            {"status": "error", "errorType": "bad_data", "error": "parse error"},
            {},
            "p.json: the Prometheus response has status 'error' (bad_data: parse error)",
        ),
        (
            {"status": "success", "data": {"resultType": "vector", "result": []}},
            {},
            "p.json: resultType is 'vector': a trace needs a range query (/api/v1/query_range)",
        ),
        (
            {"resultType": "matrix", "result": []},
            {},
            "p.json: the result has 0 series, a trace is exactly one",
        ),
        (
            {
                "resultType": "matrix",
                "result": [
                    {"metric": {"__name__": "up", "instance": "a"}, "values": []},
                    {"metric": {"instance": "b"}, "values": []},
                ],
            },
            {},
            "p.json: the result has 2 series, a trace is exactly one (aggregate the query, e.g. "
            'sum(rate(...)), or select one series): up{instance="a"}; {instance="b"}',
        ),
        ({"resultType": "matrix", "result": [{"metric": {}}]}, {}, "p.json: data.result[0] has no 'values'"),
        (
            prom([[MAY1, "1"], [MAY1 + 60]]),
            {},
            'p.json: data.result[0].values[1]: expected a [time, "value"]',
        ),
        (prom([[MAY1, "1"], ["soon", "1"]]), {}, "p.json: data.result[0].values[1]: unparseable time"),
        (
            prom([[MAY1, "1"], [MAY1 + 60, "x"]]),
            {},
            "p.json: data.result[0].values[1]: value must be a number",
        ),
        (
            prom([[MAY1, "1"], [MAY1 + 60, "NaN"]]),
            {},
            "p.json: data.result[0].values[1]: value must be finite and >= 0 (got nan)",
        ),
        (
            prom([[MAY1, "1"], [MAY1 + 60, "+Inf"]]),
            {},
            "p.json: data.result[0].values[1]: value must be finite and >= 0 (got inf)",
        ),
        (
            prom([[MAY1, "1"], [MAY1 + 60, "-1"]]),
            {},
            "p.json: data.result[0].values[1]: value must be finite",
        ),
        (prom([[MAY1, "1"]]), {}, "p.json: 1 row with a value: a trace needs at least 2"),
        (prom([[MAY1, "1"], [MAY1 + 60, "1"]]), {"time_col": "t"}, "--time-col: only for CSV traces"),
    ],
)
def test_refused_json(tmp_path: Path, doc: Any, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SimInputError) as info:
        load(tmp_path, _bad_json(doc), "p.json", **kw)
    got = str(info.value).replace(str(tmp_path) + "/", "")
    assert got.startswith(message), got
    assert "\n" not in got


# ---- the command: what it reports, and errors through the usual path --------------------------------------


def test_the_summary_reports_every_repair(tmp_path: Path) -> None:
    trace = tmp_path / "e.csv"
    trace.write_text(
        "time,requests\n"
        "2024-05-01T00:10:00Z,9000\n"  # out of order: earlier rows follow
        "2024-05-01T00:00:00Z,3000\n"
        "2024-05-01T00:05:00Z,6000\n"
        "2024-05-01T00:05:00Z,4500\n"  # duplicate: this one is kept
        "2024-05-01T00:20:00Z,3000\n"  # 00:15 missing: (9000 + 3000) / 2 = 6000
    )
    cfg = tmp_path / "g.yaml"
    cfg.write_text("groups:\n  - {name: web, tier: docker, max: 10, template: {image: x}}\n")
    rep = run_simulation(
        SimOptions(
            trace=str(trace), configs=[str(cfg)], counts=True, capacity="10", plots=False, oracle=False
        )
    )
    t = rep.info["trace"]
    assert (t["rows"], t["filled"], t["duplicates"], t["out_of_order"], t["counts"]) == (5, 1, 1, 3, True)
    assert (t["mean_rps"], t["peak_rps"]) == ((10 + 15 + 30 + 20 + 10) / 5, 30.0)
    line = info_lines(rep.info)[1]
    assert "1 missing row filled (linear, gaps up to 1h)" in line
    assert "1 duplicate time (kept the last), 3 rows out of order (sorted)" in line
    assert "counts per 300s ÷ 300" in line and "ISO 8601 from 2024-05-01T00:00:00Z" in line


def tierscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierscale", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_reads_an_export_with_gaps(tmp_path: Path) -> None:
    trace = tmp_path / "export.csv"
    rows = [f"{int(MAY1) + 300 * i},{3000 + 300 * (i % 5)}" for i in range(30) if i not in (7, 19)]
    trace.write_text("ts,hits,host\n" + "".join(f"{r},web1\n" for r in rows))
    cfg = tmp_path / "g.yaml"
    cfg.write_text("groups:\n  - {name: web, tier: docker, max: 10, template: {image: x}}\n")
    out = tmp_path / "o"
    r = tierscale(
        "simulate", "--trace", str(trace), "--config", str(cfg), "--out", str(out), "--no-plots",
        "--value-col", "hits", "--counts", "--max-gap", "10m",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "2 missing rows filled (linear, gaps up to 10m)" in r.stdout
    data = json.loads((out / "summary.json").read_text())
    assert (data["trace"]["filled"], data["trace"]["rows"], data["trace"]["bin_seconds"]) == (2, 30, 300.0)
    assert "2 missing rows filled" in (out / "table.txt").read_text()


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (LAB + "0,1\n60,x\n", [], "t.csv:3: value must be a number (got 'x')"),
        (LAB + "0,1\n60,1\n", ["--time-col", "when"], "t.csv:1: --time-col when: no such column"),
        (
            json.dumps({"resultType": "matrix", "result": [{"values": []}, {"values": []}, {"values": []}]}),
            [],
            "t.csv: the result has 3 series",
        ),
        (LAB + "0,1\n60,1\n", ["--max-gap", "soon"], "--max-gap: expected a duration like 500ms"),
    ],
)
def test_cli_refusals_are_one_line_and_exit_2(
    tmp_path: Path, text: str, args: list[str], message: str
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(text)
    cfg = tmp_path / "g.yaml"
    cfg.write_text("groups:\n  - {name: web, tier: docker, max: 10, template: {image: x}}\n")
    r = tierscale(
        "simulate", "--trace", str(trace), "--config", str(cfg), "--out", str(tmp_path / "o"), *args
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0].replace(str(tmp_path) + "/", ""), r.stderr
    assert "Traceback" not in r.stderr


# ---- 28 days of 1-minute rows, 5 % of them lost ------------------------------------------------------------

# Cheap to simulate on purpose: the HPA engine's cost grows with passes × replicas (a 5 s sync period over
# 28 days is ~480k passes, one to three minutes per config on the lab machine), so sync every 2 minutes
# and at most 10 replicas.
CONFIG = (
    "groups:\n  - name: web\n    tier: docker\n    min: 1\n    max: 10\n    sync_period: 120s\n"
    "    template: {{image: x}}\n    balancer: {{type: none}}\n{body}"
)
THRESHOLD = (
    "    policy: threshold\n    metrics: [{type: cpu, target: 70}]\n"
    "    threshold: {metric: cpu, upper: 70, lower: 20, step: 1, cooldown: 15s}\n"
)
HPA = (
    "    policy: hpa\n    metrics: [{type: cpu, target: 68}]\n    tolerance: 0\n"
    "    behavior: {scale_down: {stabilization_window: 120s}}\n"
)


def test_28_days_with_5_percent_of_rows_missing_score_within_1_percent(tmp_path: Path) -> None:
    started = time.perf_counter()
    rng = np.random.default_rng(28)
    n = 28 * 1440
    t = np.arange(n) * 60
    # A daily wave and a 90-minute one (so the group moves many times a day on the load, not on the
    # noise), requests drawn per minute as a Poisson count around ~2000 req/s.
    lam = 2000 * (1 + 0.6 * np.sin(2 * np.pi * t / 86400) + 0.2 * np.sin(2 * np.pi * t / 5400))
    per_minute = rng.poisson(lam * 60)
    full = tmp_path / "full.csv"
    rows = zip(t.tolist(), per_minute.tolist(), strict=True)
    full.write_text(LAB + "".join(f"{a},{c / 60!r}\n" for a, c in rows))
    drop = rng.choice(np.arange(1, n - 1), size=n // 20, replace=False)  # first and last rows stay
    keep = np.setdiff1d(np.arange(n), drop)
    # The lossy copy as a monitoring export would have it: ISO times, requests per row.
    holes = tmp_path / "holes.csv"
    stamps = np.datetime_as_string((int(MAY1) + t[keep]).astype("datetime64[s]"))
    lossy = zip(stamps, per_minute[keep].tolist(), strict=True)
    holes.write_text("time,requests\n" + "".join(f"{s}Z,{c}\n" for s, c in lossy))
    configs = []
    for name, body in (("threshold", THRESHOLD), ("hpa", HPA)):
        (tmp_path / f"{name}.yaml").write_text(CONFIG.format(body=body))
        configs.append(str(tmp_path / f"{name}.yaml"))

    def replay(path: Path, **kw: Any) -> Any:
        # A fixed capacity: `auto` sizes replicas from the trace's 99.9th percentile, which a filled row
        # (never an extreme) nudges, and that would compare two capacity models instead of two traces.
        return run_simulation(
            SimOptions(
                trace=str(path), configs=configs, capacity="450", delay="vm", plots=False, oracle=False, **kw
            )
        )

    a, b = replay(full), replay(holes, counts=True)
    assert (b.info["trace"]["filled"], b.info["trace"]["rows"], a.info["trace"]["rows"]) == (n // 20, n, n)
    base_a, base_b = a.results[0].metrics, b.results[0].metrics
    for ra, rb in zip(a.results, b.results, strict=True):
        # The score of the same config on the two traces, and its score against the baseline on each.
        assert score(rb.metrics, ra.metrics) == pytest.approx(1.0, rel=0.01), ra.name
        assert score(rb.metrics, base_b) == pytest.approx(score(ra.metrics, base_a), rel=0.01), ra.name
        assert rb.metrics["replica_hours"] == pytest.approx(ra.metrics["replica_hours"], rel=0.01)
    assert time.perf_counter() - started < 60  # ~12 s on the lab machine; far more means a slow path
