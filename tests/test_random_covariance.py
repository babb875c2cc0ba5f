"""Random-covariance training (ZFB Thm 4.5, App. C; theory.md §9): theory's closed forms
against their definitions and Monte Carlo, lsa's exact loss and flow against theory, the
covariance laws' moments against their samplers, bad input."""

import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsa
import theory
import theory.random_covariance as trc
from lsa.random_covariance import (
    ExponentialLaw,
    GammaLaw,
    LogNormalLaw,
    ScaledLaw,
    TwoPointLaw,
    UniformLaw,
    random_covariance_flow,
    random_covariance_init,
    random_covariance_loss,
    random_covariance_loss_grad,
    sample_random_covariance_prompts,
    second_order_coefficients,
    theorem45_sigma_bounds,
)
from simulations.icl.montecarlo import mc_means

LAWS = [
    ExponentialLaw(),
    ExponentialLaw(0.01),
    ExponentialLaw(100.0),
    GammaLaw(2.5, 0.4),
    UniformLaw(0.2, 3.0),
    LogNormalLaw(0.3, 0.4),
    TwoPointLaw(0.3, 2.5, 0.35),
]


# ----------------------------------------------------------------------------------------------
# theory: closed forms against definitions


def _two_point_tuples(law: TwoPointLaw, d: int):
    vals = np.array([law.low, law.high])
    probs = np.array([1 - law.p, law.p])
    idx = np.array(list(itertools.product((0, 1), repeat=d)))
    return vals[idx], np.prod(probs[idx], axis=1)


@pytest.mark.parametrize(("d", "N"), [(1, 1), (2, 3), (5, 7)])
def test_coefficients_by_enumeration(d, N):
    """alpha, beta, omega against E[Gamma_ii lambda_i lambda_j] enumerated over all tuples."""
    law = TwoPointLaw(0.4, 3.0, 0.3)
    lams, P = _two_point_tuples(law, d)
    gam = (1 + 1 / N) * lams + lams.sum(1, keepdims=True) / N
    K = np.einsum("t,ti,ti,tj->ij", P, gam, lams, lams)
    co = trc.random_covariance_coefficients(d, N, law.moments())
    np.testing.assert_allclose(np.diag(K), co.alpha, rtol=1e-13)
    if d > 1:
        np.testing.assert_allclose(K[~np.eye(d, dtype=bool)], co.omega, rtol=1e-13)
    np.testing.assert_allclose(np.einsum("t,ti->i", P, lams**2), co.beta, rtol=1e-13)


def test_exp1_minimum_closed_form():
    for d, N in [(1, 1), (5, 20), (20, 40), (20, 100)]:
        assert trc.random_covariance_minimum(d, N) == pytest.approx(N / (3 * N + d + 5), rel=1e-14)


@pytest.mark.parametrize(("M", "c"), [(1, 1.0), (7, 2.5), (30, 0.3)])
def test_random_test_risk_by_enumeration(M, c):
    """The averaged risk for a general (non-symmetric) G against theory.shift_risk averaged over
    every tuple of a two-point law (an independent fixed-covariance formula)."""
    d = 4
    law = TwoPointLaw(0.5, 2.0, 0.4)
    G = np.random.default_rng(3).normal(size=(d, d))
    lams, P = _two_point_tuples(law, d)
    avg = sum(
        p * theory.shift_risk(G, c * np.diag(lam), c * np.diag(lam), np.eye(d), 0.0, M)
        for lam, p in zip(lams, P, strict=True)
    )
    assert trc.random_test_risk(G, M, c, law.moments()) == pytest.approx(avg, rel=1e-12)
    N = 9
    g = trc.random_covariance_minimum(d, N, law.moments())
    assert trc.random_covariance_risk(d, N, M, c, law.moments()) == pytest.approx(
        trc.random_test_risk(g * np.eye(d), M, c, law.moments()), rel=1e-13
    )


