"""A tier: openstack group driven by the real controller against a real Nova (openstack-lite, fake driver).

Instances there have no network, so groups boot with `networks: none`, have no balancer and become ready
by `health.type: console` (the fake driver's console always reads "FAKE CONSOLE OUTPUT"). The HTTP
end-to-end traffic test of this tier is out of reach on this cloud.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers.e2e import CliControllers, events, free_port, wait_for, wait_passes
from helpers.openstack_testcloud import (
    FAKE_DRIVER,
    CloudUnderTest,
    cloud_under_test,
    ensure_compute_driver,
    huge_flavor,
    member_project,
    sweep_session_servers,
    temporary_flavor,
)
from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.eventstore import EventStore
from tierscale.service import BackgroundController
from tierscale.views import read_statuses

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudUnderTest]:
    tc = cloud_under_test()
    ensure_compute_driver(tc, FAKE_DRIVER)
    yield tc
    sweep_session_servers()


def write_config(
    tc: CloudUnderTest,
    state_dir: Path,
    name: str,
    min_: int = 1,
    max_: int = 3,
    metrics: str = "[{type: requests_per_replica, target: 10}]",
    template: str = "",
    cloud: str | None = None,
    extra: str = "",
) -> tuple[Any, Path]:
    text = f"""\
state_dir: {state_dir}
api: {{listen: "127.0.0.1:{free_port()}"}}
groups:
  - name: {name}
    tier: openstack
    min: {min_}
    max: {max_}
    sync_period: 1s
    template:
      cloud: {cloud or tc.name}
      image: {tc.image}
      flavor: {tc.flavor}
      networks: none
      boot_timeout: 120s
{template}
    health: {{type: console, console_marker: {tc.marker!r}, interval: 500ms, startup_grace: 60s}}
    metrics: {metrics}
    initial_readiness_delay: 1s
    behavior:
      scale_down:
        stabilization_window: 2s
        policies: [{{type: Percent, value: 100, period: 1s}}]
    drain_timeout: 1s
    balancer: {{type: none}}
{extra}"""
    path = state_dir.parent / f"{name}.yaml"
    path.write_text(text)
    return load_config_text(text, str(path)), path


def ready_ids(bg: BackgroundController, group: str) -> set[str]:
    return {r["id"] for r in bg.status(group)["replicas"] if r["state"] == "ready"}


def nova_replicas(tc: CloudUnderTest, group: str, all_projects: bool = False) -> dict[str, Any]:
    """replica id -> server, from Nova's point of view."""
    return {s.metadata["tierscale_replica"]: s for s in tc.servers(group=group, all_projects=all_projects)}


def test_manual_scale_1_3_1_replace_vanished_and_down_spares_others(
    cloud: CloudUnderTest, tmp_path: Path
) -> None:
    name = cloud.group_name("manual")
    state_dir = tmp_path / "state"
    cfg, _ = write_config(cloud, state_dir, name)
    image = cloud.conn.image.find_image(cloud.image, ignore_missing=False)
    flavor = cloud.conn.compute.find_flavor(cloud.flavor, ignore_missing=False)
    # A hand-made server (named like ours, but unmarked) and one of another group: never touched.
    bystanders = [
        cloud.conn.compute.create_server(
            name=f"{name}-r-byhand", image_id=image.id, flavor_id=flavor.id, networks="none"
        ),
        cloud.conn.compute.create_server(
            name=f"{name}x-r-1",
            image_id=image.id,
            flavor_id=flavor.id,
            networks="none",
            metadata={"tierscale_group": f"{name}x", "tierscale_replica": "r-1"},
        ),
    ]
    try:
        with BackgroundController(cfg) as bg:
            gc = bg.controller.groups[name]  # type: ignore[union-attr]
            wait_for(lambda: len(ready_ids(bg, name)) == 1, 60, what="first server ready")
            bg.call(gc.set_manual, 3)
            wait_for(lambda: len(ready_ids(bg, name)) == 3, 90, what="three servers ready")
            ids = ready_ids(bg, name)
            servers = nova_replicas(cloud, name)
            assert set(servers) == ids
            for rid, s in servers.items():
                assert s.name == f"{name}-{rid}" and s.status == "ACTIVE"
                assert s.metadata["tierscale_group"] == name

            bg.call(gc.set_manual, 1)
            wait_for(lambda: len(nova_replicas(cloud, name)) == 1, 90, what="scale in to one server in Nova")
            wait_for(lambda: len(bg.status(name)["replicas"]) == 1, 30, what="controller sees one")
            (survivor,) = nova_replicas(cloud, name).items()
            assert survivor[0] in ids

            # Deleted behind the controller's back: it notices and replaces it.
            cloud.delete_servers([survivor[1]])
            wait_for(
                lambda: (r := ready_ids(bg, name)) and survivor[0] not in r,
                90,
                what="vanished server replaced",
            )
        replaced = [e for e in events(state_dir, name, "replica_replaced") if e.replica == survivor[0]]
        assert replaced and replaced[0].data["reason"] == "vanished"
        assert len(nova_replicas(cloud, name)) == 1

        report = down(cfg)
        assert report == [f"{name}: deleted 1 replica(s), balancer stopped"]
        assert nova_replicas(cloud, name) == {}
        left = {s.id: s.status for s in cloud.conn.compute.servers() if s.id in {b.id for b in bystanders}}
        assert left == {b.id: "ACTIVE" for b in bystanders}
    finally:
        cloud.cleanup_group(name)
        cloud.delete_servers(bystanders)


