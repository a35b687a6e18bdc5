"""OpenStack tier at N servers: create → ACTIVE → ready times, and Nova/Keystone API calls per tick.

Runs against a real cloud (openstack-lite by default: cloud `lite` from /var/tmp/openstack-lite/clouds.yaml;
its current compute driver is reported, fake or QEMU). In one process:
  1. baseline: bare openstacksdk, N servers created at once, each polled to ACTIVE (what check.py does);
  2. tierscale: a group pinned at N (console readiness, no balancer) scales 0 → N; per server: create call
     → ACTIVE (the provider's create returns) → ready (console marker seen); then the steady state:
     HTTP calls to the cloud per reconcile pass, with balancer metrics only and with the cpu metric
     (one diagnostics call per server);
  3. a restarted controller adopts the N servers (calls for that), then `down` deletes them.
HTTP calls are counted with a response hook on the SDK's session (every call, token requests included).

    .venv/bin/python bench/openstack_tier.py [--count 10] [--cloud lite] [--image tiny-raw] [--flavor m1.tiny]
                                        [--marker 'FAKE CONSOLE OUTPUT'] [--steady 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.controller.runner import Controller
from tierscale.eventstore import EventStore
from tierscale.providers.openstack import OpenstackProvider
from tierscale.providers.openstack_cloud import open_cloud

LITE_CLOUDS = "/var/tmp/openstack-lite/clouds.yaml"


class Running:
    """A Controller on its own loop and thread, with the roomy executor `tierscale run` uses."""

    def __init__(self, cfg: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(max_workers=32))
        self.controller = Controller(cfg)
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        ready = threading.Event()
        self._ready = ready
        self.thread.start()
        ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        self._ready.set()
        try:
            self.loop.run_until_complete(self.controller.run(self.stop_event))
        finally:
            self.controller.close()

    def call(self, fn: Any) -> Any:
        fut = asyncio.run_coroutine_threadsafe(_wrap(fn), self.loop)
        return fut.result(10)

    def stop(self) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(120)


async def _wrap(fn: Any) -> Any:
    return fn()


def config_text(state_dir: Path, args: argparse.Namespace, metric: str) -> str:
    return f"""\
state_dir: {state_dir}
api: {{listen: "127.0.0.1:{args.api_port}"}}
groups:
  - name: bench-os
    tier: openstack
    min: {args.count}
    max: {args.count}
    sync_period: {args.sync}s
    template: {{cloud: {args.cloud}, image: {args.image}, flavor: {args.flavor}, networks: none,
               boot_timeout: 300s}}
    health: {{type: console, console_marker: {args.marker!r}, interval: 500ms, startup_grace: 300s}}
    metrics: [{metric}]
    balancer: {{type: none}}
