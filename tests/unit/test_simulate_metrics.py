"""Elasticity metrics, overflow, replica-hours, oracle and score against hand-computed small series."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierscale.simulate.compare import SPEC_METRICS, ratio, spec_score
from tierscale.simulate.metrics import elasticity, overflow_share, replica_hours
from tierscale.simulate.model import CapacityModel
from tierscale.simulate.oracle import forward_max, oracle


def m(demand: list[int], supply: list[int], dt: float = 1.0) -> dict[str, float]:
    return elasticity(np.array(demand), np.array(supply), dt)


def test_zero_demand_and_zero_supply_is_perfect() -> None:
    assert m([0, 0, 0], [0, 0, 0]) == {
        "theta_u": 0.0,
        "theta_o": 0.0,
        "tau_u": 0.0,
        "tau_o": 0.0,
        "instability": 0.0,
        "jitter": 0.0,
    }


def test_zero_demand_with_one_idle_replica_is_fully_over_provisioned() -> None:
    # (s - d)+ / max(d, eps) = 1 / 1 at every step: 100 % accuracy-over, 100 % of the time.
    out = m([0, 0, 0, 0], [1, 1, 1, 1])
    assert out["theta_o"] == pytest.approx(100.0)
    assert out["tau_o"] == pytest.approx(100.0)
    assert (out["theta_u"], out["tau_u"], out["instability"], out["jitter"]) == (0.0, 0.0, 0.0, 0.0)


def test_equal_supply_and_demand_scores_zero_everywhere() -> None:
    out = m([2, 5, 5, 3], [2, 5, 5, 3])
    assert all(v == 0.0 for v in out.values()), out


def test_single_step_supply_one_step_late() -> None:
    # demand 1,1,3,3; supply 1,1,1,3 (dt 1 s, T 4 s)
    out = m([1, 1, 3, 3], [1, 1, 1, 3])
    assert out["theta_u"] == pytest.approx(100 / 4 * (2 / 3))  # 16.67 %
    assert out["tau_u"] == pytest.approx(25.0)
    assert (out["theta_o"], out["tau_o"]) == (0.0, 0.0)
    # steps: (d 0, s 0) same; (d +, s 0) differ; (d 0, s +) differ -> 2 of 3
    assert out["instability"] == pytest.approx(200 / 3)
    assert out["jitter"] == 0.0  # one supply change, one demand change


def test_over_and_under_in_one_series_and_jitter_per_hour() -> None:
    out = m([2, 4], [3, 3], dt=1.0)
    assert out["theta_o"] == pytest.approx(100 * (1 / 2 + 0) / 2)  # 25 %
    assert out["theta_u"] == pytest.approx(100 * (0 + 1 / 4) / 2)  # 12.5 %
    assert (out["tau_o"], out["tau_u"]) == (pytest.approx(50.0), pytest.approx(50.0))
    assert out["instability"] == pytest.approx(100.0)  # demand rose, supply did not
    assert out["jitter"] == pytest.approx(-1 / (2 / 3600))  # one missing adaptation in 2 s
    slow = m([2, 4], [3, 3], dt=10.0)
    assert slow["theta_o"] == out["theta_o"]  # percentages do not depend on the step length
    assert slow["jitter"] == pytest.approx(-1 / (20 / 3600))


def test_single_sample_has_no_instability() -> None:
    out = m([3], [1])
    assert out["theta_u"] == pytest.approx(100 * 2 / 3)
    assert (out["instability"], out["jitter"]) == (0.0, 0.0)


def test_bad_series_are_rejected() -> None:
    with pytest.raises(ValueError):
        m([1, 2], [1])
    with pytest.raises(ValueError):
        m([], [])


def test_overflow_share_and_replica_hours() -> None:
    rates = np.array([10.0, 10.0, 0.0])
    # capacity 8/replica: 2 req/s over with one replica, all 10 over with none.
    assert overflow_share(rates, np.array([1, 0, 0]), 8.0) == pytest.approx(100 * 12 / 20)
    assert overflow_share(rates, np.array([2, 2, 2]), 8.0) == 0.0
    assert overflow_share(np.zeros(3), np.zeros(3), 8.0) == 0.0  # no requests, nothing overflows
    assert replica_hours(np.array([2, 2, 2]), 1800.0) == pytest.approx(3.0)


def test_demand_counts_replicas_at_the_reference_utilization() -> None:
    cap = CapacityModel(capacity=10.0, utilization=0.5)  # 5 req/s per replica count as "full"
    # 15.000000000000002 is 15 plus float noise: still exactly 3 replicas, not 4.
    got = cap.demand(np.array([0.0, 5.0, 5.0001, 10.0, 12.0, 15.000000000000002]))
    assert got.tolist() == [0, 1, 2, 2, 3, 3]


def test_forward_max_small_case_and_oracle() -> None:
    assert forward_max(np.array([1, 3, 2, 0, 0, 5]), 3).tolist() == [3, 3, 2, 5, 5, 5]
    assert forward_max(np.array([4, 1, 2]), 1).tolist() == [4, 1, 2]
    supply, allocated = oracle(np.array([0, 3, 1]), lo=1, hi=2, delay_cells=1)
    assert supply.tolist() == [1, 2, 1]  # clamped to the group's bounds
    assert allocated.tolist() == [2, 2, 1]  # the replica ready at cell 1 was asked for at cell 0


@given(st.lists(st.integers(0, 50), min_size=1, max_size=60), st.integers(1, 70))
def test_forward_max_matches_brute_force(xs: list[int], width: int) -> None:
    got = forward_max(np.array(xs), width).tolist()
    assert got == [max(xs[i : i + width]) for i in range(len(xs))]


def test_spec_score_is_the_geometric_mean_of_the_five_ratios() -> None:
    # The score before issue P, still printed; the new score is tested in test_sim_score.py.
    base = {k: 10.0 for k in SPEC_METRICS}
    assert spec_score(base, base) == pytest.approx(1.0)
    assert spec_score({k: 5.0 for k in SPEC_METRICS}, base) == pytest.approx(0.5)
    mixed = {**base, "theta_u": 40.0, "theta_o": 2.5}  # x4 and x1/4 cancel out
    assert spec_score(mixed, base) == pytest.approx(1.0)
    assert ratio(0.0, 0.0) == 1.0  # a perfect 0 against a perfect 0 is a tie, not 0/0
    assert ratio(0.0, 1.0) == pytest.approx(0.01)  # floored at 0.01 percentage points
