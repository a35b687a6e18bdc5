"""Traffic through every controller's balancer, not only the leader's (`ha:`).

With clients spread over several balancers, each nginx log sees its share. Every controller publishes
its own per-replica figures in its member key in etcd; the leader adds the others' to its own before the
metric sources read them: requests, req/s, errors and retries add up; a p95 cannot be added, so the
highest of the balancers' p95s stands for the group (the conservative side: it never hides a slow
balancer's view).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tierscale.balancer.accesslog import UpstreamStats
from tierscale.metrics.base import Traffic


def to_wire(traffic: Traffic) -> dict[str, Any]:
    return {
        "total_rps": traffic.total_rps,
        "upstream": {
            addr: {
                "requests": u.requests,
                "rps": u.rps,
                "p95_ms": u.p95_ms,
                "errors": u.errors,
                "retries": u.retries,
            }
            for addr, u in traffic.upstream.items()
        },
    }


def from_wire(body: Any) -> Traffic | None:
    try:
        upstream = {
            str(addr): UpstreamStats(
                int(u["requests"]),
                float(u["rps"]),
                None if u.get("p95_ms") is None else float(u["p95_ms"]),
                int(u.get("errors", 0)),
                int(u.get("retries", 0)),
            )
            for addr, u in dict(body.get("upstream") or {}).items()
        }
        total = body.get("total_rps")
        return Traffic(upstream, None if total is None else float(total))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None  # a member writing something else (another version): its share is left out


def _p95(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def merge(own: Traffic, peers: Iterable[Traffic]) -> Traffic:
    peers = list(peers)
    if not peers:
        return own
    everyone = [own, *peers]
    upstream: dict[str, UpstreamStats] = {}
    for addr in sorted({a for t in everyone for a in t.upstream}):
        parts = [t.upstream[addr] for t in everyone if addr in t.upstream]
        upstream[addr] = UpstreamStats(
            sum(p.requests for p in parts),
            sum(p.rps for p in parts),
            _p95(p.p95_ms for p in parts),
            sum(p.errors for p in parts),
            sum(p.retries for p in parts),
        )
    totals = [t.total_rps for t in everyone if t.total_rps is not None]
    return Traffic(upstream, sum(totals) if totals else None)
