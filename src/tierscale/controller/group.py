"""One group's control loop: observe → decide → act → balance → record.

Two cooperating tasks per group: the health loop probes replicas every `health.interval` and admits a
replica to the balancer the moment it turns healthy; the reconcile loop runs every `sync_period`. All
blocking provider and balancer calls run in threads so a slow tier never stalls the event loop, and
every step is idempotent: the infrastructure is listed afresh each pass and compared with `desired`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tierscale.balancer.accesslog import AccessLogReader
from tierscale.balancer.nginx import BalancerError, NginxBalancer
from tierscale.controller.clock import Clock
from tierscale.controller.health import HealthTracker, probe
from tierscale.controller.observe import MetricSpec, metric_inputs, query_prometheus, replica_status
from tierscale.controller.telemetry import Telemetry
from tierscale.eventstore import EventStore
from tierscale.policy import decide_hpa, decide_threshold, record_scale
from tierscale.policy.predictive import PredictiveParams, decide_predictive
from tierscale.policy.schedule import ScheduleEntry, apply_schedule, note_schedule
from tierscale.policy.types import (
    Decision,
    GroupSnapshot,
    HpaParams,
    PolicyState,
    ThresholdParams,
)
from tierscale.providers.base import Provider, ProviderError, Replica, ReplicaStats

log = logging.getLogger("tierscale.controller")


@dataclass(frozen=True)
class GroupSettings:
    """Everything the loop needs from the group's config, as plain values."""

    name: str
    tier: str
    min: int
    max: int
    sync_period: float
    health_path: str
    health_interval: float
    health_timeout: float
    healthy_after: int
    unhealthy_after: int
    startup_grace: float
    policy: str
    metrics: tuple[MetricSpec, ...]
    hpa: HpaParams
    threshold: ThresholdParams
    scale_in_order: str
    drain_timeout: float
    stop_grace: float = 5.0
    metric_window: float = 10.0
    health_type: str = "http"  # http | console
    console_marker: str | None = None
    forecast: PredictiveParams = field(default_factory=PredictiveParams)  # policy: predictive
    schedule: tuple[ScheduleEntry, ...] = ()


@dataclass
class Backoff:
    """Exponential backoff so a failing create never becomes a tight loop that burns quota."""

    base: float = 1.0
    cap: float = 60.0
    failures: int = 0
    not_before: float = 0.0

    def fail(self, now: float) -> float:
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        self.not_before = now + delay
        return delay

    def ok(self) -> None:
        self.failures = 0
        self.not_before = 0.0


@dataclass
class GroupRuntime:
    """What the loop remembers between passes; all of it can be rebuilt from the infrastructure."""

    desired: int | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)
    creating: int = 0
    policy_state: PolicyState = field(default_factory=PolicyState)
    last_decision: Decision | None = None
    paused: bool = False
    manual_desired: int | None = None
    stats: dict[str, ReplicaStats] = field(default_factory=dict)
    backends: tuple[str, ...] | None = None
    provider_ok: bool = True
    last_error: str | None = None