class PromStub:
    """A Prometheus query API answering every instant query with one value the test sets."""

    def __init__(self) -> None:
        self.value = 0.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(
                    {
                        "status": "success",
                        "data": {
                            "resultType": "vector",
                            "result": [{"metric": {}, "value": [time.time(), str(stub.value)]}],
                        },
                    }
                ).encode()
                self.send_response(200 if self.path.startswith("/api/v1/query") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_policy_scales_1_3_1_on_a_metric(cloud: CloudUnderTest, tmp_path: Path) -> None:
    name = cloud.group_name("policy")
    state_dir = tmp_path / "state"
    prom = PromStub()
    prom.value = 8.0  # 8 / 10 per replica → 1 replica
    query = "sum(rate(http_requests_total[1m]))"
    metrics = f"[{{type: prometheus, url: '{prom.url}', query: '{query}', target_per_replica: 10}}]"
    cfg, _ = write_config(cloud, state_dir, name, metrics=metrics)
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: len(ready_ids(bg, name)) == 1, 60, what="one server ready")
            prom.value = 30.0  # → 3 replicas
            wait_for(lambda: len(ready_ids(bg, name)) == 3, 90, what="policy scaled out to three")
            assert len(nova_replicas(cloud, name)) == 3
            prom.value = 9.0  # → back to 1 after the 2 s stabilization window
            wait_for(lambda: len(nova_replicas(cloud, name)) == 1, 90, what="policy scaled in to one")
            wait_for(lambda: bg.status(name)["current"] == 1, 30, what="controller at one")
        scaled = [(e.data["current"], e.data["desired"]) for e in events(state_dir, name, "scaled")]
        assert (1, 3) in scaled and scaled[-1][1] == 1
        store = EventStore(state_dir / "events.db")
        try:
            reasons = [d.reason for d in store.decisions(name) if d.desired == 3 and d.current == 1]
        finally:
            store.close()
        assert reasons and "prometheus" in reasons[0]
    finally:
        prom.close()
        down(cfg)
        cloud.cleanup_group(name)


