"""One group over several hosts, on the fake tier: what a reconcile pass costs as hosts are added, and how
long a lost host's replicas take to be replaced. One run, one process, ratios against the 1-host case.

The group is the controller's real loop (observer, reconciler, status, balancer sync) over a `Fleet` of
one-host `FakeProvider`s; time is a `ManualClock`, so "seconds" below are controller time (sync 1 s,
health every 1 s, host_timeout 10 s), and the wall time of a pass is what the controller's own code
costs (the fake tier answers at once).

1. Steady state: 20 replicas spread over H hosts (H = 1, 3, 10); --passes passes; per pass the median
   wall time and the tier calls (list, create, delete, stats) summed over the hosts.
2. Host loss: at 20 replicas on 10 hosts, one host stops answering; controller seconds until its
   replicas are out of the balancer, until they are replaced and ready on the others (host_timeout +
   the passes it takes), and the tier calls spent meanwhile.

    .venv/bin/python bench/fleet.py [--passes 200] [--replicas 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers.fake_config import GROUP, fake_group_config  # noqa: E402
from tierscale.balancer.fake import FakeBalancer  # noqa: E402
from tierscale.config.revision import template_revision  # noqa: E402
from tierscale.controller.clock import ManualClock  # noqa: E402
from tierscale.controller.runner import Controller  # noqa: E402
from tierscale.policy.placement import Demand, PlacementParams  # noqa: E402
from tierscale.providers.base import Replica  # noqa: E402
from tierscale.providers.fake import FakeProvider  # noqa: E402
from tierscale.providers.fleet import Fleet  # noqa: E402


class Bench:
    def __init__(self, state: Path, hosts: int, max_: int) -> None:
        self.clock = ManualClock()
        config = fake_group_config(state, max_=max_, extra="    host_timeout: 10s\n")
        rev = template_revision(config.groups[0].template)
        self.names = [f"tcp://10.9.0.{10 + i}:2375" for i in range(hosts)]
        self.members = {
            h: FakeProvider(GROUP, hosts=(h,), clock=self.clock.now, revision=rev) for h in self.names
        }
        self.fleet = Fleet(self.members, PlacementParams(), Demand(), list_timeout=0.5)
        self.balancer = FakeBalancer()
        self.controller = Controller(
            config,
            clock=self.clock,
            provider_factory=lambda g, sd, sink: self.fleet,  # type: ignore[arg-type,return-value]
            balancer_factory=lambda g, sd: self.balancer,
            prober_factory=lambda g, p: self.probe,  # type: ignore[arg-type,return-value]
        )
        self.gc = self.controller.groups[GROUP]

    async def probe(self, r: Replica) -> tuple[bool, str | None]:
        m = self.members.get(r.host)
        ok = bool(m and m.healthy.get(r.id, False))
        return ok, None if ok else "fake: unhealthy"

    def calls(self) -> int:
        return sum(sum(m.calls.values()) for m in self.members.values())

    def ready(self) -> int:
        return sum(r.state == "ready" for r in self.gc.status().replicas)

    async def tick(self) -> float:
        started = time.perf_counter()
        await self.gc.reconcile()
        await self.gc.settle()
        took = time.perf_counter() - started
        await self.gc.health_rounds.probe_all()
        self.clock.advance(1.0)
        return took

    async def settle_at(self, n: int) -> None:
        self.gc.set_manual(n)
        for _ in range(30):
            await self.tick()
            if self.ready() == n and len(self.gc.status().replicas) == n and not self.gc.ctx.rt.draining:
                return
        raise RuntimeError(f"not settled at {n}")


async def steady(hosts: int, replicas: int, passes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(Path(tmp) / "state", hosts, replicas)
        try:
            await b.gc.start()
            await b.settle_at(replicas)
            times, calls = [], []
            for _ in range(passes):
                before = b.calls()
                times.append(await b.tick())
                calls.append(b.calls() - before)
            return {
                "hosts": hosts,
                "pass_ms": statistics.median(times) * 1000,
                "calls": statistics.mean(calls),
            }
        finally:
            await b.gc.shutdown()
            b.controller.close()


async def host_loss(hosts: int, replicas: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(Path(tmp) / "state", hosts, replicas)
        try:
            await b.gc.start()
            await b.settle_at(replicas)
            down = b.names[1]
            lost = set(b.members[down].replicas)
            addresses = {b.members[down].replicas[r].address for r in lost}
            b.members[down].unreachable.add(down)
            cut, before = b.clock.now(), b.calls()
            out_at = replaced_at = None
            for _ in range(60):
                await b.tick()
                if out_at is None and not addresses & set(b.balancer.backends):
                    out_at = b.clock.now() - cut
                others = [r for r in b.gc.status().replicas if r.id not in lost and r.state == "ready"]
                if len(others) == replicas:
                    replaced_at = b.clock.now() - cut
                    break
            return {
                "lost": len(lost),
                "out_s": out_at,
                "replaced_s": replaced_at,
                "calls": b.calls() - before,
            }
        finally:
            await b.gc.shutdown()
            b.controller.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=20)
    args = ap.parse_args()
    rows = [asyncio.run(steady(h, args.replicas, args.passes)) for h in (1, 3, 10)]
    base = rows[0]
    print(f"steady state, {args.replicas} replicas, {args.passes} passes (median wall time per pass):")
    for r in rows:
        print(
            f"  {r['hosts']:>2} host(s): {r['pass_ms']:.2f} ms/pass "
            f"({r['pass_ms'] / base['pass_ms']:.2f}x 1 host), "
            f"{r['calls']:.1f} tier calls/pass ({r['calls'] / base['calls']:.2f}x)"
        )
    loss = asyncio.run(host_loss(10, args.replicas))
    print(
        f"host loss at {args.replicas} replicas on 10 hosts (host_timeout 10 s, sync 1 s, controller time): "
        f"{loss['lost']} replicas out of the balancer after {loss['out_s']:g} s, replaced and ready after "
        f"{loss['replaced_s']:g} s; {loss['calls']} tier calls meanwhile"
    )


if __name__ == "__main__":
    main()
