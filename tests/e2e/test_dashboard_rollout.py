"""The dashboard's rollout strip in a real browser (Debian's headless Chromium, driven by Playwright).

The page is served by the real API server, on a controller whose group runs on the fake tier: its passes
are run by the test (time is a `ManualClock`), so the group sits in each rollout state for as long as the
page needs to show it. A template change with `canary: 1` stops at awaiting_promotion; the test reads the
strip (state, target ← previous, the bar per revision, the CLI commands), the revision column of the
replica table, then pauses, resumes and promotes through the API and sees the strip follow and go away;
a third template undone at its canary shows the rollback (the rejected revision in red) and its result.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from helpers import REPO
from helpers.api import http
from helpers.ci import require
from helpers.e2e import free_port, wait_for
from tierscale.api.server import ApiServer
from tierscale.balancer.fake import FakeBalancer
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.controller.clock import ManualClock
from tierscale.controller.runner import Controller
from tierscale.providers.fake import FakeProber, FakeProvider

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
TOKEN = "dashboard-rollout-" + os.urandom(6).hex()
T = TypeVar("T")


def config_doc(state_dir: Path, api_port: int, command: list[str]) -> dict[str, Any]:
    return {
        "api": {"listen": f"127.0.0.1:{api_port}", "token_env": "TIERSCALE_DASHBOARD_ROLLOUT_NEVER_SET"},
        "state_dir": str(state_dir),
        "groups": [
            {
                "name": "web",
                "tier": "process",
                "min": 2,
                "max": 4,
                "sync_period": "1s",
                "health": {"interval": "1s"},
                "metrics": [{"type": "cpu", "target": 50}],
                "balancer": {"type": "none"},
                "rollout": {
                    "max_surge": 1,
                    "max_unavailable": 0,
                    "min_healthy_time": "1s",
                    "healthy_deadline": "1m",
                    "canary": 1,
                },
                "template": {"command": command},
            }
        ],
    }


def with_command(doc: dict[str, Any], command: list[str]) -> bytes:
    """The config file (JSON is YAML) with the group's template changed: a new revision."""
    group = {**doc["groups"][0], "template": {"command": command}}
    return json.dumps({**doc, "groups": [group]}).encode()