"""


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    cloud = open_cloud(args.cloud)
    conn = cloud.conn
    image = conn.image.find_image(args.image, ignore_missing=False)
    flavor = conn.compute.find_flavor(args.flavor, ignore_missing=False)
    calls0 = cloud.api_calls

    errors: list[str] = []

    def one(i: int) -> tuple[float, Any]:
        while (
            True
        ):  # a server that ends in ERROR is deleted and made again (the time counts from the last try)
            t0 = time.monotonic()
            s = conn.compute.create_server(
                name=f"bench-raw-{i}", image_id=image.id, flavor_id=flavor.id, networks="none"
            )
            try:
                s = conn.compute.wait_for_server(
                    s, status="ACTIVE", failures=["ERROR"], interval=0.5, wait=300
                )
                return time.monotonic() - t0, s
            except Exception as exc:
                errors.append(str(exc))
                conn.compute.delete_server(s)
                conn.compute.wait_for_delete(s, interval=0.5, wait=300)

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.count) as pool:
        results = list(pool.map(one, range(args.count)))
    all_active = time.monotonic() - t0
    calls = cloud.api_calls - calls0
    for _, s in results:
        conn.compute.delete_server(s)
    for _, s in results:
        conn.compute.wait_for_delete(s, interval=0.5, wait=300)
    cloud.close()
    times = sorted(t for t, _ in results)
    return {
        "active_median_s": round(statistics.median(times), 2),
        "active_max_s": round(times[-1], 2),
        "all_active_s": round(all_active, 2),
        "api_calls": calls,
        "errors": errors[:3],
    }


def reconciles(run: Running) -> float:
    value = run.controller.telemetry.registry.get_sample_value(
        "tierscale_reconcile_seconds_count", {"group": "bench-os"}
    )
    return value or 0.0


def steady_calls(run: Running, seconds: float) -> dict[str, float]:
    provider: OpenstackProvider = run.controller.groups["bench-os"].provider  # type: ignore[assignment]
    c0, r0 = provider.api_calls, reconciles(run)
    time.sleep(seconds)
    c1, r1 = provider.api_calls, reconciles(run)
    passes = max(1.0, r1 - r0)
    return {"calls": c1 - c0, "passes": passes, "calls_per_pass": round((c1 - c0) / passes, 2)}


def wait_ready(run: Running, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    gc = run.controller.groups["bench-os"]
    while time.monotonic() - t0 < timeout:
        st = run.call(gc.status)
        if st.ready >= n:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise RuntimeError(f"{n} servers not ready after {timeout:g}s")


def tierscale_run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cfg = load_config_text(config_text(state_dir, args, "{type: requests_per_replica, target: 10}"), "b.yaml")
    try:
        run = Running(cfg)
        provider: OpenstackProvider = run.controller.groups["bench-os"].provider  # type: ignore[assignment]
        out["scale_out_0_to_n_s"] = round(wait_ready(run, args.count, 600), 2)
        out["calls_scale_out"] = provider.api_calls
        out["steady_balancer_metrics"] = steady_calls(run, args.steady)
        run.stop()
        store = EventStore(state_dir / "events.db")
        created = {e.replica: e.ts for e in store.events("bench-os", kinds=("replica_created",))}
        ready = {e.replica: e.data["seconds"] for e in store.events("bench-os", kinds=("replica_ready",))}
        store.close()
        born = {r.id: r.created_at for r in provider_list(cfg, state_dir)}
        active = sorted(created[r] - born[r] for r in created if r in born)
        to_ready = sorted(ready[r] for r in ready if r in born)
        out["create_to_active_median_s"] = round(statistics.median(active), 2)
        out["create_to_active_max_s"] = round(active[-1], 2)
        out["create_to_ready_median_s"] = round(statistics.median(to_ready), 2)
        out["create_to_ready_max_s"] = round(to_ready[-1], 2)

        # Restart with the cpu metric: adoption, then diagnostics every pass.
        cfg2 = load_config_text(config_text(state_dir, args, "{type: cpu, target: 60}"), "b.yaml")
        t0 = time.monotonic()
        run = Running(cfg2)
        provider = run.controller.groups["bench-os"].provider  # type: ignore[assignment]
        out["adopt_all_ready_s"] = round(wait_ready(run, args.count, 120), 2)
        out["calls_adopt"] = provider.api_calls
        out["adopt_elapsed_s"] = round(time.monotonic() - t0, 2)
        out["steady_cpu_metric"] = steady_calls(run, args.steady)
        run.stop()
    finally:
        t0 = time.monotonic()
        down(cfg)
        out["down_s"] = round(time.monotonic() - t0, 2)
    return out


def provider_list(cfg: Any, state_dir: Path) -> list[Any]:
    from tierscale.providers import make_provider

    p = make_provider(cfg.groups[0], state_dir)
    try:
        return p.list()
    finally:
        p.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--cloud", default=os.environ.get("TIERSCALE_TEST_CLOUD", "lite"))
    ap.add_argument("--image", default="tiny-raw")
    ap.add_argument("--flavor", default="m1.tiny")
    ap.add_argument("--marker", default="FAKE CONSOLE OUTPUT")
    ap.add_argument("--sync", type=float, default=2.0, help="sync_period in seconds")
    ap.add_argument("--steady", type=float, default=20.0, help="seconds of steady state to count calls over")
    args = ap.parse_args()
    with socket.socket() as s:  # the controller's API on a port of its own, not the default 9900
        s.bind(("127.0.0.1", 0))
        args.api_port = s.getsockname()[1]
    if args.cloud == "lite" and not os.environ.get("OS_CLIENT_CONFIG_FILE"):
        os.environ["OS_CLIENT_CONFIG_FILE"] = LITE_CLOUDS
    cloud = open_cloud(args.cloud)
    try:
        hyper = sorted({h.hypervisor_type for h in cloud.conn.compute.hypervisors(details=True)})
    except Exception:  # hypervisor details are admin-only; the bench runs without knowing
        hyper = ["?"]
    cloud.close()
    base = baseline(args)
    with tempfile.TemporaryDirectory(prefix="tierscale-bench-os-") as d:
        ts = tierscale_run(args, Path(d) / "state")
    print(
        f"cloud {args.cloud!r}, hypervisor {'/'.join(hyper)}, {args.count} servers, "
        f"sync_period {args.sync:g}s"
    )
    print(
        f"baseline (bare openstacksdk)  create→ACTIVE median {base['active_median_s']}s "
        f"max {base['active_max_s']}s; "
        f"all ACTIVE after {base['all_active_s']}s; {base['api_calls']} API calls"
    )
    print(
        f"tierscale                     create→ACTIVE median {ts['create_to_active_median_s']}s "
        f"max {ts['create_to_active_max_s']}s; create→ready median {ts['create_to_ready_median_s']}s "
        f"max {ts['create_to_ready_max_s']}s; 0→{args.count} ready in {ts['scale_out_0_to_n_s']}s "
        f"({ts['calls_scale_out']} API calls)"
    )
    print(
        f"ratio tierscale/baseline, median create→ACTIVE: "
        f"{ts['create_to_active_median_s'] / base['active_median_s']:.2f}x"
    )
    sb, sc = ts["steady_balancer_metrics"], ts["steady_cpu_metric"]
    print(
        f"API calls per reconcile pass at {args.count} ready servers: {sb['calls_per_pass']} with balancer "
        f"metrics ({sb['calls']} calls / {sb['passes']:.0f} passes), {sc['calls_per_pass']} with the cpu "
        "metric "
        f"({sc['calls']} / {sc['passes']:.0f})"
    )
    print(
        f"restart: {args.count} servers adopted and ready in {ts['adopt_all_ready_s']}s ({ts['calls_adopt']} "
        f"API calls from start to all ready); down: {ts['down_s']}s"
    )
    print(json.dumps({"baseline": base, "tierscale": ts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