def test_fixed_test_risk_against_theory_risk(aniso_lambda):
    """fixed_test_risk = theory.shift_risk (independent code) and = theory.risk at G = Gamma^-1."""
    d, N, M = 4, 11, 6
    G = np.random.default_rng(1).normal(size=(d, d))
    assert trc.fixed_test_risk(G, aniso_lambda, M) == pytest.approx(
        theory.shift_risk(G, aniso_lambda, aniso_lambda, np.eye(d), 0.0, M), rel=1e-12
    )
    Gi = np.linalg.inv(theory.gamma(aniso_lambda, N))
    assert trc.fixed_test_risk(Gi, aniso_lambda, M) == pytest.approx(
        theory.risk(aniso_lambda, N, M), rel=1e-12
    )
    # the random-trained layer on c I; the I-trained layer on c I is covariate scaling by sqrt(c)
    for c in (0.5, 4.0):
        g = trc.random_covariance_minimum(d, N)
        assert trc.random_trained_fixed_risk(d, N, M, c) == pytest.approx(
            d * (g**2 * c**3 * (1 + (d + 1) / M) - 2 * g * c**2 + c), rel=1e-13
        )
        gi = N / (N + d + 1.0) * np.eye(d)
        assert trc.fixed_test_risk(gi, c * np.eye(d), M) == pytest.approx(
            theory.covariate_scaling_risk_isotropic(d, N, M, math.sqrt(c)), rel=1e-12
        )


def test_risk_identities_and_limits():
    d, N = 6, 15
    co = trc.random_covariance_coefficients(d, N)
    # R(M = N, c = 1) = d (m1 - beta^2/alpha) = 2 min L
    r = trc.random_covariance_risk(d, N, N)
    assert r == pytest.approx(d * (1 - co.beta**2 / co.alpha), rel=1e-14)
    assert r == pytest.approx(2 * trc.random_covariance_min_loss(d, N), rel=1e-14)
    # M, N -> inf: c [(2/3)c^2 - (4/3)c + 1] for Exp(1), discrepancy ~ 1/N
    for c in (1.0, 4.0, 9.0):
        lim = c * (2 / 3 * c**2 - 4 / 3 * c + 1)
        assert trc.random_covariance_limit_risk(c) == pytest.approx(lim, rel=1e-14)
        gaps = [abs(trc.random_covariance_risk(d, n, n, c) / d - lim) for n in (10**5, 10**6)]
        assert gaps[0] / gaps[1] == pytest.approx(10.0, rel=0.02)
    # theory.md §10: 0.333, 25.3, 387 and the fixed-I test 4/9
    assert [round(trc.random_covariance_limit_risk(c), 1) for c in (4.0, 9.0)] == [25.3, 387.0]
    assert trc.random_trained_fixed_risk(d, 10**8, 10**8) / d == pytest.approx(4 / 9, rel=1e-6)


def test_one_third_statements():
    o = trc.one_third_statements(20, 40, 40)
    g = 40 / (3 * 40 + 20 + 5)
    assert o.average_map == pytest.approx(g, rel=1e-14)
    assert o.slope == pytest.approx(2 * g, rel=1e-14)
    assert (o.average_map_limit, o.risk_per_dim_limit, o.slope_limit) == pytest.approx(
        (1 / 3, 1 / 3, 2 / 3), rel=1e-14
    )
    big = trc.one_third_statements(20, 10**9, 10**9)
    assert (big.average_map, big.risk_per_dim, big.slope) == pytest.approx(
        (1 / 3, 1 / 3, 2 / 3), rel=1e-7
    )


def _slope_map_values(key, B, law, d, N, g):
    """y_hat = h^T (g I) x_q (the trained layer's closed-form predictor) with the query from
    the prompt's Lambda, and at a probe x' ~ N(0, I) independent of it."""
    kp, kx = jax.random.split(key)
    p, _ = sample_random_covariance_prompts(kp, law, d, B, N)
    h = jnp.einsum("bn,bnd->bd", p.y, p.X) / N
    xp = jax.random.normal(kx, (B, d))
    yp = jnp.einsum("bd,bd->b", xp, p.w)
    return jnp.stack(
        [g * jnp.sum(h * p.x_q, 1) * p.y_q, p.y_q**2, g * jnp.sum(h * xp, 1) * yp, yp**2], 1
    )


