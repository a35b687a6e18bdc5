"""Replay a request-rate trace through the policy engine with a capacity model; elasticity metrics and plots.

`tierscale simulate` is `command.run_simulation`; the pieces: `trace` (CSV loading), `model` (capacity,
provisioning delay, time grid), `run` (the simulated controller), `metrics` (SPEC elasticity metrics),
`oracle`, `compare` (ratios, score) and `report` (table, JSON, PNG, HTML).
"""

from tierscale.simulate.command import SimOptions, SimReport, run_simulation
from tierscale.simulate.metrics import elasticity, overflow_share, replica_hours
from tierscale.simulate.model import CapacityModel, DelayModel, Grid, build_grid, parse_delay
from tierscale.simulate.run import SimRun, simulate
from tierscale.simulate.trace import SimInputError, Trace, TraceLoad, load_trace

__all__ = [
    "CapacityModel",
    "DelayModel",
    "Grid",
    "SimInputError",
    "SimOptions",
    "SimReport",
    "SimRun",
    "Trace",
    "TraceLoad",
    "build_grid",
    "elasticity",
    "load_trace",
    "overflow_share",
    "parse_delay",
    "replica_hours",
    "run_simulation",
    "simulate",
]
