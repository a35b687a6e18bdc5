"""The simulated controller: a clock that jumps from one reconcile pass to the next.

It replays what `GroupController` does, without processes or sockets:
- a pass runs every `sync_period`, and also at once when a replica turns ready (the controller's health
  loop wakes the reconcile loop on every readiness change);
- observe: CPU per ready replica averaged over the last sync period (a replica that turned ready inside
  it reports its share only for the part it served, as `docker stats` would), the request total at the
  balancer over the controller's metric window, p95 latency from an M/M/1 approximation;
- decide: `policy.strategy.policy_step`, the very function the controller calls (schedule, strategy,
  record_scale);
- act: new replicas are pending for a sampled provisioning delay, then ready; on scale-in pending
  replicas go first, then by `scale_in_order`; a removed replica stops serving at once.

The capacity model is evaluated lazily on numpy slices: the cells between two passes are filled in one
go, so the engine (not the model) sets the cost: one policy call per pass, not per trace second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tierscale.config.settings import GroupSettings
from tierscale.policy.strategy import policy_step
from tierscale.policy.types import Decision, GroupSnapshot, MetricInput, PolicyState, ReplicaStatus
from tierscale.simulate.model import CapacityModel, DelayModel, Grid

__all__ = ["ScaleRecord", "SimRun", "simulate"]

P95_FACTOR = math.log(20.0)  # M/M/1: P(sojourn > x) = exp(-x (1 - rho) / S), so p95 = ln 20 · S / (1 - rho)
MAX_RHO = 0.99  # past this the queue model says "unbounded"; cap so the metric stays finite
SHORT_FILL = 64  # cells: up to this many between two passes are filled in plain Python, more with numpy
PROGRESS_EVERY = 512  # passes between progress reports: ~0.1-0.3 s of work, far below a redraw's cost


@dataclass(frozen=True)
class ScaleRecord:
    t: float  # simulated seconds
    current: int
    desired: int
    reason: str


@dataclass
class SimRun:
    ready: np.ndarray  # ready replicas per cell (the supply)
    allocated: np.ndarray  # replicas that exist per cell (pending included): what is paid for
    events: list[ScaleRecord]
    desired_t: list[float]  # the desired count over time (a step function) for plots
    desired_v: list[int]
    passes: int  # policy evaluations
    seconds: float  # wall time of the run
    cpu_seconds: float = 0.0  # CPU time of the run: what it costs, whatever else the machine is doing
    decisions: list[Decision] = field(default_factory=list)  # only with keep_decisions
    snapshots: list[GroupSnapshot] = field(default_factory=list)  # only with keep_decisions


@dataclass
class _Replica:
    id: str
    created: float
    ready_at: float  # on the grid
    ready_cell: int
    pending: ReplicaStatus
    serving: ReplicaStatus


class _Sim:
    def __init__(
        self,
        s: GroupSettings,
        grid: Grid,
        model: CapacityModel,
        delay: DelayModel,
        seed: int,
        epoch: float,
        initial: int,
    ) -> None:
        self.s, self.grid, self.model, self.delay = s, grid, model, delay
        self.rng = np.random.default_rng(seed)
        self.epoch = epoch
        n = grid.n
        self.d_ready = np.zeros(n + 1, dtype=np.int64)
        self.d_alloc = np.zeros(n + 1, dtype=np.int64)
        self.ready_now = 0  # ready replicas in the last filled cell
        # Prefix sums over filled cells: per-replica utilization, served requests, served × p95.
        self.p_util = np.zeros(n + 1)
        self.p_served = np.zeros(n + 1)
        self.p_lat = np.zeros(n + 1)
        self.filled = 0
        self.replicas: list[_Replica] = []
        self.counter = 0
        self.service_ms = 1000.0 / model.capacity
        self.lat_factor = self.service_ms * P95_FACTOR
        # scale_to_zero: the last cell with any load at or before each cell (-1: none yet).
        loaded = np.where(grid.rate > 0, np.arange(n), -1)
        self.last_loaded = np.maximum.accumulate(loaded) if n else loaded
        # Steady state before t = 0: `initial` replicas, long past any initialization period.
        long_ago = -(s.hpa.cpu_initialization_period + s.hpa.initial_readiness_delay + 3600.0)
        for _ in range(initial):
            self._add(long_ago, long_ago, 0)
        self.desired = initial

    # ---- replicas ---------------------------------------------------------------------------------
    def _add(self, created: float, ready_at: float, ready_cell: int) -> None:
        self.counter += 1
        rid = f"r{self.counter}"
        created_e, ready_e = self.epoch + created, self.epoch + ready_at
        self.replicas.append(
            _Replica(
                rid,
                created,
                ready_at,
                ready_cell,
                ReplicaStatus(rid, "pending", False, created_e, created_e),
                ReplicaStatus(rid, "running", True, ready_e, created_e),
            )
        )
        start = self.grid.cell(created) if created >= 0 else 0
        self.d_alloc[start] += 1
        self.d_ready[min(ready_cell, self.grid.n)] += 1

    def _remove(self, r: _Replica, cell: int) -> None:
        self.replicas.remove(r)
        self.d_alloc[cell] -= 1
        self.d_ready[max(cell, min(r.ready_cell, self.grid.n))] -= 1

    def converge(self, t: float, cell: int, want: int) -> None:
        have = len(self.replicas)
        for _ in range(want - have):
            ready_cell = self.grid.cell(t + self.delay.sample(self.rng))
            self._add(t, ready_cell * self.grid.dt, ready_cell)
        if have > want:
            newest = self.s.scale_in_order != "oldest"

            def order(r: _Replica) -> tuple[bool, float]:
                # Not-yet-ready replicas serve nobody: they go first (as `pick_victims` does).
                return (r.ready_at <= t, -r.created if newest else r.created)

            for victim in sorted(self.replicas, key=order)[: have - want]:
                self._remove(victim, cell)

    # ---- capacity model ---------------------------------------------------------------------------
    def fill(self, k: int) -> None:
        """Compute the cells [filled, k): no replica change can reach them any more."""
        a = self.filled
        if k <= a:
            return
        if k - a <= SHORT_FILL:
            self._fill_short(a, k)
        else:
            self._fill_numpy(a, k)
        self.filled = k

    def _fill_numpy(self, a: int, k: int) -> None:
        ready = self.ready_now + np.cumsum(self.d_ready[a:k])
        self.ready_now = int(ready[-1])
        rate = self.grid.rate[a:k]
        cap = ready * self.model.capacity
        served = np.minimum(rate, cap)
        with np.errstate(divide="ignore", invalid="ignore"):
            util = np.where(ready > 0, np.minimum(rate / np.maximum(cap, 1e-300), 1.0), 0.0)
        lat = self.lat_factor / (1.0 - np.minimum(util, MAX_RHO))
        self.p_util[a + 1 : k + 1] = self.p_util[a] + np.cumsum(util)
        self.p_served[a + 1 : k + 1] = self.p_served[a] + np.cumsum(served)
        self.p_lat[a + 1 : k + 1] = self.p_lat[a] + np.cumsum(served * lat)

    def _fill_short(self, a: int, k: int) -> None:
        # The same arithmetic as `_fill_numpy`, operation for operation (np.cumsum adds in sequence), so
        # the two paths give the same bits; between two passes a few cells at most, where a dozen numpy
        # calls on tiny slices cost more than the arithmetic.
        capacity, lat_factor = self.model.capacity, self.lat_factor
        p_util, p_served, p_lat = self.p_util, self.p_served, self.p_lat
        base_u, base_s, base_l = float(p_util[a]), float(p_served[a]), float(p_lat[a])
        cu = cs = cl = 0.0
        ready = self.ready_now
        c = a
        for d, rate in zip(self.d_ready[a:k].tolist(), self.grid.rate[a:k].tolist(), strict=True):
            ready += d
            cap = ready * capacity
            served = cap if cap < rate else rate
            if ready > 0:
                x = rate / (cap if cap > 1e-300 else 1e-300)
                util = x if x < 1.0 else 1.0
            else:
                util = 0.0
            lat = lat_factor / (1.0 - (util if util < MAX_RHO else MAX_RHO))
            cu += util
            cs += served
            cl += served * lat
            c += 1
            p_util[c] = base_u + cu
            p_served[c] = base_s + cs
            p_lat[c] = base_l + cl
        self.ready_now = ready

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(ready, allocated) per cell, once every cell is filled."""
        n = self.grid.n
        return np.cumsum(self.d_ready[:n]), np.cumsum(self.d_alloc[:n])

    # ---- observe ----------------------------------------------------------------------------------
    def metrics(self, t: float, k: int) -> tuple[MetricInput, ...]:
        s, g = self.s, self.grid
        now = self.epoch + t
        out: list[MetricInput] = []
        for spec in s.metrics:
            if spec.type == "cpu":
                a = g.cell(t - s.sync_period)
                per: dict[str, float | None] = {}
                if k > a:
                    width = k - a
                    # Plain floats: the engine rounds every sample, and round() on numpy scalars is slow.
                    shared = float(self.p_util[k] - self.p_util[a]) / width * 1000.0
                    for r in self.replicas:
                        if r.ready_at > t:
                            continue  # still provisioning: no stats yet
                        if r.ready_cell <= a:
                            per[r.id] = shared
                        else:
                            part = float(self.p_util[k] - self.p_util[min(r.ready_cell, k)])
                            per[r.id] = part / width * 1000.0
                out.append(
                    MetricInput(
                        "cpu", "resource", spec.target, per, sample_time=now, sample_window=s.sync_period
                    )
                )
            elif spec.type == "requests_per_replica":
                a = g.cell(t - s.metric_window)
                total = float(g.prefix[k] - g.prefix[a]) / (k - a) if k > a else None
                out.append(MetricInput("requests_per_replica", "total", spec.target, total=total))
            elif spec.type == "latency_p95_ms":
                a = g.cell(t - s.metric_window)
                served = self.p_served[k] - self.p_served[a]
                per_lat: dict[str, float | None] = {}
                if served > 0:
                    p95 = float(self.p_lat[k] - self.p_lat[a]) / float(served)
                    per_lat = {r.id: p95 for r in self.replicas if r.ready_at <= t}
                out.append(MetricInput("latency_p95_ms", "per_replica", spec.target, per_lat))
        return tuple(out)

    def snapshot(self, t: float, k: int) -> GroupSnapshot:
        statuses = tuple(r.serving if r.ready_at <= t else r.pending for r in self.replicas)
        held, last = self.demand(t, k)
        return GroupSnapshot(
            now=self.epoch + t,
            current_replicas=self.desired,
            min_replicas=self.s.min,
            max_replicas=self.s.max,
            replicas=statuses,
            metrics=self.metrics(t, k),
            held_requests=held,
            last_request_at=last,
        )

    def demand(self, t: float, k: int) -> tuple[int, float | None]:
        """What the balancer would have seen (scale_to_zero): when no replica is ready, the requests of the
        last cell (the first request wakes the controller at once, so what it sees held is the first
        moment's, not a sync period's), and the end of the last cell with load (the start of the run
        before any: the controller's idle timer starts when it does)."""
        if self.s.scale_to_zero is None:
            return 0, None
        if k == 0:
            return 0, self.epoch
        g = self.grid
        j = int(self.last_loaded[k - 1])
        last = self.epoch + (j + 1) * g.dt
        if any(r.ready_at <= t for r in self.replicas):
            return 0, last
        return math.ceil(float(g.rate[k - 1]) * g.dt), last


