"""The oracle: a supply that knows the future exactly and has the same provisioning delay.

It has every needed replica ready exactly when demand needs it (within the group's bounds), so its
supply is the clamped demand. It must have asked for each replica one delay earlier, so what it pays for
at time t is the most it will need over [t, t + delay]: no policy can keep up with demand for less.
"""

from __future__ import annotations

import numpy as np

__all__ = ["forward_max", "oracle"]


def forward_max(x: np.ndarray, width: int) -> np.ndarray:
    """out[i] = max(x[i : i + width]) (shorter at the end), in O(n log width)."""
    out = np.array(x, copy=True)
    n = len(out)
    covered = 1
    while covered < width and covered < n:
        # out[i] covers x[i : i + covered]; folding in out[i + step] (step <= covered) extends it by step.
        step = min(covered, width - covered)
        out[: n - step] = np.maximum(out[: n - step], out[step:])
        covered += step
    return out


def oracle(demand: np.ndarray, lo: int, hi: int, delay_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(supply, allocated) of the oracle."""
    supply = np.clip(demand, lo, hi)
    return supply, forward_max(supply, max(1, delay_cells + 1))