def test_slope_and_map_by_monte_carlo(key):
    """E[y_hat y_q] = g c^2 d m2 (slope g m2/m1) and E[y_hat(x') <w, x'>] = g d m1 (map g m1),
    with their MC standard errors (|z| <= 4). The slope is twice the map for Exp(1)."""
    d, N = 4, 9
    law = LogNormalLaw(0.2, 0.5)
    m1, m2, _ = law.moments()
    g = trc.random_covariance_minimum(d, N, law.moments())
    e = mc_means(_slope_map_values, key, 200_000, law, d, N, g, batch_size=100_000)
    assert abs(e[0].z(g * d * m2)) <= 4 and abs(e[1].z(d * m1)) <= 4
    assert abs(e[2].z(g * d * m1)) <= 4 and abs(e[3].z(d)) <= 4
    assert trc.regression_slope(d, N, 1.0, law.moments()) == pytest.approx(g * m2 / m1)
    # a conflation (slope = map) is far outside the MC error
    assert abs(e[0].z(g * d * m1 * m1)) > 20


def test_sigma_bounds_theory():
    b = trc.theorem45_sigma_bounds(4, 1.0, 2.0, 10.0)
    assert b["mean"] == pytest.approx(math.sqrt(2 * 1 / (2 * 10)))
    assert b["conservative"] == b["mean"] < b["second"]
    Th = np.random.default_rng(0).normal(size=(4, 4))
    Th = Th / math.sqrt(np.linalg.norm(Th @ Th.T))
    a, s = trc.theorem45_numerators(Th)
    assert s / a == pytest.approx(2.0)  # m2 / m1^2 for Exp(1)


@pytest.mark.parametrize(
    ("moments", "needle"),
    [
        ((1.0, 0.5, 6.0), "m2"),
        ((1.0, 2.0, 3.0), "m1 m3"),
        ((0.0, 2.0, 6.0), "m1"),
        ((1.0, 2.0), "three"),
        ("abc", "sequence"),
        ((1.0, float("nan"), 6.0), "m2"),
    ],
)
def test_bad_moments(moments, needle):
    with pytest.raises(ValueError, match=needle):
        trc.random_covariance_minimum(3, 5, moments)


def test_bad_sizes_theory():
    with pytest.raises(ValueError, match="N"):
        trc.random_covariance_risk(3, 0, 5)
    with pytest.raises(ValueError, match="c"):
        trc.random_covariance_risk(3, 4, 5, c=-1.0)
    with pytest.raises(ValueError, match="M"):
        trc.random_covariance_risk(3, 4, 2.5)


# ----------------------------------------------------------------------------------------------
# lsa: laws, exact loss, flow


def _moment_values(key, B, law):
    lam = law.sample(key, (B,))
    return jnp.stack([lam, lam**2, lam**3], 1)


@pytest.mark.parametrize("law", LAWS, ids=repr)
def test_law_moments_match_sampler(law, key):
    """The stated moments against the sampler (|z| <= 4) and validated by theory's check."""
    est = mc_means(_moment_values, key, 200_000, law, batch_size=100_000)
    m = law.moments()
    for e, mk in zip(est, m, strict=True):
        assert abs(e.z(mk)) <= 4, (law, e, mk)
    trc.check_moments(m)
    lam = np.asarray(law.sample(key, (1000,)))
    assert lam.dtype == np.float64 and np.all(lam > 0)
    np.testing.assert_array_equal(lam, np.asarray(law.sample(key, (1000,))))  # reproducible


def test_loss_against_theory_and_prompts(key):
    """lsa's exact loss (moment tensor) = theory's C.5 at random (u, U); its gradient by jax =
    the ODE (C.4); and a fixed-Lambda average: the mean over sampled Lambda of the fixed-Lambda
    reduced loss (lsa.population_loss) approaches it (|z| <= 4)."""
    rng = np.random.default_rng(5)
    for law, d, N in [
        (ExponentialLaw(3.0), 3, 4),
        (UniformLaw(0.1, 0.2), 5, 1),
    ]:
        U = rng.normal(size=(d, d))
        u = float(rng.normal())
        L = float(random_covariance_loss(u, U, N, law))
        assert L == pytest.approx(trc.random_covariance_loss(u, U, N, law.moments()), rel=1e-12)
        gu, gU = random_covariance_loss_grad(u, jnp.asarray(U), N, law)
        co = trc.random_covariance_coefficients(d, N, law.moments())
        Kc = np.full((d, d), co.omega)
        np.fill_diagonal(Kc, co.alpha)
        dU = u**2 * Kc * U - co.beta * u * np.eye(d)
        du = u * np.sum(Kc * U**2) - co.beta * np.trace(U)
        np.testing.assert_allclose(np.asarray(gU), dU, rtol=1e-12, atol=1e-12 * np.abs(dU).max())
        assert float(gu) == pytest.approx(du, rel=1e-12)
    law, d, N = LogNormalLaw(0.1, 0.4), 3, 4
    U, u = rng.normal(size=(d, d)), 0.7
    lams = np.asarray(law.sample(key, (20_000, d)))
    vals = jax.vmap(lambda lam: lsa.population_loss(U, u, jnp.diag(lam), N))(jnp.asarray(lams))
    vals = np.asarray(vals)
    z = (vals.mean() - float(random_covariance_loss(u, U, N, law))) / (
        vals.std(ddof=1) / np.sqrt(vals.size)
    )
    assert abs(z) <= 4


