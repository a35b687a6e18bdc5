"""Elasticity metrics of the SPEC Research Group (Herbst et al., "Quantifying Cloud Performance and
Dependability: Taxonomy, Metric Design, and Emerging Challenges", ACM TOMPECS 2018; BUNGEE).

Inputs are series on a uniform grid of `dt` seconds: demand d_t (replicas needed) and supply s_t (ready
replicas). With T the total time and x⁺ = max(x, 0):

- θU, under-provisioning accuracy [%]   = 100/T · Σ (d_t − s_t)⁺ / max(d_t, ε) · Δt
- θO, over-provisioning accuracy [%]    = 100/T · Σ (s_t − d_t)⁺ / max(d_t, ε) · Δt
- τU, under-provisioning timeshare [%]  = 100/T · Σ [d_t > s_t] · Δt
- τO, over-provisioning timeshare [%]   = 100/T · Σ [s_t > d_t] · Δt
- υ, instability [%]: the share of steps at which supply and demand do not move in the same direction,
  100/(n−1) · Σ_{t≥2} min(|sgn Δs_t − sgn Δd_t|, 1)
- jitter [adaptations per hour] = (supply changes − demand changes) / T: negative = too inert,
  positive = oscillating.

ε = 1 replica: with zero demand, each idle replica counts as 100 % over-provisioning for that time.
Besides these, what users pay for: replica-hours (every replica from the moment it was asked for until
it was removed, provisioning included), the requests above the ready capacity (their count and their
share of all requests) and scalings per hour (changes of the desired count: each one creates or deletes
replicas, VMs in a cloud tier).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPSILON",
    "elasticity",
    "overflow_requests",
    "overflow_share",
    "replica_hours",
    "scalings_per_hour",
]

EPSILON = 1.0


def elasticity(demand: np.ndarray, supply: np.ndarray, dt: float, eps: float = EPSILON) -> dict[str, float]:
    d = np.asarray(demand, dtype=np.float64)
    s = np.asarray(supply, dtype=np.float64)
    if d.shape != s.shape or d.ndim != 1:
        raise ValueError("demand and supply must be 1-d series of the same length")
    n = len(d)
    if n == 0:
        raise ValueError("empty series")
    denom = np.maximum(d, eps)
    under = np.maximum(d - s, 0.0)
    over = np.maximum(s - d, 0.0)
    hours = n * dt / 3600.0
    if n > 1:
        ds, dd = np.diff(s), np.diff(d)
        instability = 100.0 * float(np.mean(np.sign(ds) != np.sign(dd)))
        jitter = (int(np.count_nonzero(ds)) - int(np.count_nonzero(dd))) / hours
    else:
        instability, jitter = 0.0, 0.0
    return {
        "theta_u": 100.0 * float(np.mean(under / denom)),
        "theta_o": 100.0 * float(np.mean(over / denom)),
        "tau_u": 100.0 * float(np.mean(d > s)),
        "tau_o": 100.0 * float(np.mean(s > d)),
        "instability": instability,
        "jitter": jitter,
    }


def _over(rates: np.ndarray, supply: np.ndarray, capacity: float) -> np.ndarray:
    r = np.asarray(rates, dtype=np.float64)
    return np.maximum(r - np.asarray(supply, dtype=np.float64) * capacity, 0.0)


def overflow_share(rates: np.ndarray, supply: np.ndarray, capacity: float) -> float:
    """% of the requests that arrived above the ready replicas' combined capacity."""
    total = float(np.asarray(rates, dtype=np.float64).sum())
    if total <= 0:
        return 0.0
    return 100.0 * float(_over(rates, supply, capacity).sum()) / total


def overflow_requests(rates: np.ndarray, supply: np.ndarray, capacity: float, dt: float) -> float:
    """Requests that arrived above the ready replicas' combined capacity (rates are req/s per cell)."""
    return float(_over(rates, supply, capacity).sum()) * dt


def scalings_per_hour(scalings: int | float, n: int, dt: float) -> float:
    """Scale events per simulated hour over `n` cells of `dt` seconds."""
    hours = n * dt / 3600.0
    return float(scalings) / hours if hours > 0 else 0.0


def replica_hours(allocated: np.ndarray, dt: float) -> float:
    return float(np.asarray(allocated, dtype=np.float64).sum()) * dt / 3600.0
