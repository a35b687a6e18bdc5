"""A group's rollout: which revision it is rolling to, from which, and whether it may go on.

The replicas' marks say which revision each one runs; this keeps the rest (target, last good revision,
paused / waiting for promotion / failed, the revision a rollback rejected) in the event store, so a
controller killed mid-rollout resumes it, and a restart does not retry a revision that was rolled back.
The counting — what to create and remove each pass — is `rollout_plan.plan`, pure.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tierscale.controller.context import GroupContext
from tierscale.controller.revisions import Templates
from tierscale.controller.rollout_plan import Member, RolloutInput, RolloutPlan
from tierscale.providers.base import Replica, TemplateError

log = logging.getLogger("tierscale.controller")

# complete: nothing to replace. progressing / rolling_back: replacing. awaiting_promotion: canaries are
# healthy, waiting for `promote`. paused: by the user. failed: stopped, holding (no rollback possible).
ACTIVE = frozenset({"progressing", "rolling_back", "awaiting_promotion"})
STATE_KEY = "rollout"


class RolloutError(Exception):
    """A rollout command that does not apply now (nothing to promote, no earlier revision, …)."""


@dataclass
class RolloutRecord:
    target: str
    previous: str | None = None  # the last revision fully rolled out before this one
    state: str = "complete"
    promoted: bool = False
    started_at: float = 0.0
    reason: str = ""
    rejected: str | None = None  # a declared revision that failed or was undone: a restart stays off it
    paused_from: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RolloutRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})


class Rollouts:
    def __init__(self, ctx: GroupContext, templates: Templates | None) -> None:
        self.ctx = ctx
        self.templates = templates
        self.declared = ctx.s.revision  # what the config asks for (the target, unless it was rejected)
        self.rec = RolloutRecord(target=ctx.s.revision)
        self.loaded_at = ctx.clock.now()
        self._labels: set[str] = set()
        self._create_failing_since: float | None = None

    # ---- start, restart, and new configs
    def load(self) -> None:
        """At start: pick up the rollout a previous controller left (its state is in the event store)."""
        ctx = self.ctx
        self.loaded_at = ctx.clock.now()
        body = ctx.store.get_state(ctx.s.name, STATE_KEY)
        if body is None:
            return
        rec = RolloutRecord.from_json(body)
        if rec.target == self.declared:
            self.rec = rec
            if rec.state != "complete":
                ctx.event(
                    "rollout_resumed",
                    f"resuming the rollout to revision {rec.target} after a restart ({rec.state})",
                    target=rec.target,
                    state=rec.state,
                )
            return
        if rec.rejected == self.declared and self._switch(rec.target):
            self.rec = rec
            ctx.event(
                "rollout_resumed",
                f"the template's revision {self.declared} was rolled back; staying on {rec.target} "
                "(`tierscale rollout resume` tries it again)",
                target=rec.target,
                rejected=self.declared,
            )
            return
        # The config changed while no controller ran.
        self.rec = rec
        self.declare(self.declared, "the template changed while the controller was stopped")

    def declare(self, revision: str, reason: str) -> None:
        """The config now names `revision` (a new config, or the one found at start)."""
        self.declared = revision
        if revision == self.rec.target and self.rec.state != "failed":
            return
        last_good = self.rec.target if self.rec.state == "complete" else self.rec.previous
        self._start(revision, last_good, "progressing", reason)

    # ---- each pass
    def step(self, now: float) -> None:
        """Failure checks and the transitions that do not depend on this pass's plan."""
        ctx, rec = self.ctx, self.rec
        active = ctx.active()
        self._count(active)
        if rec.state in ACTIVE:
            self._check_deadline(active, now)
        old = [r for r in active if r.revision != self.rec.target]
        if self.rec.state == "complete" and old:
            # Replicas of another revision without a rollout: adopted from an older config (or made by
            # hand). Never mix versions silently: replace them.
            seen = Counter(r.revision for r in old).most_common(1)[0][0]
            last_good = seen if self._known(seen) else None
            self._start(self.rec.target, last_good, "progressing", "replicas of another revision were found")

    def input(self, desired: int, members: list[Member], creating: int) -> RolloutInput:
        spec = self.ctx.s.rollout
        surge, unavailable = spec.limits(desired)
        canary = 0
        if spec.canary and not self.rec.promoted and self.rec.state in ("progressing", "awaiting_promotion"):
            canary = spec.canary
        return RolloutInput(
            desired,
            self.rec.target,
            members,
            creating,
            surge,
            unavailable,
            canary=canary,
            hold=self.rec.state in ("paused", "failed"),
        )

    def members(self, ordered: list[Replica], now: float) -> list[Member]:
        ctx, mht = self.ctx, self.ctx.s.rollout.min_healthy_time
        out = []
        for r in ordered:
            st = ctx.health.states.get(r.id)
            ready = ctx.health.is_ready(r.id)
            since = st.ready_changed_at if st and st.ready_changed_at is not None else now
            healthy = ready and (r.revision != self.rec.target or now - since >= mht)
            out.append(Member(r.id, r.revision, ready, healthy))
        return out

    def next_due(self, now: float) -> float | None:
        """When a new replica completes its min_healthy_time: the next pass should not wait longer."""
        ctx, mht = self.ctx, self.ctx.s.rollout.min_healthy_time
        if self.rec.state not in ACTIVE:
            return None
        due = [
            st.ready_changed_at + mht
            for r in ctx.active()
            if r.revision == self.rec.target
            and (st := ctx.health.states.get(r.id)) is not None
            and st.ready
            and st.ready_changed_at is not None
            and st.ready_changed_at + mht > now
        ]
        return min(due) if due else None

    def after(self, plan: RolloutPlan) -> None:
        ctx, rec = self.ctx, self.rec
        if plan.canaries_ready and rec.state == "progressing":
            rec.state = "awaiting_promotion"
            self._save()
            ctx.event(
                "rollout_paused",
                f"{ctx.s.rollout.canary} canary replica(s) of {rec.target} are healthy; "
                "`tierscale rollout promote` continues the rollout",
                target=rec.target,
                reason="canaries_ready",
            )
        if not plan.rolling and rec.state != "complete" and rec.state != "failed":
            self._complete()

    def create_failed(self, exc: Exception) -> None:
        """A create of the target revision failed: a template the tier rejects fails the rollout at
        once; other failures (quota, a host down) fail it once they have lasted `healthy_deadline`."""
        ctx, rec = self.ctx, self.rec
        if rec.state not in ACTIVE:
            return
        now = ctx.clock.now()
        if self._create_failing_since is None:
            self._create_failing_since = now
        permanent = isinstance(exc, TemplateError)
        if permanent or now - self._create_failing_since > ctx.s.rollout.healthy_deadline:
            self._create_failing_since = None
            self.fail(f"cannot create replicas of {rec.target}: {exc}")

    def created(self) -> None:
        self._create_failing_since = None

    def replica_lost(self, r: Replica, why: str) -> None:
        """A replica of the target revision exited or was condemned before it proved itself."""
        ctx, rec = self.ctx, self.rec
        if rec.state not in ACTIVE or r.revision != rec.target:
            return
        st = ctx.health.states.get(r.id)
        mht = ctx.s.rollout.min_healthy_time
        now = ctx.clock.now()
        proven = bool(
            st and st.ready and st.ready_changed_at is not None and now - st.ready_changed_at >= mht
        )
        if not proven and r.created_at >= rec.started_at:
            self.fail(f"replica {r.id} {why} before it was healthy for {mht:g}s")

    def fail(self, reason: str) -> None:
        ctx, rec = self.ctx, self.rec
        bad = rec.target
        ctx.tm.rollouts.labels(ctx.s.name, "failed").inc()
        ctx.event("rollout_failed", f"rollout to {bad} failed: {reason}", target=bad, reason=reason)
        can_return = rec.previous is not None and self._known(rec.previous)
        if ctx.s.rollout.auto_rollback and rec.state != "rolling_back" and can_return:
            assert rec.previous is not None
            self._rollback(rec.previous, bad, f"rollback: {reason}")
            return
        rec.state, rec.reason = "failed", reason
        self._save()
        hint = f"`tierscale rollout undo` returns to {rec.previous}" if can_return else "fix the template"
        ctx.event(
            "rollout_paused",
            f"rollout stopped; replicas stay as they are ({hint}, `rollout resume` retries)",
            target=bad,
            reason="failed",
        )

    # ---- control (CLI and API)
    def pause(self) -> None:
        rec = self.rec
        if rec.state not in ACTIVE:
            raise RolloutError(f"no rollout in progress (state: {rec.state})")
        rec.paused_from, rec.state = rec.state, "paused"
        self._save()
        self.ctx.event(
            "rollout_paused", f"rollout to {rec.target} paused", target=rec.target, reason="manual"
        )

    def resume(self) -> None:
        rec, ctx = self.rec, self.ctx
        if rec.state == "paused":
            rec.state, rec.paused_from = rec.paused_from or "progressing", None
        elif rec.state == "failed":
            rec.state, rec.started_at = "progressing", ctx.clock.now()  # deadlines start over
        elif rec.state == "complete" and rec.rejected == self.declared and self.declared != rec.target:
            if not self._switch(self.declared):
                raise RolloutError(f"the template of revision {self.declared} is not known")
            self._start(self.declared, rec.target, "progressing", "retrying a rolled-back revision")
            return
        else:
            raise RolloutError(f"nothing to resume (state: {rec.state})")
        self._save()
        ctx.event("rollout_resumed", f"rollout to {rec.target} resumed", target=rec.target)
        ctx.wake.set()

    def promote(self) -> None:
        rec, ctx = self.rec, self.ctx
        if not ctx.s.rollout.canary or rec.promoted or rec.state not in ("progressing", "awaiting_promotion"):
            raise RolloutError(f"no canaries to promote (state: {rec.state})")
        rec.promoted, rec.state = True, "progressing"
        self._save()
        ctx.event("rollout_promoted", f"canaries of {rec.target} promoted", target=rec.target)
        ctx.wake.set()

    def undo(self) -> None:
        rec = self.rec
        if rec.previous is None or not self._known(rec.previous):
            raise RolloutError("no earlier revision with a known template to return to")
        self.ctx.tm.rollouts.labels(self.ctx.s.name, "undone").inc()
        self._rollback(rec.previous, rec.target, "undo")

    # ---- internals
    def _start(self, target: str, previous: str | None, state: str, reason: str) -> None:
        ctx = self.ctx
        if target != ctx.s.revision and not self._switch(target):
            return
        rejected = self.rec.rejected if self.rec.rejected != target else None
        self.rec = RolloutRecord(target, previous, state, False, ctx.clock.now(), reason, rejected)
        self._save()
        others = [r for r in ctx.active() if r.revision != target]
        ctx.event(
            "rollout_started",
            f"rolling out revision {target} (from {previous or 'unknown'}): {len(others)} replica(s) "
            f"to replace; {reason}",
            target=target,
            previous=previous,
            reason=reason,
        )
        ctx.wake.set()

    def _rollback(self, to: str, bad: str, reason: str) -> None:
        ctx = self.ctx
        if not self._switch(to):
            return
        self.rec = RolloutRecord(to, bad, "rolling_back", True, ctx.clock.now(), reason, rejected=bad)
        self._save()
        ctx.event("rollout_rollback", f"rolling back to {to} ({reason})", target=to, rejected=bad)
        ctx.wake.set()

    def _complete(self) -> None:
        ctx, rec = self.ctx, self.rec
        result = "rolled_back" if rec.state == "rolling_back" else "complete"
        ctx.tm.rollouts.labels(ctx.s.name, result).inc()
        rec.state, rec.paused_from = "complete", None
        self._save()
        ctx.event(
            "rollout_complete", f"every replica runs revision {rec.target}", target=rec.target, result=result
        )

    def _known(self, revision: str) -> bool:
        return self.templates is not None and self.templates.known(revision)

    def _switch(self, revision: str) -> bool:
        """New replicas are made from `revision` from now on."""
        ctx = self.ctx
        if revision == ctx.s.revision:
            return True
        if self.templates is None or not self.templates.known(revision):
            return False
        try:
            provider = self.templates.provider(revision)
        except Exception as exc:  # a template that no longer builds (an image gone, a bad stored body)
            ctx.event("rollout_failed", f"cannot build revision {revision}: {exc}", target=revision)
            return False
        ctx.swap_provider(provider)
        ctx.s = replace(ctx.s, revision=revision)
        return True

    def _count(self, active: list[Replica]) -> None:
        ctx = self.ctx
        counts = Counter(r.revision or "unmarked" for r in active)
        gauge = ctx.tm.rollout_replicas
        for rev in self._labels - set(counts):
            gauge.remove(ctx.s.name, rev)
        for rev, n in counts.items():
            gauge.labels(ctx.s.name, rev).set(n)
        self._labels = set(counts)

    def _check_deadline(self, active: list[Replica], now: float) -> None:
        ctx, rec = self.ctx, self.rec
        deadline = ctx.s.rollout.healthy_deadline
        for r in active:
            if r.revision != rec.target or ctx.health.is_ready(r.id):
                continue
            since = max(r.created_at, rec.started_at, self.loaded_at)
            if now - since > deadline:
                self.fail(f"replica {r.id} was not healthy within {deadline:g}s")
                return

    def _save(self) -> None:
        self.ctx.store.put_state(self.ctx.s.name, STATE_KEY, asdict(self.rec))