def test_coefficients_scale():
    K, b, e = second_order_coefficients(3, 5, ExponentialLaw(2.0))
    K1, b1, e1 = second_order_coefficients(3, 5, ExponentialLaw(1.0))
    np.testing.assert_allclose(K, 8 * K1, rtol=1e-15)
    np.testing.assert_allclose(b, 4 * b1, rtol=1e-15)
    assert e == 2 * e1


def test_flow_reaches_g_random_settings():
    """Random d in 2..8, N, laws with means far from 1: u U -> g I (<= 1e-8), balance conserved,
    limits (C.15), loss -> min L. Step counts do not depend on the law's scale."""
    rng = np.random.default_rng(11)
    steps = {}
    for i in range(4):
        d = int(rng.integers(2, 9))
        N = int(rng.integers(1, 40))
        base = [
            ExponentialLaw(),
            UniformLaw(0.1, 2.0),
            LogNormalLaw(0.0, 0.6),
            TwoPointLaw(0.2, 3.0, 0.3),
        ][i]
        for scale in (0.01, 100.0):
            law = ScaledLaw(base, scale)
            init = random_covariance_init(d, N, law, sigma_fraction=0.4, key=jax.random.PRNGKey(i))
            res = random_covariance_flow(d, N, law, init)
            mom = law.moments()
            g = trc.random_covariance_minimum(d, N, mom)
            assert res.stop_reason == "converged"
            assert (
                np.linalg.norm(res.product - g * np.eye(d)) / np.linalg.norm(g * np.eye(d)) <= 1e-8
            )
            assert np.max(np.abs(res.balance)) <= 1e-9 * np.max(res.u**2)
            u_s, _ = trc.random_covariance_limits(d, N, mom)
            assert res.u_final == pytest.approx(u_s, rel=1e-8)
            assert res.loss[-1] == pytest.approx(
                trc.random_covariance_min_loss(d, N, mom), rel=1e-9
            )
            assert np.all(np.diff(res.loss) <= 1e-12 * abs(res.loss[0]))
            steps.setdefault(i, set()).add(res.stats["num_steps"])
    assert all(len(s) == 1 for s in steps.values()), steps


