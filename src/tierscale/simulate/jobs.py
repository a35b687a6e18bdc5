"""Simulate the configs of one comparison: in this process, or in parallel over worker processes.

The configs of a `--compare` are independent (same trace, same capacity model, each its own seeded
random delays), so they can run side by side; the policy engine is pure Python and holds the GIL, so
side by side means processes. Each worker receives the trace once (when it starts, not per config) and
rebuilds the grid itself: a 27-day trace is 2.3 M cells, 37 MB of grid to pickle per config otherwise.
Results are identical to a serial run: the same functions on the same inputs, and the random delays
come from a generator seeded per config, not from a process-wide one.

Progress crosses the process boundary through shared memory: each worker writes its config's simulated
clock into one slot of a shared array, and the parent polls it into the bars (a queue would cost a
pickle and a pipe write per update).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tierscale.config import predictive_params
from tierscale.config.settings import GroupSettings, settings_for
from tierscale.simulate.compare import Result, measure
from tierscale.simulate.model import CapacityModel, DelayModel, Grid, build_grid
from tierscale.simulate.progress import SimProgress
from tierscale.simulate.run import simulate
from tierscale.simulate.trace import Trace

__all__ = ["Context", "Job", "auto_workers", "default_jobs", "run_jobs", "settings_for_sim"]

# Below this many policy passes over all configs (~10 s of work) a pool costs more than it saves: starting
# the workers and shipping the results back takes about a second.
PARALLEL_MIN_PASSES = 50_000
POLL_SECONDS = 0.25  # how often the parent copies the workers' clocks into the bars
# Relative cost per pass of each policy, to start the longest runs first (a short run started last
# keeps the cores busy to the end): the threshold rule looks at one mean, the HPA at every replica.
POLICY_COST = {"threshold": 0.3, "hpa": 1.0, "predictive": 1.2}


@dataclass(frozen=True)
class Context:
    """What every config of one comparison shares."""

    trace: Trace
    speed: float
    cap: CapacityModel
    delay: DelayModel
    seed: int
    epoch: float


@dataclass(frozen=True)
class Job:
    name: str
    path: str
    group: Any  # the config's group (a pydantic model: pickles to the workers)


def default_jobs() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(jobs: list[Job], duration: float) -> int:
    """The default `--jobs`: one process per core for long comparisons, this process for short ones."""
    passes = sum(duration / max(j.group.sync_period, 1e-3) for j in jobs)
    return min(default_jobs(), len(jobs)) if passes >= PARALLEL_MIN_PASSES else 1


def settings_for_sim(group: Any, delay: DelayModel) -> GroupSettings:
    s = settings_for(group)  # the controller's own conversion of the config
    if group.policy == "predictive":
        # `horizon: auto` means the provisioning delay: here it is known, it is the simulated one.
        s = replace(s, forecast=predictive_params(group, delay.mean))
    return s


def run_one(
    job: Job, ctx: Context, grid: Grid, demand: np.ndarray, tick: Callable[[float], None] | None = None
) -> Result:
    g = job.group
    s = settings_for_sim(g, ctx.delay)
    initial = int(np.clip(demand[0], g.min, g.max))
    run = simulate(
        s, grid, ctx.cap, ctx.delay, initial=initial, seed=ctx.seed, epoch=ctx.epoch, progress=tick
    )
    metrics = measure(demand, run.ready, run.allocated, grid.rate, ctx.cap.capacity, grid.dt, len(run.events))
    days = grid.duration / 86400.0
    extra = {
        "passes": run.passes,
        "sim_seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "seconds_per_simulated_day": run.seconds / days if days > 0 else 0.0,
    }
    return Result(job.name, g.policy, metrics, run.ready, run.allocated, job.path, g.name, run, extra=extra)


# ---- worker processes -------------------------------------------------------------------------------------

_worker: tuple[Context, Grid, np.ndarray, Any] | None = None


def _init_worker(ctx: Context, clock: Any) -> None:
    global _worker
    np.seterr(all="ignore")  # as the CLI's process: the model divides by zero replicas on purpose
    grid = build_grid(ctx.trace, ctx.speed)
    _worker = (ctx, grid, ctx.cap.demand(grid.rate), clock)


def _work(index: int, job: Job) -> Result:
    assert _worker is not None, "worker not initialized"
    ctx, grid, demand, clock = _worker

    def tick(t: float) -> None:
        clock[index] = t

    return run_one(job, ctx, grid, demand, tick)


def _mp_context() -> Any:
    # Not fork: the parent runs rich's refresh thread, and a forked child inherits its locks. A fork
    # server that has imported the simulator starts each worker in milliseconds; spawn re-imports
    # numpy, pydantic and the engine in every worker (about a second each).
    if "forkserver" in multiprocessing.get_all_start_methods():
        mp = multiprocessing.get_context("forkserver")
        mp.set_forkserver_preload([__name__])
        return mp
    return multiprocessing.get_context("spawn")


def _cost(job: Job) -> float:
    """Relative wall time: passes × the policy's cost per pass, which for the HPA grows with the replica
    count, and that grows as the CPU target falls."""
    g = job.group
    cost = POLICY_COST.get(g.policy, 1.0) / g.sync_period
    targets = [m.target for m in g.metrics if m.type == "cpu" and m.target]
    if g.policy != "threshold" and targets:
        cost *= 100.0 / min(targets)
    return cost


def run_jobs(
    jobs: list[Job],
    ctx: Context,
    grid: Grid,
    demand: np.ndarray,
    workers: int,
    progress: SimProgress | None = None,
) -> list[Result]:
    """Every job's result, in the order of `jobs`, on up to `workers` processes (1: this process)."""
    bars = progress or SimProgress(enabled=False)
    tasks = [bars.add(j.name, grid.duration) for j in jobs]
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job, task in zip(jobs, tasks, strict=True):
            out.append(run_one(job, ctx, grid, demand, lambda t, task=task: bars.update(task, t)))
            bars.finish(task)
        return out
    mp = _mp_context()
    clock = mp.RawArray("d", len(jobs))
    results: list[Result | None] = [None] * len(jobs)
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))  # longest first; stable on ties
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=mp, initializer=_init_worker, initargs=(ctx, clock)
    ) as pool:
        futures: dict[Future[Result], int] = {pool.submit(_work, i, jobs[i]): i for i in order}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futures[f]
                    results[i] = f.result()  # a worker's exception is raised here, as in a serial run
                    bars.finish(tasks[i])
                for f in pending:
                    i = futures[f]
                    bars.update(tasks[i], clock[i])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [r for r in results if r is not None]
