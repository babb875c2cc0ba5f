"""Checks rc1–rc5 (simulations.checks.random_covariance): each passes on the real computation
and fails on a plausible mutant; the Monte Carlo law refuses the statistics samplers."""

import dataclasses

import jax
import numpy as np
import pytest

import lsa
import theory.random_covariance as trc
from lsa.random_covariance import (
    ExponentialLaw,
    TwoPointLaw,
    UniformLaw,
    random_covariance_flow,
    random_covariance_init,
)
from simulations.checks import random_covariance as rc
from simulations.icl.montecarlo import auto_sampler, mc_risk, stats_sampler_issue
from simulations.icl.predictors import OLS, LSAPredictor
from simulations.icl.random_covariance import random_covariance_distribution

D, N = 3, 6
LAW = ExponentialLaw()
SMALL = dataclasses.replace(rc.QUICK, n_mc=40_000, n_slope=60_000, batch=20_000)


@pytest.fixture(scope="module")
def flow():
    init = random_covariance_init(D, N, LAW, sigma_fraction=0.5, Theta=np.eye(D))
    return init, random_covariance_flow(D, N, LAW, init)


def _passed(rows):
    return {r.id: r.passed for r in rows}


def test_rc1_and_mutants():
    assert all(_passed(rc.check_moments_rc(5, 7, 12, 2.0)).values())

    def omega_off(d, N, mom):  # (d - 1) m1^3 where (d - 2) belongs
        co = trc.random_covariance_coefficients(d, N, mom)
        return co._replace(omega=co.omega + mom[0] ** 3 / N)

    def gamma_with_N(d, N, M, c, mom):  # the test prompt's Gamma_M built with N
        return trc.random_covariance_risk(d, N, N, c, mom) + 0 * M

    assert not _passed(rc.check_moments_rc(5, 7, 12, 2.0, coefficients=omega_off))["rc1a"]
    assert not _passed(rc.check_moments_rc(5, 7, 12, 2.0, risk=gamma_with_N))["rc1b"]


def test_rc2_and_mutant(flow):
    init, res = flow
    T = np.asarray(init.U) / float(init.u)
    assert all(_passed(rc.check_flow_rc(res, D, N, LAW, float(init.u), T)).values())
    # mutant: trained on the fixed covariance E[Lambda] I (the law's point mass)
    point = TwoPointLaw(1.0, 1.0, 0.0)
    wrong = random_covariance_flow(D, N, point, init, warn=False)
    rows = _passed(rc.check_flow_rc(wrong, D, N, LAW, float(init.u), T))
    assert not rows["rc2a"] and not rows["rc2c"]
    # the point-mass flow is the fixed-covariance flow (lsa.flow.gradient_flow, another solver)
    fixed = lsa.flow.gradient_flow(np.eye(D), N, init)
    np.testing.assert_allclose(wrong.product, fixed.product, rtol=1e-8)


def test_rc3_and_mutant(flow, key):
    _, res = flow
    rows = rc.check_mc_risk_rc(res, D, N, LAW, key, SMALL, cases=((2 * N + 3, 4.0),))
    assert all(r.passed for r in rows), [r.row() for r in rows]
    # every convention error is far outside the bound at M != N
    wrong = rows[1].details["z_if_convention_error"]
    assert all(abs(z) > 4 for z in wrong.values()), wrong
    bad = rc.check_mc_risk_rc(
        res, D, N, LAW, key, SMALL, query_shares_covariance=False, cases=((2 * N + 3, 4.0),)
    )
    assert not bad[1].passed


LAW4 = UniformLaw(0.5, 1.5)


def _independent_query_loss(key, B):
    """Mutant prompt sets: the query from an independent covariance (antithetic in w)."""
    k1, k2, k3 = jax.random.split(key, 3)
    h = B // 2
    lam = LAW4.sample(k1, (h, D))
    lam_q = LAW4.sample(k2, (h, D))
    kx, kq, kw = jax.random.split(k3, 3)
    X = jax.random.normal(kx, (h, N, D)) * np.sqrt(lam)[:, None, :]
    xq = jax.random.normal(kq, (h, D)) * np.sqrt(lam_q)
    w = jax.random.normal(kw, (h, D))
    X, xq, w = (np.concatenate([X, X]), np.concatenate([xq, xq]), np.concatenate([w, -w]))
    y, yq = np.einsum("bnd,bd->bn", X, w), np.einsum("bd,bd->b", xq, w)
    return lsa.quadratic_loss(lsa.prompt_stats(X, y, xq, yq))


def test_rc4_and_mutant(key):
    init = random_covariance_init(D, N, LAW4, sigma_fraction=0.5, Theta=np.eye(D))
    t_end = 2 * random_covariance_flow(D, N, LAW4, init).t_final
    sizes = dataclasses.replace(SMALL, B_values=(1_000, 2_000, 4_000, 8_000), seeds=2)
    rows, _ = rc.check_empirical_rc(D, N, LAW4, init, t_end, key, sizes)
    assert all(r.passed for r in rows), [r.row() for r in rows]
    bad, _ = rc.check_empirical_rc(
        D, N, LAW4, init, t_end, key, sizes, loss_fn=_independent_query_loss
    )
    assert not bad[0].passed


def test_rc5_and_mutant(flow, key):
    _, res = flow
    rows = rc.check_one_third(res, D, N, LAW, key, SMALL)
    assert all(r.passed for r in rows), [r.row() for r in rows]

    def conflated(d, N, c, mom):  # slope taken as the average map g m1
        return trc.average_implicit_map(d, N, c, mom)

    bad = rc.check_one_third(res, D, N, LAW, key, SMALL, slope_fn=conflated)
    assert not _passed(bad)["rc5a"]


def test_samplers_refused_and_ols(flow, key):
    """The statistics samplers are refused for a per-prompt random covariance (the inputs are a
    Gaussian mixture); mc_risk draws the prompts. Noiseless OLS is exact for M >= d."""
    _, res = flow
    dist = random_covariance_distribution(LAW, D, 2.0)
    preds = {"LSA": LSAPredictor(res.W_PV, res.W_KQ), "OLS": OLS()}
    assert auto_sampler(preds, dist, 10) == "prompts"
    # the LSA alone in d = 6 (3 directions < d) would allow the subspace sampler
    dist6 = random_covariance_distribution(LAW, 6, 2.0)
    lsa_only = {"LSA": LSAPredictor(np.eye(7), np.eye(7))}
    for s in ("stats", "subspace"):
        assert "not iid Gaussian" in stats_sampler_issue(lsa_only, dist6, 10, s)
        with pytest.raises(ValueError, match="not exact"):
            mc_risk(lsa_only, dist6, 10, 100, key, sampler=s)
    with pytest.raises(ValueError, match="iid Gaussian"):
        dist.shift_risk_args()
    est = mc_risk({"OLS": OLS()}, dist, D + 1, 2_000, key)
    assert est["OLS"].mean <= 1e-20
