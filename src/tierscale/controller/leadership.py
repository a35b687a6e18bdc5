"""One controller's side of the leader election (`ha:`): a lease, the leader key, fencing, shared state.

Every controller keeps a lease alive and tries to create the leader key on it; the one that did leads.
The key goes when its lease expires (the leader died or was cut off), and the next try of a standby
takes it: failover is lease_ttl + one try interval at most.

Fencing: the leader may act only until `renewed + renew_deadline`, where `renewed` is when the last
successful keepalive was *sent*. etcd expires the lease no earlier than `ttl` after it *received* that
keepalive, so the old leader has stopped acting at least `ttl - renew_deadline` (≥ 1 s) before anyone
else can hold the key — no two controllers act in the same second. Every act checks `acting()`.

Through etcd, too: the leader publishes each group's state (desired count, pause, rollout record,
replicas being drained) so a new leader resumes where the old one was, and standbys take a draining
replica out of their own balancers; each member acks the drains it applied, and the leader deletes a
replica only once every live member has (or the drain timeout passed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tierscale.coordination.base import LeaseStore, StoreUnavailable

log = logging.getLogger("tierscale.ha")


@dataclass
class Member:
    name: str
    api: str
    role: str
    renewed_at: float  # wall clock of its last renew, as it wrote it
    acked: dict[str, list[str]] = field(default_factory=dict)  # group -> draining replica ids applied
    traffic: dict[str, Any] = field(default_factory=dict)  # group -> its balancer's figures (peer_traffic)


@dataclass
class LeaderInfo:
    name: str
    api: str
    since: float


def renew_deadline(ttl: float) -> float:
    """How long after a renew was sent the leader may still act: a second or a third of the TTL short."""
    return ttl - max(1.0, ttl / 3)


class Leadership:
    def __init__(
        self,
        store: LeaseStore,
        name: str,
        api: str,
        ttl: float,
        prefix: str = "/tierscale/",
        *,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.store, self.name, self.api, self.ttl = store, name, api, ttl
        self.deadline_after = renew_deadline(ttl)
        self.interval = max(0.1, min(0.5, self.deadline_after / 4))
        self.fresh_for = 4 * self.interval  # how old the last renew may be for the leader to start an act
        self._renewed = -math.inf  # monotonic send time of the last renew that landed
        self.leader_key = prefix + "leader"
        self.members_prefix = prefix + "members/"
        self.groups_prefix = prefix + "groups/"
        self._now, self._wall = now, wall
        self.on_change = on_change
        self.lease: int | None = None
        self._value = ""  # the leader key's value while we campaign on this lease
        self.leading = False
        self.deadline = 0.0
        self.term = 0  # +1 at every acquisition: a group that saw another term takes over again
        self.changes = 0
        self.leader: LeaderInfo | None = None
        self._last_known: str | None = None
        self.lost_until = 0.0  # wall time the last term's acting ended (its deadline, or the step down)
        self.members: dict[str, Member] = {}
        self.last_renew: float | None = None  # wall
        self.last_error: str | None = None
        self.inherited: dict[str, dict[str, Any]] = {}  # at acquisition: the previous leader's state
        self.shared: dict[str, dict[str, Any]] = {}  # standby: the leader's latest state
        self.shared_version = 0  # +1 when it changed: the runner wakes the groups to follow at once
        self._outgoing: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._acks: dict[str, list[str]] = {}
        self._traffic: dict[str, dict[str, Any]] = {}

    # ---- what the groups ask
    def acting(self) -> bool:
        # After a failed try the leader holds its acts until a renew lands (it keeps the lease until the
        # deadline, so nobody else starts meanwhile): a cut-off leader sends nothing more into the cut,
        # where a request can wait in the kernel and reach the tier after the partition heals.
        # A try that hangs counts as failed once it is overdue (`fresh_for`).
        now = self._now()
        fresh = now - self._renewed < self.fresh_for
        return self.leading and self.last_error is None and fresh and now < self.deadline

    def past_deadline(self) -> bool:
        return self._now() >= self.deadline

    def deadline_wall(self) -> float:
        """The local acting deadline on the wall clock (for the record: events carry wall time)."""
        return self._wall() - (self._now() - self.deadline)

    def publish(self, group: str, state: dict[str, Any]) -> None:
        self._outgoing[group] = json.dumps(state, sort_keys=True)

    def ack(self, group: str, draining: list[str]) -> None:
        self._acks[group] = sorted(draining)

    def share_traffic(self, group: str, body: dict[str, Any]) -> None:
        self._traffic[group] = body

    def peer_traffic(self, group: str) -> list[Any]:
        """The other live members' balancer figures for `group` (a dead member's key went with its lease)."""
        return [m.traffic[group] for m in self.members.values() if m.name != self.name and group in m.traffic]

    def acked_by_all(self, group: str, replica: str) -> bool:
        """Every other live member has taken `replica` out of its balancer."""
        return all(replica in m.acked.get(group, []) for m in self.members.values() if m.name != self.name)

    # ---- the loop (the runner calls step() every `interval`)
    async def step(self) -> None:
        was = self.leading
        try:
            await asyncio.to_thread(self._step)
            self.last_error = None
        except Exception as exc:  # etcd away, or an answer we do not understand: not leading on it
            if not isinstance(exc, StoreUnavailable):
                log.exception("ha: step failed")
            elif self.last_error is None:
                role = "leading until the deadline" if self.leading else "standing by, acting on nothing"
                log.warning("ha: %s: %s", role, exc)
            self.last_error = str(exc)
            if self.leading and self._now() >= self.deadline:
                self._step_down(f"could not renew the lease within {self.deadline_after:g}s: {exc}")
            if not self.leading and self.leader is not None and self.leader.name == self.name:
                self.leader = None  # not us any more, and who it is now cannot be seen from here
        # A change is one known leader followed by another (a gap without one between them counts once).
        now_leader = self.leader.name if self.leader else None
        if now_leader is not None:
            self.changes += self._last_known is not None and now_leader != self._last_known
            self._last_known = now_leader
        if self.leading != was and self.on_change is not None:
            why = "acquired the lease" if self.leading else "lost the lease: stopped acting"
            self.on_change(self.leading, why)

    def _step(self) -> None:
        sent = self._now()
        if self.lease is not None and self.store.keepalive(self.lease) <= 0:
            if self.leading:
                self._step_down("the lease expired")
            self.lease = None
        if self.lease is None:
            self.lease = self.store.grant(math.ceil(self.ttl))
            me = {"name": self.name, "api": self.api, "lease": self.lease, "since": self._wall()}
            self._value = json.dumps(me)
        renewed = sent
        self.last_renew = self._wall()
        current = self.store.get(self.leader_key)
        if current is None and self.store.create(self.leader_key, self._value, self.lease):
            current = self._value
        if current == self._value:
            if not self.leading:
                self.inherited = self._read_groups()
                # What we published in an earlier term is older than what we just inherited.
                self._outgoing, self._written = {}, {}
                self.term += 1
            self.leading = True
            self.deadline = renewed + self.deadline_after
            self._renewed = renewed
            for group, body in list(self._outgoing.items()):
                if self._written.get(group) != body:
                    self.store.put(self.groups_prefix + group, body)
                    self._written[group] = body
        else:
            if self.leading:
                self._step_down("another controller holds the leader key")
            shared = self._read_groups()
            if shared != self.shared:
                self.shared = shared
                self.shared_version += 1
        self.leader = _leader_info(current)
        member = {
            "name": self.name,
            "api": self.api,
            "role": "leader" if self.leading else "standby",
            "renewed_at": self.last_renew,
            "acked": self._acks,
            "traffic": self._traffic,
        }
        self.store.put(self.members_prefix + self.name, json.dumps(member, sort_keys=True), self.lease)
        members = {}
        for key, body in self.store.get_prefix(self.members_prefix).items():
            m = _member(body)
            if m is not None:
                members[key.removeprefix(self.members_prefix)] = m
        self.members = members

    def _read_groups(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key, body in self.store.get_prefix(self.groups_prefix).items():
            try:
                out[key.removeprefix(self.groups_prefix)] = json.loads(body)
            except ValueError:
                continue
        return out

    def _step_down(self, why: str) -> None:
        self.lost_until = self.deadline_wall() if self.deadline else self._wall()
        self.leading = False
        self.deadline = 0.0
        log.warning("ha: %s", why)

    def resign(self) -> None:
        """On a clean stop: the key and the lease go now, so a standby takes over within one try."""
        self.leading = False
        if self.lease is None:
            return
        try:
            self.store.delete_if(self.leader_key, self._value)
            self.store.revoke(self.lease)
        except StoreUnavailable as exc:
            log.warning("ha: could not resign (%s); the lease expires by itself", exc)
        self.lease = None

    # ---- what status shows
    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": "leader" if self.leading else "standby",
            "acting": self.acting(),
            "leader": self.leader.name if self.leader else None,
            "leader_api": self.leader.api if self.leader else None,
            "lease_ttl": self.ttl,
            "last_renew": self.last_renew,
            "error": self.last_error,
            "members": [
                {"name": m.name, "api": m.api, "role": m.role, "renewed_at": m.renewed_at}
                for m in sorted(self.members.values(), key=lambda m: m.name)
            ],
        }


def _leader_info(body: str | None) -> LeaderInfo | None:
    if body is None:
        return None
    try:
        data = json.loads(body)
        return LeaderInfo(str(data["name"]), str(data.get("api", "")), float(data.get("since", 0.0)))
    except (ValueError, KeyError, TypeError):
        return None


def _member(body: str) -> Member | None:
    try:
        data = json.loads(body)
        acked = {str(g): [str(r) for r in ids] for g, ids in dict(data.get("acked", {})).items()}
        traffic = {str(g): figures for g, figures in dict(data.get("traffic", {})).items()}
        return Member(
            str(data["name"]),
            str(data.get("api", "")),
            str(data.get("role", "")),
            float(data.get("renewed_at", 0.0)),
            acked,
            traffic,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
