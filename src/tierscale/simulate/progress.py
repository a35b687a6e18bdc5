"""Progress bars for long simulations: one rich bar per config, advanced by simulated time, on stderr.

A 27-day replay runs for minutes; without bars it prints nothing until the table. `SimProgress` is
what `tierscale simulate` shows and what a benchmark wraps around many `run_simulation` calls:

    with SimProgress(transient=True) as bars:          # enabled only when stderr is a terminal
        overall = bars.add("runs", len(plan), unit="runs")
        for opts in plan:
            run_simulation(opts, progress=bars)         # one bar per config while it runs
            bars.advance(overall)

Disabled (stderr not a terminal, `--no-progress`, `enabled=False`), every method does nothing, so
callers never branch on it. Updates come from the simulating thread or, with `--jobs`, from a poller
reading the worker processes' shared clock (see `jobs.py`); rich redraws on its own thread at a few Hz,
so a frequent `update` costs a lock and a float, not a redraw.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

__all__ = ["SimProgress", "format_sim_time"]


def format_sim_time(seconds: float) -> str:
    """Simulated time as people read it: 27.0 d, 5.2 h, 12 min."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


class SimProgress:
    def __init__(self, enabled: bool | None = None, *, transient: bool = False, console: Any = None) -> None:
        """`enabled=None`: on when stderr is a terminal. `transient`: erase the bars when done, and drop
        each run's bars as it finishes (for callers that run many simulations under one overall bar)."""
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self.transient = transient
        self._progress: Any = None
        self._bars: dict[int, list[Any]] = {}  # task -> [completed, total, unit]
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[done]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console or Console(stderr=True),
                transient=transient,
                refresh_per_second=4,
            )

    def __enter__(self) -> SimProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, label: str, total: float, *, unit: str = "sim") -> int:
        """A bar of `total` simulated seconds (`unit="sim"`) or of `total` items of `unit`."""
        if self._progress is None:
            return -1
        task = int(self._progress.add_task(label, total=total, done=self._done(0.0, total, unit)))
        self._bars[task] = [0.0, total, unit]
        return task

    def update(self, task: int, completed: float) -> None:
        bar = self._bars.get(task)
        if bar is None:
            return
        bar[0] = min(completed, bar[1])
        self._progress.update(task, completed=bar[0], done=self._done(*bar))

    def advance(self, task: int, amount: float = 1.0) -> None:
        bar = self._bars.get(task)
        if bar is not None:
            self.update(task, bar[0] + amount)

    def finish(self, task: int) -> None:
        """The run is over: fill the bar (the last cells need no pass), or drop it when transient."""
        bar = self._bars.get(task)
        if bar is None:
            return
        if self.transient:
            del self._bars[task]
            self._progress.remove_task(task)
        else:
            self.update(task, bar[1])

    @staticmethod
    def _done(done: float, total: float, unit: str) -> str:
        if unit == "sim":
            return f"{format_sim_time(done)} of {format_sim_time(total)}"
        return f"{done:.0f}/{total:.0f} {unit}"
