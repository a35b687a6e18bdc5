"""A group under `ha:`: what it does as a standby, what it takes over as a new leader, what it publishes.

A standby lists, probes and balances like the leader, but never creates, deletes, scales or rolls: it
follows the leader's published state (its desired count, and the replicas it drains, which the standby
takes out of its own balancer and acks). A new leader starts from the last state the previous one
published — count, pause, rollout — not from its own memory, which was a standby's.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tierscale.controller.context import GroupContext
from tierscale.controller.leadership import Leadership
from tierscale.controller.rollout import STATE_KEY, Rollouts


class GroupTerm:
    def __init__(self, ctx: GroupContext, rollouts: Rollouts, leadership: Leadership | None) -> None:
        self.ctx = ctx
        self.rollouts = rollouts
        self.leadership = leadership
        self._term = 0

    def acting(self) -> bool:
        return self.leadership is None or self.leadership.acting()

    def begin(self) -> bool:
        """Before a pass: whether this pass may act; on the first pass of a new term, take over."""
        ld = self.leadership
        if ld is None:
            return True
        if not ld.acting():
            return False
        if ld.term != self._term:
            self._term = ld.term
            self._take_over(ld.inherited.get(self.ctx.s.name))
        return True

    def _take_over(self, state: dict[str, Any] | None) -> None:
        ctx, rt = self.ctx, self.ctx.rt
        rt.draining.clear()  # the previous leader's drains: this one decides afresh
        if state is None:
            ctx.event("leader_takeover", "took over as leader; no state was published: counting the listing")
            rt.desired = None  # the next pass adopts from the listing
            return
        desired = state.get("desired")
        if isinstance(desired, int):
            rt.desired = max(ctx.s.min, min(ctx.s.max, desired))
        rt.paused = bool(state.get("paused", False))
        manual = state.get("manual_desired")
        rt.manual_desired = manual if isinstance(manual, int) else None
        self._mirror_hosts(state)
        rollout = state.get("rollout")
        if isinstance(rollout, dict):
            ctx.store.put_state(ctx.s.name, STATE_KEY, rollout)
            self.rollouts.load()
        ctx.event(
            "leader_takeover",
            f"took over as leader at {rt.desired} replicas"
            + (" (paused)" if rt.paused else "")
            + (f", rollout {self.rollouts.rec.state}" if isinstance(rollout, dict) else ""),
            desired=rt.desired,
            paused=rt.paused,
        )

    def follow(self) -> None:
        """A standby's pass: the leader's count and drains, acked once our balancer has applied them.
        (A leader whose acts are paused by a failed renew keeps its own state: it only balances.)"""
        ld, rt = self.leadership, self.ctx.rt
        if ld is None or ld.leading:
            return
        state = ld.shared.get(self.ctx.s.name) or {}
        desired = state.get("desired")
        if isinstance(desired, int):
            rt.desired = desired
        rt.paused = bool(state.get("paused", False))
        draining = state.get("draining") or []
        rt.draining = {str(r) for r in draining if str(r) in rt.replicas}
        self._mirror_hosts(state)

    def _mirror_hosts(self, state: dict[str, Any]) -> None:
        """The leader's cordons and drains, shown by a standby's `tierscale hosts`, kept by a new leader."""
        hosts = state.get("hosts")
        if isinstance(hosts, dict) and self.ctx.hosts is not None:
            self.ctx.hosts.replace(hosts)

    def acked(self) -> None:
        """After the balancer sync of a standby pass: tell the leader which drains our balancer holds."""
        if self.leadership is not None and not self.leadership.leading:
            self.leadership.ack(self.ctx.s.name, sorted(self.ctx.rt.draining))

    def publish(self) -> None:
        ld, rt = self.leadership, self.ctx.rt
        if ld is None or not ld.acting():
            return
        ld.publish(
            self.ctx.s.name,
            {
                "desired": rt.desired,
                "paused": rt.paused,
                "manual_desired": rt.manual_desired,
                "rollout": asdict(self.rollouts.rec),
                "draining": sorted(rt.draining),
                "hosts": dict(self.ctx.hosts.marks) if self.ctx.hosts is not None else {},
            },
        )

    def everyone_drained(self, replica: str) -> bool:
        ld = self.leadership
        return ld is None or ld.acked_by_all(self.ctx.s.name, replica)
