"""examples/prometheus checked by promtool, its rules against the metrics tierscale really exports, and a
real Prometheus scraping a running demo workload."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.e2e import free_port, wait_for
from helpers.prometheus import EXAMPLES, require_promtool, running_prometheus, scrape_job
from tierscale.controller.telemetry import Telemetry

pytestmark = pytest.mark.e2e

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), *args], capture_output=True, text=True, timeout=60, cwd=EXAMPLES
    )


def test_promtool_check_config_accepts_the_example() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in done.stdout
    assert "SUCCESS: 1 rule files found" in done.stdout  # rules.yml, found relative to the config


def test_promtool_check_rules_accepts_the_rules() -> None:
    done = promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_promtool_test_rules_passes_every_case() -> None:
    done = promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout


def _exported_names() -> set[str]:
    """Every sample name tierscale's /metrics can show: a registry with each series created, parsed back."""
    from prometheus_client import generate_latest

    tm = Telemetry()
    tm.init_group("web", "process")
    tm.metric_up.labels("web", "cpu").set(1)
    text = generate_latest(tm.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_rules_use_only_metrics_tierscale_exports() -> None:
    # promtool cannot know a misspelt metric: the rule is valid and simply never fires.
    text = (EXAMPLES / "rules.yml").read_text()
    exprs = "\n".join(re.findall(r"expr: (.*(?:\n {10,}\S.*)*)", text))
    used = set(re.findall(r"\btierscale_[a-z_]+\b", exprs))
    assert {"tierscale_metric_up", "tierscale_balancer_reloads_total"} <= used, used
    missing = used - _exported_names()
    assert not missing, f"rules.yml uses metrics tierscale does not export: {missing}"
    # The job the controller alert looks for is the one prometheus.yml scrapes it as.
    assert 'up{job="tierscale"}' in exprs
    assert "job_name: tierscale\n" in (EXAMPLES / "prometheus.yml").read_text()


@pytest.fixture
def workload() -> Iterator[str]:
    """A demo workload process on a free loopback port, as the process tier starts it; its address."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierscale.workload", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    addr = f"127.0.0.1:{port}"
    try:
        wait_for(
            lambda: proc.poll() is not None or _get(f"http://{addr}/healthz") == 200, 15, what="workload up"
        )
        assert proc.poll() is None, f"the workload exited {proc.returncode}"
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _get(url: str) -> int:
    try:
        with _OPENER.open(url, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except OSError:
        return 0


def test_a_real_prometheus_scrapes_the_workload_and_sees_its_counter_rise(workload: str) -> None:
    counter = 'tierscale_demo_requests_total{job="workload",code="200",path="/work"}'
    with running_prometheus([scrape_job("workload", [workload])]) as prom:
        wait_for(lambda: prom.value('up{job="workload"}') == 1, 20, what="the workload scraped and up")
        # The /work series is exported at 0 before the first request, so Prometheus has it already.
        before = wait_for(lambda: prom.query(counter), 10, what="the /work counter in Prometheus")
        assert float(before[0]["value"][1]) == 0
        assert before[0]["metric"]["instance"] == workload
        for _ in range(25):
            assert _get(f"http://{workload}/work?ms=1") == 200
        # A scrape after the requests shows all of them: the counter is bumped before each response goes.
        wait_for(lambda: prom.value(counter) == 25, 20, what="the counter at 25 in Prometheus")
        # ...and rate() over it, what a `prometheus` scaling metric queries, is positive.
        rate = prom.value(f"sum(rate({counter}[10s]))")
        assert rate is not None and rate > 0, rate
        assert prom.value('tierscale_demo_requests_in_flight{job="workload"}') is not None
