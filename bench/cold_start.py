"""Cold start from zero replicas, per tier, against the same burst at a group kept at min: 1, in one run.

For each tier a group with `min: 0` and `scale_to_zero: {idle_after: --idle}` runs in this process
(BackgroundController, its own nginx on loopback). --repeat times: wait until the group is at zero (the
last pass decided 0 and the tier lists no replica), send --burst concurrent requests (every other one a
POST /work with a body, the rest GET /work?ms=5), and time each request from send to answer. "first"
is the first answer of the burst (the cold start a user sees), "last" the burst's last answer. Then the
baseline: the same group config with `min: 1` and no scale_to_zero, one replica ready, the same burst
--repeat times. Medians are printed with the ratio cold/baseline, and every non-200 is counted.

Tiers: process; docker (the demo image); libvirt-warm (warm_pool: {size: 1}: at zero one VM waits
paused, the wake resumes it); libvirt-cold (no pool: the wake boots a VM; TCG here, KVM for users).

    .venv/bin/python bench/cold_start.py [--tiers process,docker,libvirt-warm,libvirt-cold]
                                         [--repeat 10] [--burst 10] [--idle 2]

Needs root, nginx, and for the docker/libvirt tiers the demo images (`make images`). Everything it
starts is removed on the way out (`tierscale down` of each group).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.cold import Answer, at_zero, burst, stz_extra  # noqa: E402
from helpers.e2e import group_config, port_block, wait_for  # noqa: E402
from tierscale.controller.down import down  # noqa: E402
from tierscale.providers import make_provider  # noqa: E402
from tierscale.providers.docker_image import DEMO_IMAGE  # noqa: E402
from tierscale.service import BackgroundController  # noqa: E402

VM_DIR = REPO / "build" / "images" / "vm"
GOALS = {"process": 0.5, "docker": 1.0, "libvirt-warm": 0.6, "libvirt-cold": 4.0}
METRIC = "[{type: requests_per_replica, target: 5}]"


def _template(tier: str) -> tuple[str, str, str]:
    """(config tier, template, extra group keys) for a bench tier."""
    if tier == "process":
        lo, hi = port_block()
        cmd = '["python3", "-m", "tierscale.workload", "--port", "{port}"]'
        return "process", f"{{command: {cmd}, port_range: [{lo}, {hi}], cpus: 0.25}}", ""
    if tier == "docker":
        return "docker", f"{{image: {DEMO_IMAGE}, port: 8080, cpus: 0.5, memory: 64m}}", ""
    kernel, initrd = VM_DIR / "vmlinux", VM_DIR / "initrd.img"
    template = f"{{kernel: {kernel}, initrd: {initrd}, memory: 256MiB, domain_type: qemu}}"
    pool = "    warm_pool: {size: 1}\n" if tier == "libvirt-warm" else ""
    return "libvirt", template, pool


@dataclass
class Series:
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    failed: int = 0
    requests: int = 0

    def add(self, answers: list[Answer]) -> None:
        self.first.append(min(a.seconds for a in answers))
        self.last.append(max(a.seconds for a in answers))
        self.requests += len(answers)
        self.failed += sum(1 for a in answers if a.status != 200)


@contextlib.contextmanager
def _group(root: Path, tier: str, name: str, zero: bool, idle: float) -> Iterator[tuple[Any, Any]]:
    kind, template, extra = _template(tier)
    extra += stz_extra(idle=f"{idle}s", hold="120s") if zero else ""
    cfg, _ = group_config(
        root / name / "state",
        kind,
        template,
        name=name,
        min_=0 if zero else 1,
        max_=4,
        metrics=METRIC,
        extra=extra,
        startup_grace="60s",
        health_timeout="5s",
    )
    provider = make_provider(cfg.groups[0], Path(cfg.state_dir))
    try:
        with BackgroundController(cfg) as bg:
            yield bg, provider
    finally:
        provider.close()
        down(cfg)


def _listed(provider: Any) -> list[Any]:
    return list(provider.list())


def measure(
    tier: str, repeat: int, n: int, idle: float, root: Path, say: Callable[[str], None]
) -> tuple[Series, Series]:
    cold, warm = Series(), Series()
    stamp = f"{int(time.time()) % 100000}"
    name = f"cs-{tier.replace('libvirt-', 'vm')}-{stamp}"
    url_of = lambda bg: f"http://{bg.config.groups[0].balancer.listen}/work?ms=5"  # noqa: E731
    with _group(root, tier, name, zero=True, idle=idle) as (bg, provider):
        state = Path(bg.config.state_dir)
        for i in range(repeat):
            # The libvirt pool refills after each return to zero: the next wake must find it full again.
            wait_for(lambda: at_zero(state, name, _listed(provider)), 300, interval=0.2, what="zero")
            if tier == "libvirt-warm":
                wait_for(lambda: _pool_full(provider), 300, interval=0.2, what="a paused VM in the pool")
            answers = burst(url_of(bg), n, timeout=180)
            cold.add(answers)
            say(f"  {tier} cold #{i + 1}: first {cold.first[-1]:.3f}s last {cold.last[-1]:.3f}s")
    base = f"{name}-b"
    with _group(root, tier, base, zero=False, idle=idle) as (bg, _):
        wait_for(lambda: bg.status(base)["ready"] >= 1, 300, interval=0.2, what="baseline replica ready")
        for _ in range(repeat):
            warm.add(burst(url_of(bg), n, timeout=60))
    return cold, warm


def _pool_full(provider: Any) -> bool:
    return any(e.owner.role == "pool" and e.paused_by_us for e in provider.scan())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="process,docker,libvirt-warm,libvirt-cold")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--idle", type=float, default=2.0, help="idle_after, seconds")
    args = ap.parse_args()
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = set(tiers) - set(GOALS)
    if unknown:
        print(f"--tiers: unknown {', '.join(sorted(unknown))}; expected {', '.join(GOALS)}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierscale-cold-") as tmp:
        for tier in tiers:
            cold, warm = measure(tier, args.repeat, args.burst, args.idle, Path(tmp), print)
            rows.append((tier, cold, warm))
    print(f"\ncold start from zero, burst of {args.burst}, median of {args.repeat} (baseline: min 1, warm)")
    print(f"{'tier':14} {'first':>8} {'last':>8} {'base':>8} {'ratio':>7} {'goal':>6} {'failed':>9}")
    for tier, cold, warm in rows:
        first, last = statistics.median(cold.first), statistics.median(cold.last)
        base = statistics.median(warm.first)
        failed = f"{cold.failed + warm.failed}/{cold.requests + warm.requests}"
        ok = "ok" if first <= GOALS[tier] and not (cold.failed + warm.failed) else "MISSED"
        print(
            f"{tier:14} {first:7.3f}s {last:7.3f}s {base:7.3f}s {first / base:6.1f}x "
            f"{GOALS[tier]:5.1f}s {failed:>9} {ok}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