class GroupController:
    def __init__(
        self,
        settings: GroupSettings,
        provider: Provider,
        balancer: NginxBalancer | None,
        store: EventStore,
        clock: Clock,
        telemetry: Telemetry,
        dry_run: bool = False,
    ) -> None:
        self.s = settings
        self.provider = provider
        self.balancer = balancer
        self.store = store
        self.clock = clock
        self.tm = telemetry
        self.dry_run = dry_run
        self.rt = GroupRuntime()
        self.health = HealthTracker(settings.healthy_after, settings.unhealthy_after, settings.startup_grace)
        self.accesslog = AccessLogReader(balancer.access_log_path) if balancer else None
        self._balance_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._create_backoff = Backoff()
        self._list_backoff = Backoff(base=1.0, cap=30.0)
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._deleted: set[str] = set()
        self._adopted: set[str] = set()
        # Called with (now, status body) after every reconcile pass: the API keeps its chart series here.
        self.status_listeners: list[Callable[[float, dict[str, Any]], None]] = []

    # ------------------------------------------------------------------ helpers
    def event(self, kind: str, message: str, replica: str | None = None, **data: Any) -> None:
        self.store.record_event(self.s.name, kind, message, replica, data or None, ts=self.clock.now())
        # The fields ride along for `--log-format json`; the human format shows only the message.
        extra = {"group": self.s.name, "event": kind, "replica": replica, "data": data or None}
        log.info("%s: %s", self.s.name, message, extra=extra)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, fn: Any, *args: Any, timeout: float | None = None) -> Any:
        """A blocking provider/balancer call in a thread; with `timeout`, a hung tier cannot stall the tick.

        (The thread itself cannot be killed; it finishes in the background and its result is dropped.)
        """
        if timeout is None:
            return await asyncio.to_thread(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
        except TimeoutError:
            name = getattr(fn, "__name__", "call")
            raise ProviderError(f"{self.s.tier} {name} did not answer within {timeout:g}s") from None

    @property
    def _observe_timeout(self) -> float:
        return max(10.0, 2 * self.s.sync_period)

    def active(self) -> list[Replica]:
        """Replicas that count toward the group: not leaving, not failed, not condemned."""
        return [
            r
            for r in self.rt.replicas.values()
            if r.id not in self.rt.draining and r.state != "failed" and not self.health.is_unhealthy(r.id)
        ]

    def ready_backends(self) -> tuple[str, ...]:
        return tuple(sorted(r.address for r in self.active() if r.address and self.health.is_ready(r.id)))

    def serving(self) -> tuple[str, ...]:
        """Addresses that really get traffic: what the balancer was last told, not what health says."""
        if self.balancer is None or self.dry_run:
            return self.ready_backends()
        return self.rt.backends or ()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
        return self._session

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Adopt what the infrastructure already holds, and make sure the balancer runs."""
        if self.s.health_type == "console" and not hasattr(self.provider, "console_output"):
            raise ProviderError(f"groups[{self.s.name}].health.type: tier {self.s.tier} has no console log")
        await self._refresh()
        adopted = list(self.rt.replicas.values())
        self._adopted = {r.id for r in adopted}
        for r in adopted:
            self.event("replica_adopted", f"adopted replica {r.id} at {r.address}", r.id, state=r.state)
        if self.rt.desired is None:
            count = len([r for r in adopted if r.state != "failed"])
            self.rt.desired = max(self.s.min, min(self.s.max, count))
        # Adopted replicas that answer get traffic at once instead of after the first health round.
        await self.probe_all()
        if self.balancer and not self.dry_run:
            try:
                await self._call(self.balancer.ensure_running, list(self.ready_backends()))
                self.rt.backends = self.ready_backends()
            except BalancerError as exc:
                self.tm.balancer_reloads.labels(self.s.name, "failed").inc()
                self.event("balancer_failed", f"balancer did not start: {exc}", error=str(exc))
                raise

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        health_task = self._spawn(self._health_loop(stop))
        try:
            while not stop.is_set():
                started = self.clock.now()
                try:
                    await self.reconcile()
                except Exception as exc:  # one bad pass must not end the loop; it is recorded
                    log.exception("%s: reconcile failed", self.s.name)
                    self.event("provider_error", f"reconcile failed: {exc}", error=str(exc))
                elapsed = self.clock.now() - started
                self.tm.reconcile_seconds.labels(self.s.name).observe(elapsed)
                self._wake.clear()
                sleep = asyncio.ensure_future(self.clock.sleep(max(0.0, self.s.sync_period - elapsed)))
                waiters = [
                    sleep,
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                ]
                _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    p.cancel()
        finally:
            health_task.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        # In-flight drains and creates finish so nothing is left half-made; replicas keep running.
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.s.drain_timeout + self.s.stop_grace + 5)
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ observe
    async def _refresh(self) -> bool:
        now = self.clock.now()
        if now < self._list_backoff.not_before:
            return False
        known_before = set(self.rt.replicas)
        try:
            listed: list[Replica] = await self._call(self.provider.list, timeout=self._observe_timeout)
        except ProviderError as exc:
            delay = self._list_backoff.fail(now)
            if self.rt.provider_ok:
                self.event(
                    "provider_error", f"cannot list replicas: {exc}; retrying in {delay:.0f}s", error=str(exc)
                )
            self.rt.provider_ok = False
            self.rt.last_error = str(exc)
            return False
        if not self.rt.provider_ok:
            self.event("provider_error", "provider reachable again")
        self.rt.provider_ok = True
        self.rt.last_error = None
        self._list_backoff.ok()
        # Deleted by us while the listing was in flight: the listing is stale for those.
        self._deleted &= {r.id for r in listed}
        seen = {r.id: r for r in listed if r.id not in self._deleted}
        # A replica created while the listing was in flight is not in it yet: keep it, don't call it gone.
        for rid, r in self.rt.replicas.items():
            if rid not in known_before and rid not in seen:
                seen[rid] = r
        for rid in list(self.rt.replicas):
            if rid not in seen:
                if rid not in self.rt.draining:
                    self.tm.replacements.labels(self.s.name, "vanished").inc()
                    self.event(
                        "replica_replaced", f"replica {rid} vanished; replacing it", rid, reason="vanished"
                    )
                self.health.forget(rid)
                self.rt.draining.discard(rid)
        self.rt.replicas = seen
        for r in listed:
            self.health.track(r.id, r.created_at)
        return True

    async def probe_all(self) -> None:
        console = self.s.health_type == "console"
        # Console readiness needs no address: the log is read through the tier's API.
        targets = [r for r in self.active() if (r.address or console) and r.state == "running"]
        if not targets:
            return
        results = await asyncio.gather(*(self._probe(r) for r in targets))
        now = self.clock.now()
        changed = False
        for r, (ok, err) in zip(targets, results, strict=True):
            tr = self.health.observe(r.id, r.created_at, ok, now, err)
            if tr == "ready":
                changed = True
                st = self.health.states[r.id]
                took = (st.first_ready_at or now) - r.created_at
                if r.id not in self._adopted:  # an adopted replica's age is not a provision time
                    self.tm.provision_seconds.labels(self.s.name, self.s.tier).observe(max(0.0, took))
                self.event("replica_ready", f"replica {r.id} healthy after {took:.2f}s", r.id, seconds=took)
            elif tr == "unhealthy":
                changed = True
                self.tm.replacements.labels(self.s.name, "unhealthy").inc()
                self.event(
                    "replica_unhealthy",
                    f"replica {r.id} unhealthy ({err}); taking it out and replacing it",
                    r.id,
                    error=err,
                )
        if changed:
            await self.balance()
            self._wake.set()

    async def _probe(self, r: Replica) -> tuple[bool, str | None]:
        if self.s.health_type != "console":
            return await probe(self.session, r.address or "", self.s.health_path, self.s.health_timeout)
        if self.health.is_ready(r.id):
            # The marker is a boot event: once seen, the replica stays healthy while the tier reports it
            # running (otherwise it is reaped as failed). Re-reading its console would only cost API calls.
            return True, None
        try:
            log_text: str = await self._call(self.provider.console_output, r)  # type: ignore[attr-defined]
        except ProviderError as exc:
            return False, str(exc)
        if self.s.console_marker and self.s.console_marker in log_text:
            return True, None
        return False, "console marker not seen yet"

    async def _health_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.probe_all()
            except Exception:
                log.exception("%s: health round failed", self.s.name)
            await self.clock.sleep(self.s.health_interval)

    async def _observe_metrics(self, now: float) -> GroupSnapshot:
        active = self.active()
        running = [r for r in active if r.state == "running"]
        try:
            self.rt.stats = await self._call(self.provider.stats, running, timeout=self._observe_timeout)
        except ProviderError as exc:
            self.rt.stats = {}
            self.event("provider_error", f"cannot read replica stats: {exc}", error=str(exc))
        upstream: dict[str, Any] = {}
        total_rps: float | None = None
        if self.accesslog is not None:
            await self._call(self.accesslog.poll, now)
            upstream = self.accesslog.stats(self.s.metric_window, now)
            total_rps = self.accesslog.totals(self.s.metric_window, now).rps
        prom: dict[str, float | None] = {}
        for m in self.s.metrics:
            if m.type == "prometheus" and m.url and m.query:
                prom[f"{m.url}|{m.query}"] = await query_prometheus(
                    self.session, m.url, m.query, self.s.health_timeout * 2
                )
        statuses = tuple(
            replica_status(r, self.health, r.id in self.rt.draining, self.rt.stats)
            for r in self.rt.replicas.values()
        )
        metrics = metric_inputs(
            self.s.metrics,
            active,
            self.health,
            self.rt.stats,
            upstream,
            total_rps,
            prom,
            now,
            self.s.sync_period,
        )
        for mi in metrics:
            self.tm.metric_target.labels(self.s.name, mi.name).set(mi.target)
        return GroupSnapshot(
            now=now,
            current_replicas=self.rt.desired or 0,
            min_replicas=self.s.min,
            max_replicas=self.s.max,
            replicas=statuses,
            metrics=metrics,
        )

    # ------------------------------------------------------------------ decide
    def decide(self, snap: GroupSnapshot) -> Decision:
        current = self.rt.desired or 0
        if self.rt.paused:
            want = self.rt.manual_desired if self.rt.manual_desired is not None else current
            want = max(self.s.min, min(self.s.max, want))
            return Decision(
                "manual",
                snap.now,
                current,
                want,
                (),
                want,
                ("paused",),
                f"paused: holding manual count {want}",
            )
        # Scheduled min/max overrides apply to every policy (the simulator makes the same calls).
        snap, scheduled = apply_schedule(self.s.schedule, snap)
        if self.s.policy == "threshold":
            decision, state = decide_threshold(self.s.threshold, snap, self.rt.policy_state)
        elif self.s.policy == "predictive":
            decision, state = decide_predictive(self.s.hpa, self.s.forecast, snap, self.rt.policy_state)
        else:
            decision, state = decide_hpa(self.s.hpa, snap, self.rt.policy_state)
        self.rt.policy_state = state
        return note_schedule(decision, scheduled)

    # ------------------------------------------------------------------ act
    async def reconcile(self) -> Decision | None:
        listed = await self._refresh()
        now = self.clock.now()
        if not listed and not self.rt.replicas and self.rt.desired is None:
            return None
        await self._reap_failed()
        snap = await self._observe_metrics(now)
        decision = self.decide(snap)
        self.rt.last_decision = decision
        self.store.record_decision(self.s.name, decision)
        for p in decision.proposals:
            if p.value is not None:
                self.tm.metric_value.labels(self.s.name, p.metric).set(p.value)
        if decision.desired != decision.current:
            direction = "up" if decision.desired > decision.current else "down"
            self.tm.scale_events.labels(self.s.name, direction).inc()
            self.event(
                "scaled",
                f"scale {direction} {decision.current} → {decision.desired}: {decision.reason}",
                current=decision.current,
                desired=decision.desired,
                reason=decision.reason,
            )
            if decision.policy != "manual":
                self.rt.policy_state = record_scale(
                    self.s.hpa, self.rt.policy_state, decision.current, decision.desired, now
                )
        if not self.dry_run:
            self.rt.desired = decision.desired
            if listed:
                await self._converge()
            await self._check_balancer()
            await self.balance()
        self._publish(now)
        return decision

    async def _reap_failed(self) -> None:
        """Replicas that exited or were condemned by health checks are removed; `_converge` replaces them."""
        if self.dry_run:
            return
        for r in list(self.rt.replicas.values()):
            if r.id in self.rt.draining:
                continue
            if r.state == "failed":
                self.tm.replacements.labels(self.s.name, "exited").inc()
                self.event("replica_replaced", f"replica {r.id} exited; replacing it", r.id, reason="exited")
            elif not self.health.is_unhealthy(r.id):
                continue
            self.rt.draining.add(r.id)
            self._spawn(self._delete(r, drain=False))

    async def _converge(self) -> None:
        want = self.rt.desired or 0
        have = len(self.active()) + self.rt.creating
        if have < want:
            now = self.clock.now()
            if now < self._create_backoff.not_before:
                return
            for _ in range(want - have):
                self.rt.creating += 1
                self._spawn(self._create())
        elif have > want and self.rt.creating == 0:
            for victim in self.pick_victims(len(self.active()) - want):
                self.rt.draining.add(victim.id)
                self._spawn(self._delete(victim, drain=True))

    def pick_victims(self, n: int) -> list[Replica]:
        """Unhealthy and not-yet-ready replicas go first (they serve nobody), then `scale_in_order`."""
        candidates = self.active()

        def load(r: Replica) -> float:
            st = self.rt.stats.get(r.id)
            return st.cpu_percent if st and st.cpu_percent is not None else 0.0

        order = self.s.scale_in_order
        if order == "oldest":
            key = lambda r: (self.health.is_ready(r.id), r.created_at)  # noqa: E731
        elif order == "least_loaded":
            key = lambda r: (self.health.is_ready(r.id), load(r))  # noqa: E731
        else:
            key = lambda r: (self.health.is_ready(r.id), -r.created_at)  # noqa: E731
        return sorted(candidates, key=key)[: max(0, n)]

    async def _create(self) -> None:
        rid = "r-" + secrets.token_hex(4)
        try:
            replica: Replica = await self._call(self.provider.create, rid)
        except ProviderError as exc:
            delay = self._create_backoff.fail(self.clock.now())
            self.event(
                "create_failed",
                f"cannot create replica {rid}: {exc}; retry in {delay:.0f}s",
                rid,
                error=str(exc),
            )
            return
        except Exception as exc:
            delay = self._create_backoff.fail(self.clock.now())
            log.exception("%s: create crashed", self.s.name)
            self.event(
                "create_failed",
                f"cannot create replica {rid}: {exc}; retry in {delay:.0f}s",
                rid,
                error=str(exc),
            )
            return
        finally:
            self.rt.creating -= 1
        self._create_backoff.ok()
        self.rt.replicas[replica.id] = replica
        self.health.track(replica.id, replica.created_at)
        self.event(
            "replica_created",
            f"created replica {replica.id} at {replica.address}",
            replica.id,
            address=replica.address,
        )

    async def _delete(self, replica: Replica, drain: bool) -> None:
        try:
            if drain:
                self.event("replica_draining", f"draining replica {replica.id}", replica.id)
            await self.balance()  # it is in `draining`, so this takes it out of the upstream first
            if drain and self.balancer and replica.address and not self.dry_run:
                drained = await self._call(self.balancer.wait_drained, replica.address, self.s.drain_timeout)
                self.event(
                    "replica_drained",
                    f"replica {replica.id} drained"
                    if drained
                    else f"replica {replica.id} still had connections after {self.s.drain_timeout:g}s",
                    replica.id,
                    clean=drained,
                )
            await self._call(self.provider.delete, replica, self.s.stop_grace)
            self.event("replica_deleted", f"deleted replica {replica.id}", replica.id)
            self._deleted.add(replica.id)
            self.rt.replicas.pop(replica.id, None)
            self.health.forget(replica.id)
        except ProviderError as exc:
            self.event(
                "delete_failed", f"cannot delete replica {replica.id}: {exc}", replica.id, error=str(exc)
            )
        finally:
            self.rt.draining.discard(replica.id)

    # ------------------------------------------------------------------ balance
    async def _check_balancer(self) -> None:
        """A master that died (OOM killer, an operator's kill -9) is noticed within one tick; its
        orphaned workers keep serving meanwhile, and `apply` retires them once a new master is started."""
        if self.balancer is None or self.rt.backends is None:
            return
        if await self._call(self.balancer.is_running):
            return
        self.event("balancer_restarted", "nginx master is gone; starting a new one")
        self.rt.backends = None  # whatever the dead master served, the next apply must start one

    async def balance(self) -> None:
        if self.balancer is None or self.dry_run:
            return
        async with self._balance_lock:
            backends = self.ready_backends()
            if backends == self.rt.backends:
                return
            result = await self._call(self.balancer.apply, list(backends))
            if result.ok:
                self.rt.backends = backends
                if result.changed:
                    self.tm.balancer_reloads.labels(self.s.name, "ok").inc()
                    self.event(
                        "balancer_reloaded",
                        f"balancer now sends to {len(backends)} replica(s)",
                        backends=list(backends),
                    )
            else:
                self.tm.balancer_reloads.labels(self.s.name, "failed").inc()
                self.event(
                    "balancer_failed",
                    f"balancer config rejected, keeping the last good one: {result.error}",
                    error=result.error,
                )

    # ------------------------------------------------------------------ record
    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        upstream = self.accesslog.stats(self.s.metric_window, now) if self.accesslog else {}
        replicas = []
        for r in sorted(self.rt.replicas.values(), key=lambda r: r.created_at):
            st = self.health.states.get(r.id)
            stats = self.rt.stats.get(r.id)
            up = upstream.get(r.address or "")
            if r.id in self.rt.draining:
                state = "draining"
            elif self.health.is_unhealthy(r.id):
                state = "unhealthy"
            elif (
                r.state == "running"
                and self.health.is_ready(r.id)
                # Without a balancer, healthy is ready: a console-checked server may have no address at all.
                and (self.balancer is None or r.address in self.serving())
            ):
                state = "ready"
            elif r.state == "running":
                state = "starting"
            else:
                state = r.state
            replicas.append(
                {
                    "id": r.id,
                    "address": r.address,
                    "state": state,
                    "health": "ok"
                    if st and st.ready
                    else (st.last_error if st and st.last_error else "pending"),
                    "cpu": round(stats.cpu_percent, 1) if stats and stats.cpu_percent is not None else None,
                    "memory_bytes": stats.memory_bytes if stats else None,
                    "rps": round(up.rps, 2) if up else 0.0,
                    "p95_ms": round(up.p95_ms, 1) if up and up.p95_ms is not None else None,
                    "age": round(now - r.created_at, 1),
                }
            )
        d = self.rt.last_decision
        totals = self.accesslog.totals(self.s.metric_window, now) if self.accesslog else None
        return {
            "group": self.s.name,
            "tier": self.s.tier,
            "policy": self.s.policy,
            "min": self.s.min,
            "max": self.s.max,
            "desired": self.rt.desired,
            "current": len(self.active()),
            "ready": sum(1 for r in replicas if r["state"] == "ready"),
            "paused": self.rt.paused,
            "provider_ok": self.rt.provider_ok,
            "last_error": self.rt.last_error,
            "balancer": {"url": self.balancer.url, "backends": list(self.rt.backends or ())}
            if self.balancer
            else None,
            "rps": round(totals.rps, 2) if totals else None,
            "p95_ms": round(totals.p95_ms, 1) if totals and totals.p95_ms is not None else None,
            "replicas": replicas,
            "last_decision": None
            if d is None
            else {
                "ts": d.now,
                "policy": d.policy,
                "current": d.current,
                "desired": d.desired,
                "recommended": d.recommended,
                "limits": list(d.limits),
                "reason": d.reason,
                "proposals": [
                    {
                        "metric": p.metric,
                        "value": p.value,
                        "target": p.target,
                        "replicas": p.replicas,
                        "error": p.error,
                    }
                    for p in d.proposals
                ],
            },
        }

    def _publish(self, now: float) -> None:
        body = self.status()
        counts: dict[str, int] = {}
        for r in body["replicas"]:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        for state in ("ready", "starting", "draining", "unhealthy", "provisioning", "failed"):
            self.tm.replicas.labels(self.s.name, state).set(counts.get(state, 0))
        self.tm.desired.labels(self.s.name).set(self.rt.desired or 0)
        self.store.write_status(self.s.name, body, ts=now)
        for listener in self.status_listeners:
            listener(now, body)

    # ------------------------------------------------------------------ manual control
    def set_manual(self, replicas: int) -> None:
        self.rt.paused = True
        self.rt.manual_desired = replicas
        self.event("manual", f"manual scale to {replicas}; policy paused until resume", replicas=replicas)
        self._wake.set()

    def pause(self) -> None:
        self.rt.paused = True
        self.rt.manual_desired = self.rt.desired
        self.event("manual", "policy paused")

    def resume(self) -> None:
        self.rt.paused = False
        self.rt.manual_desired = None
        self.event("manual", "policy resumed")
        self._wake.set()
