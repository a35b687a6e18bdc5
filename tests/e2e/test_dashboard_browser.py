"""The dashboard in a real browser: headless Chromium from Debian, driven by Playwright (no browser download).

A process-tier group scales out under load while the page is open; the test reads what the page drew
(point counts of the SVG charts, the replica table, the timeline) and saves a screenshot to artifacts/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO
from helpers.api import api_config, cleanup, wait_api
from helpers.ci import require
from helpers.e2e import free_port, wait_for
from tierscale.loadgen import LoadRunner
from tierscale.service import BackgroundController

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "artifacts"


def _points(group: Any, chart: str) -> int:
    return int(group.locator(f'figure[data-chart="{chart}"] svg').get_attribute("data-points") or 0)


def test_dashboard_follows_a_group_scaling_under_load(tmp_path: Path) -> None:
    require(os.path.exists(CHROMIUM), "Debian chromium (scripts/setup/browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (pip install -e '.[test]')")
    port = free_port()
    cfg = api_config(
        tmp_path / "state",
        port,
        min_=1,
        max_=4,
        metrics="[{type: requests_per_replica, target: 5}, {type: cpu, target: 60}]",
    )
    base = f"http://127.0.0.1:{port}"
    url = f"http://{cfg.groups[0].balancer.listen}/work?ms=5"
    try:
        with BackgroundController(cfg) as bg, sync_playwright() as pw:
            wait_for(lambda: bg.status("web")["ready"] >= 1, 30, what="first replica ready")
            wait_api(base)
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh profile every run
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 1400, "height": 1100},
            )
            try:
                page = ctx.new_page()
                foreign: list[str] = []
                errors: list[str] = []
                page.on("request", lambda r: None if r.url.startswith(base) else foreign.append(r.url))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(base + "/")
                group = page.locator('section[data-group="web"]')
                page.wait_for_selector(
                    'section[data-group="web"] figure[data-chart="replicas"] svg[data-points]'
                )
                polls_before = int(page.get_attribute("body", "data-polls") or 0)
                points_before = _points(group, "replicas")
                events_before = group.locator(".timeline li").count()
                assert group.locator("h2").inner_text() == "web"

                # 20 req/s against 5 per replica: the policy goes to max (4) within a few passes.
                with LoadRunner(url, 20, 60) as runner:
                    replicas_fig = group.locator('figure[data-chart="replicas"]')
                    wait_for(
                        lambda: int(replicas_fig.get_attribute("data-desired") or 0) >= 3,
                        40,
                        what="the page shows the scale-out",
                    )
                    wait_for(
                        lambda: (
                            group.locator('.timeline li[data-kind="decision"]').count() >= 1
                            and group.locator('.timeline li[data-kind="replica_ready"]').count() >= 2
                        ),
                        20,
                        what="decision and new replicas in the timeline",
                    )
                    wait_for(
                        lambda: group.locator("tbody tr[data-replica] td.state.ready").count() >= 3,
                        30,
                        what="ready replicas in the table",
                    )
                    wait_for(
                        lambda: (
                            _points(group, "traffic") > 0
                            and _points(group, "metric-requests_per_replica") > 0
                        ),
                        20,
                        what="traffic and metric charts drawn",
                    )
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                    runner.stop()
                assert runner.result(timeout=30).failed == 0

                assert int(page.get_attribute("body", "data-polls") or 0) > polls_before
                assert _points(group, "replicas") > points_before
                assert group.locator(".timeline li").count() > events_before
                assert _points(group, "provision") >= 3  # the first replica and at least two new ones
                why = group.locator(".why").inner_text()
                assert why.startswith("Why:") and "→" in why
                target_legend = group.locator('figure[data-chart="metric-requests_per_replica"] figcaption')
                assert "target 5" in target_legend.inner_text()
                assert page.locator("#conn").inner_text() == "live"
                assert (ARTIFACTS / "dashboard.png").stat().st_size > 20_000
                assert not foreign, f"the page loaded something from elsewhere: {foreign}"
                assert not errors, errors
            finally:
                ctx.close()
    finally:
        cleanup(cfg)
