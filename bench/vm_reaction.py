"""VM tier: scale-out decision → the new VM serving through the balancer, cold boot versus warm pool.

One libvirt group (the demo VM image, real libvirtd, real QEMU, real nginx) runs 1 VM. A manual scale to
2 is the decision; a poller then sends `GET /work?ms=1` through the balancer every 50 ms and the clock
stops at the first answer from an instance that was not serving before. Then the group goes back to 1
(and, with a pool, waits until the pool is refilled), and the next repetition starts. Both modes run in
this one process, so the printed ratio compares like with like. Memory per VM (RSS and private/USS of
each QEMU process, from /proc) is sampled while 2 VMs run, and for the paused pool member.

    .venv/bin/python bench/vm_reaction.py [--repeat 5] [--domain-type qemu|kvm|auto] [--disk]

Goals under TCG on the 2-core development machine: cold ≤ 5 s, warm ≤ 1 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import libvirt
import psutil

from tierscale.config import load_config_text
from tierscale.controller.down import down
from tierscale.service import BackgroundController

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "build" / "images" / "vm"

CONFIG = """\
state_dir: {state_dir}
api: {{listen: "127.0.0.1:{api_port}"}}
groups:
  - name: {group}
    tier: libvirt
    min: 1
    max: 2
    sync_period: 1s
    template: {{kernel: {images}/vmlinux, initrd: {images}/initrd.img, {disk}memory: 256MiB,
               domain_type: {domain_type}}}
    warm_pool: {{size: {pool}}}
    health: {{path: /healthz, interval: 200ms, timeout: 1s, healthy_after: 1, unhealthy_after: 3,
             startup_grace: 60s}}
    metrics: [{{type: requests_per_replica, target: 1000}}]
    drain_timeout: 2s
    balancer: {{type: nginx, listen: "127.0.0.1:{port}", algorithm: round_robin}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def instance_at(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(json.loads(resp.read())["instance"])
    except (OSError, ValueError, KeyError):
        return None


def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def qemu_memory(conn: Any, group: str) -> dict[str, dict[str, float]]:
    """Per domain of the group: state, RSS and USS (private) MiB of its QEMU process."""
    out: dict[str, dict[str, float]] = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        name = dom.name()
        if not name.startswith(f"tierscale-{group}-"):
            continue
        try:
            pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
            mem = psutil.Process(pid).memory_full_info()
        except (OSError, ValueError, psutil.Error):
            continue
        out[name] = {
            "paused": float(dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED),
            "rss_mib": round(mem.rss / 2**20, 1),
            "uss_mib": round(mem.uss / 2**20, 1),
        }
    return out


def pool_ready(conn: Any, group: str) -> bool:
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED):
        if dom.name().startswith(f"tierscale-{group}-") and dom.state()[1] == libvirt.VIR_DOMAIN_PAUSED_USER:
            return True
    return False


def run_mode(pool: int, repeat: int, domain_type: str, disk: bool) -> dict[str, Any]:
    sd = Path(tempfile.mkdtemp(prefix="tierscale-vmbench-"))
    group = f"vmbench-{'warm' if pool else 'cold'}"
    port = free_port()
    text = CONFIG.format(
        state_dir=sd,
        group=group,
        images=IMAGES,
        disk=f"base_image: {IMAGES}/base.qcow2, " if disk else "",
        domain_type=domain_type,
        pool=pool,
        port=port,
        api_port=free_port(),
    )
    cfg = load_config_text(text, "vm-bench.yaml")
    url = f"http://127.0.0.1:{port}/work?ms=1"
    conn = libvirt.open(cfg.groups[0].template.uri)
    bg = BackgroundController(cfg)
    times: list[float] = []
    from_decision: list[float] = []
    memory: dict[str, Any] = {}
    try:
        bg.start()
        gc = bg.controller.groups[group]  # type: ignore[union-attr]
        wait(lambda: bg.status(group)["ready"] >= 1, 120, "the first VM")
        for i in range(repeat):
            if pool:
                wait(lambda: pool_ready(conn, group), 120, "a paused VM in the warm pool")
            old = {r["id"] for r in bg.status(group)["replicas"]}
            t0 = time.monotonic()
            t0_wall = time.time()
            bg.call(gc.set_manual, 2)
            new = None
            while new is None:
                inst = instance_at(url)
                if inst is not None and inst not in old:
                    new = inst
                elif time.monotonic() - t0 > 120:
                    raise RuntimeError("the new VM never served")
                else:
                    # 20 probes/s: fine-grained enough, and light enough not to slow the booting VM
                    # down (back-to-back requests kept the serving VM and nginx busy on 2 cores).
                    time.sleep(0.05)
            took = time.monotonic() - t0
            done_wall = time.time()
            times.append(took)
            events = gc.ctx.store.events(group)
            decided = [e.ts for e in events if e.kind == "scaled" and e.ts >= t0_wall - 0.5]
            if decided:
                from_decision.append(done_wall - min(decided))
            print(f"  {group} run {i + 1}: decision → new VM {new} serving in {took:.2f}s", flush=True)
            if i == 0:
                memory = qemu_memory(conn, group)
            bg.call(gc.set_manual, 1)
            wait(lambda: len(bg.status(group)["replicas"]) == 1, 120, "back to one VM")
        if pool:
            wait(lambda: pool_ready(conn, group), 120, "the pool refilled")
            memory.update(qemu_memory(conn, group))
    finally:
        bg.stop()
        down(cfg)
        conn.close()
        shutil.rmtree(sd, ignore_errors=True)
    running = [m for m in memory.values() if not m["paused"]]
    paused = [m for m in memory.values() if m["paused"]]
    return {
        "mode": "warm pool (resume a paused VM)" if pool else "cold (define + boot)",
        "median_s": round(statistics.median(times), 2),
        "runs_s": [round(t, 2) for t in times],
        "scaled_event_to_serving_median_s": round(statistics.median(from_decision), 2)
        if from_decision
        else None,
        "running_vm_rss_mib": round(statistics.median([m["rss_mib"] for m in running]), 1)
        if running
        else None,
        "running_vm_uss_mib": round(statistics.median([m["uss_mib"] for m in running]), 1)
        if running
        else None,
        "paused_vm_rss_mib": round(statistics.median([m["rss_mib"] for m in paused]), 1) if paused else None,
        "paused_vm_uss_mib": round(statistics.median([m["uss_mib"] for m in paused]), 1) if paused else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--domain-type", default="qemu", choices=["qemu", "kvm", "auto"])
    ap.add_argument(
        "--disk", action="store_true", help="linked clones of base.qcow2 instead of initramfs only"
    )
    args = ap.parse_args()
    if not (IMAGES / "vmlinux").is_file():
        print(f"no VM image in {IMAGES}: run `make vm-image`", file=sys.stderr)
        return 1
    cold = run_mode(0, args.repeat, args.domain_type, args.disk)
    warm = run_mode(1, args.repeat, args.domain_type, args.disk)
    print(f"{'mode':<34} {'median':>8}  runs")
    for r in (cold, warm):
        print(f"{r['mode']:<34} {r['median_s']:>7.2f}s  {r['runs_s']}")
    print(f"ratio cold / warm: {cold['median_s'] / warm['median_s']:.1f}x")
    print(
        f"memory per running VM: RSS {cold['running_vm_rss_mib']} MiB, "
        f"private {cold['running_vm_uss_mib']} MiB; paused pool VM: RSS {warm['paused_vm_rss_mib']} MiB, "
        f"private {warm['paused_vm_uss_mib']} MiB"
    )
    print(json.dumps([cold, warm]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