def test_flow_matches_lemma_c1_ode():
    """The trajectory against an independent integration of theory's ODE (C.4) by scipy's
    DOP853 at a common time (t_end): the same state to 1e-7."""
    from scipy.integrate import solve_ivp

    d, N, law = 3, 5, LogNormalLaw(-0.5, 0.5)
    init = random_covariance_init(d, N, law, sigma_fraction=0.5, key=jax.random.PRNGKey(3))
    res = random_covariance_flow(d, N, law, init, t_end=3.0, eps=1e-14)
    co = trc.random_covariance_coefficients(d, N, law.moments())
    K = np.full((d, d), co.omega)
    np.fill_diagonal(K, co.alpha)

    def f(t, y):
        U, u = y[:-1].reshape(d, d), y[-1]
        dU = -(u**2) * K * U + co.beta * u * np.eye(d)
        return np.concatenate([dU.ravel(), [-u * np.sum(K * U**2) + co.beta * np.trace(U)]])

    y0 = np.concatenate([np.asarray(init.U).ravel(), [float(init.u)]])
    ref = solve_ivp(f, (0, 3.0), y0, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
    assert res.stop_reason == "t_end" and res.t_final == 3.0
    np.testing.assert_allclose(
        np.concatenate([res.U_final.ravel(), [res.u_final]]), ref, rtol=1e-7, atol=1e-9
    )


def test_sigma_warning_and_bounds():
    d, N, law = 4, 6, ExponentialLaw()
    T = np.eye(d) / 2.0
    b = theorem45_sigma_bounds(d, N, law, T)
    # both candidates lie below the exact threshold of l(0) < 0 (theory)
    exact = trc.initial_loss_sigma_bound(np.linalg.cholesky(T), N, law.moments())
    assert b["conservative"] == b["mean"] < b["second"] < exact
    # theory's form of the same numbers
    den = b["denominator"]
    tb = trc.theorem45_sigma_bounds(d, *trc.theorem45_numerators(np.linalg.cholesky(T)), den)
    assert tb["mean"] == pytest.approx(b["mean"], rel=1e-12)
    assert tb["second"] == pytest.approx(b["second"], rel=1e-12)
    # the denominator by brute force (independent MC)
    lam = np.random.default_rng(0).exponential(size=(200_000, d))
    v = ((1 + 1 / N) * lam.max(1) + lam.sum(1) / N) * np.sum(lam**2, 1)
    assert abs(den - v.mean()) <= 4 * (v.std() / math.sqrt(v.size) + 0.01 * den)
    with pytest.warns(lsa.TheoremCoverageWarning, match="Theorem 4.5"):
        init = random_covariance_init(d, N, law, sigma=1.01 * b["conservative"], Theta=np.eye(d))
    with pytest.warns(lsa.TheoremCoverageWarning):
        random_covariance_flow(d, N, law, init)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        random_covariance_init(d, N, law, sigma=0.99 * b["conservative"], Theta=np.eye(d))


def test_flow_errors():
    d, N, law = 2, 3, ExponentialLaw()
    init = random_covariance_init(d, N, law, sigma_fraction=0.5, Theta=np.eye(d))
    with pytest.raises(lsa.flow.FlowError) as exc:
        random_covariance_flow(d, N, law, init, margin=1e-4)
    assert exc.value.status == "horizon" and "last_state" in exc.value.diagnostics
    with pytest.raises(ValueError, match=r"init\.U"):
        random_covariance_flow(3, N, law, init)
    with pytest.raises(ValueError, match="law"):
        random_covariance_flow(d, N, np.eye(2), init)
    with pytest.raises(ValueError, match="N"):
        random_covariance_flow(d, 0, law, init)
    with pytest.raises(ValueError, match="t_end"):
        random_covariance_flow(d, N, law, init, t_end=-1.0)
    bad = lsa.Init(u=jnp.asarray(float("nan")), U=init.U)
    with pytest.raises(ValueError, match=r"init\.u"):
        random_covariance_flow(d, N, law, bad)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: ExponentialLaw(-1.0), "ExponentialLaw"),
        (lambda: GammaLaw(0.0), "GammaLaw"),
        (lambda: UniformLaw(2.0, 1.0), "low < high"),
        (lambda: UniformLaw(-1.0, 1.0), "UniformLaw"),
        (lambda: LogNormalLaw(0.0, -0.1), "LogNormalLaw"),
        (lambda: TwoPointLaw(1.0, 2.0, 1.5), "probability"),
        (lambda: TwoPointLaw(0.0, 2.0), "TwoPointLaw"),
    ],
)
def test_bad_laws(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_prompts_share_covariance(key):
    """Given Lambda_tau the prompt and the query are N(0, Lambda_tau): E[x_q,i^2 / lambda_i] = 1
    and the query's scale tracks the prompt's (corr of x_q,i^2 with mean_n x_n,i^2 > 0)."""
    law = ExponentialLaw()
    p, lam = sample_random_covariance_prompts(key, law, 3, 20_000, 5)
    r = np.asarray(p.x_q**2 / lam)
    assert abs(r.mean() - 1) <= 4 * r.std() / math.sqrt(r.size)
    c = np.corrcoef(np.asarray(p.x_q[:, 0] ** 2), np.asarray(jnp.mean(p.X[:, :, 0] ** 2, 1)))[0, 1]
    assert c > 0.1
    pa, la = sample_random_covariance_prompts(key, law, 3, 10, 5, antithetic=True)
    np.testing.assert_array_equal(np.asarray(pa.w[:5]), -np.asarray(pa.w[5:]))
    np.testing.assert_array_equal(np.asarray(la[:5]), np.asarray(la[5:]))