def simulate(
    s: GroupSettings,
    grid: Grid,
    model: CapacityModel,
    delay: DelayModel,
    *,
    initial: int,
    seed: int = 0,
    epoch: float = 0.0,
    keep_decisions: bool = False,
    progress: Callable[[float], None] | None = None,
) -> SimRun:
    """Run one group over the whole grid. `initial` replicas are ready at t = 0. `progress`, if given, is
    called now and then with the simulated time reached (seconds since the start of the grid)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    sim = _Sim(s, grid, model, delay, seed, epoch, initial)
    state = PolicyState()
    events: list[ScaleRecord] = []
    desired_t, desired_v = [0.0], [initial]
    decisions: list[Decision] = []
    snapshots: list[GroupSnapshot] = []
    passes = 0
    end = grid.duration
    t = s.sync_period
    while t < end:
        k = grid.cell(t)
        sim.fill(k)
        snap = sim.snapshot(t, k)
        decision, state = policy_step(s.plan, snap, state)
        passes += 1
        if progress is not None and passes % PROGRESS_EVERY == 0:
            progress(t)
        if keep_decisions:
            snapshots.append(snap)
            decisions.append(decision)
        if decision.desired != decision.current:
            events.append(ScaleRecord(t, decision.current, decision.desired, decision.reason))
            desired_t.append(t)
            desired_v.append(decision.desired)
        sim.desired = decision.desired
        sim.converge(t, k, decision.desired)
        # Next pass: a sync period later, or as soon as a pending replica turns ready.
        wake = min((r.ready_at for r in sim.replicas if r.ready_at > t), default=math.inf)
        t = min(t + s.sync_period, wake)
    sim.fill(grid.n)
    if progress is not None:
        progress(end)
    ready, allocated = sim.series()
    return SimRun(
        ready=ready,
        allocated=allocated,
        events=events,
        desired_t=desired_t,
        desired_v=desired_v,
        passes=passes,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        decisions=decisions,
        snapshots=snapshots,
    )