class FakeController:
    """A controller on the fake tier with its API, on an event loop of its own thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.doc = config_doc(tmp_path / "state", self.port, ["true"])
        # Events are listed by the page for the last 15 minutes of wall time: start the clock now.
        self.clock = ManualClock(start=time.time())
        self.tier: FakeProvider | None = None
        self.controller = Controller(
            load_config_text(json.dumps(self.doc)),
            clock=self.clock,
            provider_factory=self._provider,
            balancer_factory=lambda g, sd: FakeBalancer(),
            prober_factory=lambda g, p: FakeProber(p),
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-controller", daemon=True)
        self.server: ApiServer | None = None
        self.started: list[Any] = []

    def _provider(self, g: Any, state_dir: Path, sink: Any) -> FakeProvider:
        revision = template_revision(g.template)
        if self.tier is None:
            self.tier = FakeProvider(g.name, revision=revision, clock=self.clock.now, cpu_percent=50.0)
            return self.tier
        return self.tier.for_revision(revision)  # a new template: the same fake tier, another revision

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()

        async def start() -> None:
            server = ApiServer(
                self.controller.handle(),
                self.controller.config.api,
                listen=f"127.0.0.1:{self.port}",
                token=TOKEN,
            )
            await server.start()
            self.server = server
            for gc in self.controller.groups.values():
                self.started.append(gc)
                await gc.start()

        self.run(start)

    def tick(self, n: int = 1) -> None:
        async def tick() -> None:
            for _ in range(n):
                for gc in list(self.controller.groups.values()):
                    await gc.reconcile()
                    await gc.settle()
                    await gc.health_rounds.probe_all()
                self.clock.advance(1)

        self.run(tick)

    def rollout(self) -> dict[str, Any]:
        async def view() -> dict[str, Any]:  # read on the loop, between passes
            return self.controller.groups["web"].rollout_view().model_dump(mode="json")

        return self.run(view)

    def tick_until(
        self, check: Callable[[dict[str, Any]], bool], what: str, passes: int = 20
    ) -> dict[str, Any]:
        for _ in range(passes):
            view = self.rollout()
            if check(view):
                return view
            self.tick()
        raise AssertionError(f"{what}: not after {passes} passes (rollout: {self.rollout()})")

    def post(self, path: str, raw: bytes = b"") -> Any:
        reply = http(self.base, "POST", path, raw=raw, token=TOKEN)
        assert reply.status == 200, (path, reply.status, reply.body)
        return reply.json

    def stop(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                await self.server.stop()
            for gc in self.started:
                await gc.shutdown()

        try:
            if self.thread.is_alive():
                self.run(stop, timeout=20)
        finally:
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
            self.loop.close()
            self.controller.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeController]:
    fc = FakeController(tmp_path)
    try:
        fc.start()
        yield fc
    finally:
        fc.stop()


def test_dashboard_shows_a_rollout_while_it_runs(fake: FakeController, tmp_path: Path) -> None:
    require(os.path.exists(CHROMIUM), "Debian chromium (scripts/setup/browser.sh)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        require(False, "playwright (pip install -e '.[test]')")

    fake.tick(3)
    old = fake.rollout()
    assert old["state"] == "complete" and old["replicas"] == {old["target"]: 2}, old
    old_rev = old["target"]

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1100},
        )
        try:
            page = ctx.new_page()
            foreign: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(fake.base) else foreign.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(fake.base + "/")
            group = page.locator('section[data-group="web"]')
            strip = group.locator(".rollout")
            rows = group.locator("tbody tr[data-replica]")
            page.wait_for_selector("body[data-polls]", state="attached")  # (the CSP forbids eval)

            # Nothing to roll out: no strip, every replica on the group's revision.
            expect(strip).to_be_hidden()
            expect(rows).to_have_count(2)
            expect(group.locator(f'td.rev[data-revision="{old_rev}"]')).to_have_count(2)
            expect(group.locator("td.rev.off")).to_have_count(0)

            # A new template with one canary: the rollout stops once the canary is healthy.
            applied = fake.post("/api/config", with_command(fake.doc, ["sleep", "60"]))
            assert applied["rollouts"] == ["web"], applied
            view = fake.tick_until(lambda v: v["state"] == "awaiting_promotion", "canary healthy")
            new_rev = view["target"]
            assert new_rev != old_rev and view["previous"] == old_rev
            assert view["replicas"] == {new_rev: 1, old_rev: 2}, view

            expect(strip).to_be_visible(timeout=10_000)
            expect(strip).to_have_attribute("data-state", "awaiting_promotion", timeout=10_000)
            expect(strip).to_have_attribute("data-target", new_rev)
            expect(strip.locator(".rstate")).to_have_text("awaiting promotion")
            expect(strip.locator(".revs")).to_contain_text(f"{new_rev} ← {old_rev}")
            expect(strip.locator(".rcounts")).to_contain_text("1/2 updated")
            expect(strip.locator(".rcounts")).to_contain_text("1 healthy")
            expect(strip.locator(".rcounts")).to_contain_text("canary 1")
            new_seg = strip.locator(f'.rbar .seg.new[data-revision="{new_rev}"]')
            old_seg = strip.locator(f'.rbar .seg.old[data-revision="{old_rev}"]')
            expect(new_seg).to_have_attribute("data-count", "1")
            expect(old_seg).to_have_attribute("data-count", "2")
            new_box, old_box = new_seg.bounding_box(), old_seg.bounding_box()
            assert new_box and old_box and old_box["width"] > new_box["width"] * 1.5, (new_box, old_box)
            assert new_seg.evaluate("e => getComputedStyle(e).backgroundColor") != old_seg.evaluate(
                "e => getComputedStyle(e).backgroundColor"
            )
            expect(strip.locator(".rreason")).to_contain_text("template changed")
            api = f"--api {fake.base}"  # not the CLI's default address: the command names it
            expect(strip.locator(".rcmds code").first).to_have_text(f"tierscale rollout promote web {api}")
            expect(strip.locator(".rcmds")).to_contain_text(f"tierscale rollout undo web {api}")
            # The replica table: the canary on the new revision, the two others marked as old.
            expect(rows).to_have_count(3)
            expect(group.locator(f'td.rev.off[data-revision="{old_rev}"]')).to_have_count(2)
            expect(group.locator(f'td.rev:not(.off)[data-revision="{new_rev}"]')).to_have_count(1)
            expect(group.locator("td.rev.off .tag").first).to_have_text("old")
            expect(group.locator(".chips")).to_contain_text(f"rev {new_rev}")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-rollout.png"), full_page=True)

            # Paused: the strip says so and offers resume instead of promote.
            assert fake.post("/api/groups/web/rollout/pause")["state"] == "paused"
            expect(strip).to_have_attribute("data-state", "paused", timeout=10_000)
            expect(strip.locator(".rcmds code").first).to_have_text(f"tierscale rollout resume web {api}")
            assert fake.post("/api/groups/web/rollout/resume")["state"] == "awaiting_promotion"
            expect(strip).to_have_attribute("data-state", "awaiting_promotion", timeout=10_000)

            # Promoted: the rollout goes on to the end, and the strip goes away.
            assert fake.post("/api/groups/web/rollout/promote")["state"] == "progressing"
            fake.tick_until(
                lambda v: v["state"] == "complete" and v["replicas"] == {new_rev: 2}, "rollout complete"
            )
            expect(strip).to_be_hidden(timeout=10_000)
            expect(rows).to_have_count(2, timeout=10_000)
            expect(group.locator(f'td.rev[data-revision="{new_rev}"]')).to_have_count(2)
            expect(group.locator("td.rev.off")).to_have_count(0)
            done = group.locator('.timeline li[data-kind="rollout_complete"] .kind')
            wait_for(lambda: done.count() >= 1, 10, what="rollout_complete in the timeline")
            assert "good" in (done.first.get_attribute("class") or "")
            assert group.locator('.timeline li[data-kind="rollout_started"]').count() >= 1

            # Another template, undone at its canary: the strip shows the rollback, the header the result.
            fake.post("/api/config", with_command(fake.doc, ["sleep", "61"]))
            third_rev = fake.tick_until(lambda v: v["state"] == "awaiting_promotion", "second canary")[
                "target"
            ]
            expect(strip).to_have_attribute("data-state", "awaiting_promotion", timeout=10_000)
            expect(strip).to_have_attribute("data-target", third_rev)
            undone = fake.post("/api/groups/web/rollout/undo")
            assert (undone["state"], undone["target"], undone["rejected"]) == (
                "rolling_back",
                new_rev,
                third_rev,
            )
            expect(strip).to_have_attribute("data-state", "rolling_back", timeout=10_000)
            expect(strip.locator(f'.rbar .seg.rejected[data-revision="{third_rev}"]')).to_have_attribute(
                "data-count", "1"
            )
            expect(strip.locator(f'.rbar .seg.new[data-revision="{new_rev}"]')).to_have_attribute(
                "data-count", "2"
            )
            expect(strip.locator(".rcmds code").first).to_have_text(f"tierscale rollout pause web {api}")
            fake.tick_until(
                lambda v: v["state"] == "complete" and v["replicas"] == {new_rev: 2}, "rolled back"
            )
            expect(strip).to_be_hidden(timeout=10_000)
            expect(group.locator(".chips")).to_contain_text(f"rolled back from {third_rev}")
            assert not foreign, f"the page loaded something from elsewhere: {foreign}"
            assert not errors, errors
        finally:
            ctx.close()
