"""Hosts of a group placed over several: the timeline of a host that stops answering, the scale-in order
that keeps the placement's shape, and drains (the marks are in `host_book`).

Host loss, as a node controller does it: the first listing a host misses takes its replicas out of the
balancer (`GroupContext.ready_backends`) but they still count; after `host_timeout` the host is lost and
they stop counting, so the reconciler replaces them on the hosts that answer. When a lost host answers
again its replicas are surplus: they are marked `returned` and leave first.

A drained host's replicas are handed to the rolling-replacement rule (I) as if they were of another
revision, one at a time: a new replica elsewhere is ready before an old one leaves.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from tierscale.controller.context import GroupContext
from tierscale.controller.rollout_plan import Member
from tierscale.policy.placement import scale_in_order
from tierscale.providers.base import Listing, Replica

DRAIN_SUFFIX = "@draining"  # a drained host's members look like another revision to the rollout rule


def track_hosts(ctx: GroupContext, listed: Listing) -> None:
    """After a listing: when hosts stopped or started answering, and which are now lost."""
    rt, now, timeout = ctx.rt, ctx.clock.now(), ctx.s.host_timeout
    on: dict[str, list[Replica]] = {}
    for r in rt.replicas.values():
        on.setdefault(r.host, []).append(r)
    for host in listed.unreachable:
        if host not in rt.unreachable_since:
            rt.unreachable_since[host] = now
            n = len(on.get(host, []))
            ctx.event(
                "host_unreachable",
                f"host {host} does not answer: its {n} replica(s) leave the balancer; "
                f"replaced if it is still down in {timeout:g}s",
                host=host,
                replicas=n,
            )
    for host in [h for h in rt.unreachable_since if h not in listed.unreachable]:
        since = rt.unreachable_since.pop(host)
        back = [r.id for r in listed if r.host == host]
        if host in rt.lost_hosts:
            rt.returned.update(back)
            ctx.event(
                "host_back",
                f"host {host} answers again after {now - since:.0f}s: its {len(back)} replica(s) "
                "were replaced, so they are surplus and leave first",
                host=host,
                replicas=len(back),
            )
        else:
            ctx.event("host_back", f"host {host} answers again after {now - since:.0f}s", host=host)
    lost = frozenset(h for h, t in rt.unreachable_since.items() if now - t >= timeout)
    for host in lost - rt.lost_hosts:
        n = len(on.get(host, []))
        ctx.tm.replacements.labels(ctx.s.name, "host_lost").inc(n)
        ctx.event(
            "host_lost",
            f"host {host} has not answered for {timeout:g}s: replacing its {n} replica(s) on the other hosts",
            host=host,
            replicas=n,
        )
    rt.lost_hosts = lost
    rt.returned &= set(rt.replicas)


def removal_order(ctx: GroupContext, ordered: Sequence[Replica], strategy: str) -> list[Replica]:
    """The group's victim order (not ready first, then its `scale_in_order`), with the replicas back from
    a lost host first of all, and the rest taken host by host to keep the placement's shape."""
    rt = ctx.rt
    by_id = {r.id: r for r in ordered}
    returned = [r for r in ordered if r.id in rt.returned]
    rest = [r for r in ordered if r.id not in rt.returned]
    ready = {r.id for r in rest if ctx.health.is_ready(r.id)}
    counts = Counter(r.host for r in rest)
    out = list(returned)
    for group in ([r for r in rest if r.id not in ready], [r for r in rest if r.id in ready]):
        ids = scale_in_order([(r.id, r.host) for r in group], strategy, counts)
        out.extend(by_id[i] for i in ids)
        for r in group:
            counts[r.host] -= 1
    return out


def drain_members(
    members: list[Member], replicas: dict[str, Replica], draining: frozenset[str]
) -> list[Member]:
    """Members on a draining host, marked as another revision: the rollout rule replaces them."""
    if not draining:
        return members
    out = []
    for m in members:
        r = replicas.get(m.id)
        if r is not None and r.host in draining:
            m = dataclasses.replace(m, revision=m.revision + DRAIN_SUFFIX, healthy=m.ready)
        out.append(m)
    return out
