"""The scalar-family gradient flow (`lsa.deep_flow`) against the exact optimum of `theory.deep`.

lsa integrates da/dt = -grad f with its own moments (Wick enumeration); theory solves the Hankel
system of its loop-equation moments and takes reciprocal roots. They must agree to 1e-8, up to a
permutation of the layers.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lsa._options import STATUS_CODE, FlowError
from lsa.deep_flow import MAX_LAYERS, scalar_family_flow, scalar_family_risk, wick_moments
from theory.deep import optimal_looped_step, optimal_step_sizes, step_sizes_risk

CASES = [(8, 40), (3, 5), (5, 3)]
_risk_jit = jax.jit(scalar_family_risk)


@pytest.mark.parametrize(("d", "N"), CASES)
def test_distinct_starts_reach_the_optimum(d, N):
    rng = np.random.default_rng(17 * d + N)
    for L in range(1, MAX_LAYERS + 1):
        a0 = rng.uniform(0.05, 0.6, L)  # distinct with probability one, in random order
        res = scalar_family_flow(a0, d, N)
        assert res.status == "converged" and res.status in STATUS_CODE
        a_star = optimal_step_sizes(d, N, L)
        err = np.max(np.abs(np.sort(res.a) - a_star))
        assert err <= 1e-8, (d, N, L, err, res.stats)
        # the flow decreases the exact risk, and ends at theory's minimal risk
        assert np.all(np.diff(res.risk) <= 1e-12 * res.risk[0])
        assert res.risk[-1] == pytest.approx(step_sizes_risk(a_star, d, N), rel=1e-10)


@pytest.mark.parametrize(("d", "N"), CASES)
def test_equal_starts_stay_equal_and_reach_the_looped_optimum(d, N):
    for L in range(2, MAX_LAYERS + 1):
        res = scalar_family_flow(np.full(L, 0.3), d, N)
        assert np.all(res.a_traj == res.a_traj[:, :1])  # equal at every saved step, exactly
        assert abs(res.a[0] - optimal_looped_step(d, N, L)) <= 1e-8


def test_a_start_near_the_diagonal_reaches_the_distinct_optimum():
    """The diagonal is a saddle transversally: a start 1e-12 away from equal leaves it and
    reaches the free optimum, which is why equal starts are integrated as one group."""
    d, N = 8, 40
    res = scalar_family_flow(np.array([0.3, 0.3 + 1e-12]), d, N)
    assert np.max(np.abs(np.sort(res.a) - optimal_step_sizes(d, N, 2))) <= 1e-8


def test_partially_equal_starts():
    """Two of three layers start equal: they stay equal, and the flow ends at the optimum of the
    constrained problem, which is not the free optimum (that has distinct steps)."""
    d, N = 8, 40
    res = scalar_family_flow(np.array([0.2, 0.5, 0.2]), d, N)
    assert np.all(res.a_traj[:, 0] == res.a_traj[:, 2])
    assert np.all(res.groups == np.array([0, 1, 0]))
    free = step_sizes_risk(optimal_step_sizes(d, N, 3), d, N)
    assert res.risk[-1] > free * (1 + 1e-3)
    # stationarity of the constrained problem, by theory's risk and central differences
    a, b = res.a[0], res.a[1]
    h = 1e-5

    def g(x, y):
        return step_sizes_risk([x, y, x], d, N)

    assert abs((g(a + h, b) - g(a - h, b)) / (2 * h)) < 1e-6
    assert abs((g(a, b + h) - g(a, b - h)) / (2 * h)) < 1e-6


def test_lsa_risk_matches_theory_risk():
    rng = np.random.default_rng(3)
    for d, N, L in [(8, 40, 4), (5, 3, 3), (1, 2, 2)]:
        m = wick_moments(d, N, 2 * L)
        for _ in range(3):
            a = rng.uniform(-0.5, 2.0, L)
            assert float(_risk_jit(a, m)) == pytest.approx(step_sizes_risk(a, d, N), rel=1e-11)


def test_flow_failures_and_bad_input():
    with pytest.raises(FlowError) as info:
        scalar_family_flow(np.array([0.1, 0.2]), 8, 40, t_max=1e-3)
    assert info.value.status == "horizon"
    with pytest.raises(ValueError, match="1 <= L <= 4"):
        scalar_family_flow(np.full(MAX_LAYERS + 1, 0.1), 8, 40)
    with pytest.raises(ValueError, match="NaN"):
        scalar_family_flow(np.array([np.nan]), 8, 40)
    with pytest.raises(ValueError, match="`eps`"):
        scalar_family_flow(np.array([0.1]), 8, 40, eps=0.0)
    with pytest.raises(ValueError, match="`d`"):
        wick_moments(0, 3, 2)