def test_controller_sigkill_then_restart_adopts_every_server(cloud: CloudUnderTest, tmp_path: Path) -> None:
    name = cloud.group_name("adopt")
    state_dir = tmp_path / "state"
    cfg, path = write_config(cloud, state_dir, name, min_=3, max_=3)
    try:
        with CliControllers(str(path), stop_timeout=60) as runs:
            first = runs.start()
            wait_for(
                lambda: any(st["group"] == name and st["ready"] == 3 for st in read_statuses(state_dir)),
                90,
                what="three servers ready",
            )
            before = {rid: s.id for rid, s in nova_replicas(cloud, name).items()}
            assert len(before) == 3
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            restarted_at = time.time()
            runs.start()
            wait_for(
                lambda: (
                    len([e for e in events(state_dir, name, "replica_adopted") if e.ts >= restarted_at]) == 3
                ),
                60,
                what="three adoptions",
            )
            wait_for(
                lambda: any(
                    st["group"] == name and st["ready"] == 3 and st["updated"] > restarted_at
                    for st in read_statuses(state_dir)
                ),
                60,
                what="adopted servers ready again",
            )
            # Several passes of the new controller: long enough for duplicates to appear if adoption failed.
            wait_passes(state_dir, name, 4, at_least=4)
            after = {rid: s.id for rid, s in nova_replicas(cloud, name).items()}
            assert after == before
            assert [e for e in events(state_dir, name, "replica_created") if e.ts >= restarted_at] == []
    finally:
        down(cfg)
        cloud.cleanup_group(name)
    assert nova_replicas(cloud, name) == {}


def test_error_servers_are_replaced_with_backoff(cloud: CloudUnderTest, tmp_path: Path) -> None:
    """A flavor no host can take: every server ends in ERROR ("No valid host"), is deleted, and the next
    attempt waits longer each time; the controller keeps running."""
    name = cloud.group_name("novalid")
    state_dir = tmp_path / "state"
    gen = huge_flavor(cloud)
    flavor = next(gen)
    cfg, _ = write_config(cloud, state_dir, name)
    cfg.groups[0].template.flavor = flavor
    try:
        with BackgroundController(cfg) as bg:
            wait_for(
                lambda: len(events(state_dir, name, "create_failed")) >= 3, 90, what="three failed attempts"
            )
            assert bg.error is None and bg.status(name)["current"] == 0
        failed = events(state_dir, name, "create_failed")
        assert all("went to ERROR: No valid host was found" in e.message for e in failed)
        assert len({e.replica for e in failed}) == len(failed)  # each attempt is a new server
        delays = [float(e.message.rsplit("retry in ", 1)[1].rstrip("s")) for e in failed]
        assert delays[:3] == [1.0, 2.0, 4.0]
        # The next attempt never starts before the announced delay is over: no tight create/delete loop.
        for prev, nxt, delay in zip(failed, failed[1:], delays, strict=False):
            assert nxt.ts - prev.ts >= delay
        assert nova_replicas(cloud, name) == {}  # every ERROR server was deleted
    finally:
        cloud.cleanup_group(name)
        gen.close()


def test_bad_image_wrong_credentials_and_quota_are_events_not_crashes(
    cloud: CloudUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_image = cloud.group_name("badimage")
    state_dir = tmp_path / "state"
    cfg, _ = write_config(cloud, state_dir, bad_image)
    cfg.groups[0].template.image = "no-such-image"
    with BackgroundController(cfg) as bg:
        wait_for(lambda: events(state_dir, bad_image, "create_failed"), 30, what="create_failed event")
        assert bg.status(bad_image)["current"] == 0
    (first, *_) = events(state_dir, bad_image, "create_failed")
    assert "template.image: image 'no-such-image' not found in cloud" in first.message
    assert nova_replicas(cloud, bad_image) == {}

    gen = member_project(cloud, instances_quota=2)
    member = next(gen)
    try:
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(member.clouds_file))
        wrong = cloud.group_name("wrongpw")
        state_dir = tmp_path / "state2"
        cfg, _ = write_config(cloud, state_dir, wrong, cloud=member.bad_password_cloud)
        with BackgroundController(cfg) as bg:
            wait_for(lambda: events(state_dir, wrong, "provider_error"), 30, what="provider_error event")
            st = bg.status(wrong)
            assert st["provider_ok"] is False and "authentication failed" in st["last_error"]
        (err, *_) = events(state_dir, wrong, "provider_error")
        assert "authentication failed for cloud 'member-wrong'" in err.message
        servers = [
            s for s in cloud.conn.compute.servers(all_projects=True) if s.project_id == member.project_id
        ]
        assert servers == []

        # Room for two servers, a group that wants three: two run, the third is a recorded refusal.
        quota = cloud.group_name("quota")
        state_dir = tmp_path / "state3"
        cfg, _ = write_config(cloud, state_dir, quota, min_=3, max_=3, cloud=member.cloud)
        try:
            with BackgroundController(cfg) as bg:
                wait_for(lambda: len(ready_ids(bg, quota)) == 2, 60, what="two servers within quota")
                wait_for(lambda: events(state_dir, quota, "create_failed"), 30, what="quota refusal")
                assert bg.error is None
            (refused, *_) = events(state_dir, quota, "create_failed")
            # Refused by the API (HTTP 403), or, when creates race, by Nova's recheck (server in ERROR).
            assert "Quota exceeded for instances" in refused.message
            assert len(nova_replicas(cloud, quota, all_projects=True)) == 2
        finally:
            down(cfg)
        assert nova_replicas(cloud, quota, all_projects=True) == {}
    finally:
        gen.close()


def _apply(bg: BackgroundController, cfg: Any) -> Any:
    assert bg.loop is not None and bg.controller is not None
    return asyncio.run_coroutine_threadsafe(bg.controller.apply(cfg), bg.loop).result(60)


def test_rollout_to_a_new_flavor_then_one_no_host_takes_is_rolled_back(
    cloud: CloudUnderTest, tmp_path: Path
) -> None:
    """A new flavor rolls every server over (Nova's metadata and flavor say so); a flavor no host can
    take fails the rollout and the group returns to the one before, the servers it had untouched."""
    name = cloud.group_name("rollout")
    state_dir = tmp_path / "state"
    knobs = "    rollout: {max_surge: 1, min_healthy_time: 1s, healthy_deadline: 30s}\n"
    cfg, path = write_config(cloud, state_dir, name, min_=2, max_=2, extra=knobs)
    text = path.read_text()
    spare = temporary_flavor(cloud, "second")
    new_flavor = next(spare)
    gen = huge_flavor(cloud)
    no_host = next(gen)
    good = load_config_text(text.replace(f"flavor: {cloud.flavor}", f"flavor: {new_flavor}"), str(path))
    bad = load_config_text(text.replace(f"flavor: {cloud.flavor}", f"flavor: {no_host}"), str(path))
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: len(ready_ids(bg, name)) == 2, 90, what="two servers ready")
            change = _apply(bg, good)
            assert change.new_revision == (name,)
            target = bg.status(name)["rollout"]["target"]

            seen: list[Any] = []

            def on(revision: str) -> bool:
                st = bg.status(name)
                seen[:] = [st["rollout"], [(r["id"], r["revision"], r["state"]) for r in st["replicas"]]]
                return (
                    st["rollout"]["state"] == "complete"
                    and len(st["replicas"]) == 2
                    and all(r["revision"] == revision and r["state"] == "ready" for r in st["replicas"])
                )

            try:
                wait_for(lambda: on(target), 120, what="every server on the new flavor")
            except AssertionError as exc:
                timeline = [(e.kind, e.message) for e in events(state_dir, name)][-25:]
                raise AssertionError(f"{exc}; {seen}; {timeline}") from None
            # The last old server may still be on its way out in Nova when the status says complete.
            wait_for(
                lambda: (
                    {s.metadata["tierscale_revision"] for s in nova_replicas(cloud, name).values()}
                    == {target}
                ),
                60,
                what="only new-flavor servers left in Nova",
            )
            servers = nova_replicas(cloud, name)
            flavor = cloud.conn.compute.find_flavor(new_flavor, ignore_missing=False)
            assert {s.flavor.get("original_name") or s.flavor.get("id") for s in servers.values()} <= {
                flavor.name,
                flavor.id,
            }
            before = set(servers)
            _apply(bg, bad)
            wait_for(
                lambda: bg.status(name)["rollout"].get("rejected") not in (None, target) and on(target),
                120,
                what="rolled back to the good flavor",
            )
            assert set(nova_replicas(cloud, name)) == before  # the good servers were never replaced
        kinds = [e.kind for e in events(state_dir, name)]
        assert kinds.count("rollout_complete") == 2 and "rollout_rollback" in kinds, kinds
    finally:
        down(cfg)
        cloud.cleanup_group(name)
        gen.close()
        spare.close()
    assert nova_replicas(cloud, name) == {}
