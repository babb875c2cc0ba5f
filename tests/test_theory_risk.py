"""Tests of theory/risk.py against independent computations (theory.md §6–§8, §11.3, §14).

Independent references used here: the full LSA map built literally from E, float64 Monte Carlo
with literal prompt sampling (z-scores against the sample standard error), explicit least-squares
solves, scipy BFGS, exact identities between formulas derived separately, and large-argument
limits.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from theory import (
    corollary43_epsilon,
    covariate_scaling_limit,
    covariate_scaling_risk,
    covariate_scaling_risk_isotropic,
    covariate_shift_risk,
    fixed_task_risk,
    gd_G,
    ilwd_linear,
    limit_weights,
    min_loss,
    minnorm_ols_risk,
    noisy_training_minimiser,
    ols_risk,
    optimal_preconditioner,
    prompt_moment,
    query_shift_risk,
    risk,
    risk_floor,
    risk_isotropic,
    risk_limit_large_N,
    shift_risk,
    shift_risk_limit,
    spd_linear,
    task_shift_risk,
    theorem42_average_bound,
    theorem42_risk,
    trained_prediction,
)

D = 4
N_TRAIN = 5
M_TEST = 12  # far enough from N that "Gamma built with M" gives |z| >> Z_MAX in MC rows
Z_MAX = 4.0  # acceptance bound on |z| for every Monte Carlo row, fixed in advance
N_MC = 200_000


def make_lambda(d: int = D, seed: int = 0, spread: float = 10.0) -> np.ndarray:
    """Anisotropic, non-diagonal SPD matrix: eigenvalues spread `spread`x, randomly rotated."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = (q * np.geomspace(0.4, 0.4 * spread, d)) @ q.T
    return 0.5 * (lam + lam.T)


def gamma_inv_direct(lam: np.ndarray, n: int) -> np.ndarray:
    d = lam.shape[0]
    return np.linalg.inv((n + 1) / n * lam + np.trace(lam) / n * np.eye(d))


def sqrtm_sym(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def zscore(samples: np.ndarray, closed: float) -> float:
    return float((samples.mean() - closed) / (samples.std(ddof=1) / np.sqrt(samples.size)))


LAM = make_lambda()
OMEGA = make_lambda(D, seed=21, spread=5.0) * 1.3  # a different query / covariate law
SIGMA_W = make_lambda(D, seed=22, spread=6.0) * 0.5  # a non-identity task second moment


def full_lsa_prediction(
    x: np.ndarray, y: np.ndarray, x_q: np.ndarray, W_PV: np.ndarray, W_KQ: np.ndarray, rho: float
) -> np.ndarray:
    """Bottom-right entry of f_LSA(E) = E + W_PV E (E^T W_KQ E)/rho, E built literally (§2)."""
    B, M, d = x.shape
    E = np.zeros((B, d + 1, M + 1))
    E[:, :d, :M] = x.transpose(0, 2, 1)
    E[:, :d, M] = x_q
    E[:, d, :M] = y
    attn = E.transpose(0, 2, 1) @ (W_KQ @ E)  # E^T W_KQ E, shape (B, M+1, M+1)
    f = E + (W_PV @ E) @ attn / rho
    return f[:, d, M]


# ------------------------------------------------------------------------------------------------
# §6: the trained layer


def test_trained_prediction_equals_full_lsa_map() -> None:
    rng = np.random.default_rng(0)
    W_PV, W_KQ = limit_weights(LAM, N_TRAIN)
    chol = np.linalg.cholesky(LAM)
    for M in (2, 7, 11):
        x = rng.standard_normal((20, M, D)) @ chol.T
        x_q = rng.standard_normal((20, D)) @ chol.T
        y = rng.standard_normal((20, M))
        pred = trained_prediction(x, y, x_q, LAM, N_TRAIN)
        full = full_lsa_prediction(x, y, x_q, W_PV, W_KQ, rho=M)
        np.testing.assert_allclose(pred, full, rtol=1e-11, atol=1e-12)
        # trap 1: rho = N at test multiplies every prediction by M/N
        wrong = full_lsa_prediction(x, y, x_q, W_PV, W_KQ, rho=N_TRAIN)
        np.testing.assert_allclose(wrong, pred * M / N_TRAIN, rtol=1e-11, atol=1e-12)


def test_risk_monte_carlo_full_map() -> None:
    """R(N, M) at M != N against MC on the full LSA map at W_* with rho = M."""
    rng = np.random.default_rng(1)
    W_PV, W_KQ = limit_weights(LAM, N_TRAIN)
    chol = np.linalg.cholesky(LAM)
    x = rng.standard_normal((N_MC, M_TEST, D)) @ chol.T
    x_q = rng.standard_normal((N_MC, D)) @ chol.T
    w = rng.standard_normal((N_MC, D))
    y = np.einsum("bmd,bd->bm", x, w)
    y_hat = full_lsa_prediction(x, y, x_q, W_PV, W_KQ, rho=M_TEST)
    sq = (y_hat - np.einsum("bd,bd->b", w, x_q)) ** 2
    assert abs(zscore(sq, risk(LAM, N_TRAIN, M_TEST))) <= Z_MAX


# ------------------------------------------------------------------------------------------------
# §7: R(N, M), its limits and bounds


@pytest.mark.parametrize("n", [1, 2, 5, 9, 40])
def test_risk_at_M_equals_N_is_twice_min_loss(n: int) -> None:
    assert risk(LAM, n, n) == pytest.approx(2.0 * min_loss(LAM, n), rel=1e-12)


@pytest.mark.parametrize(("d", "n", "m"), [(1, 1, 1), (3, 5, 7), (4, 10, 3), (5, 2, 50)])
def test_risk_isotropic_matches_general(d: int, n: int, m: int) -> None:
    assert risk_isotropic(d, n, m) == pytest.approx(risk(np.eye(d), n, m), rel=1e-12)
    if n == m:
        assert risk_isotropic(d, n, m) == pytest.approx(d * (d + 1) / (n + d + 1), rel=1e-13)


def test_risk_floor_is_large_M_limit() -> None:
    floor = risk_floor(LAM, N_TRAIN)
    g_inv = gamma_inv_direct(LAM, N_TRAIN)
    a = np.eye(D) - g_inv @ LAM
    assert floor == pytest.approx(np.trace(LAM @ a @ a), rel=1e-12)
    e1 = risk(LAM, N_TRAIN, 10_000) - floor
    e2 = risk(LAM, N_TRAIN, 100_000) - floor
    assert e1 > e2 > 0
    assert e1 / e2 == pytest.approx(10.0, rel=1e-4)


def test_risk_limit_large_N() -> None:
    lim = risk_limit_large_N(LAM, M_TEST)
    e1 = abs(risk(LAM, 10_000, M_TEST) - lim)
    e2 = abs(risk(LAM, 100_000, M_TEST) - lim)
    assert e1 > e2 > 0
    assert e1 / e2 == pytest.approx(10.0, rel=1e-2)


def test_paper_bounds_hold_on_grid() -> None:
    for lam in (LAM, make_lambda(3, 5, 30.0), np.eye(D)):
        for n in (1, 2, 3, 5, 10, 50, 400):
            eps = corollary43_epsilon(lam, n)
            d = lam.shape[0]
            ev = np.linalg.eigvalsh(lam)
            assert eps == pytest.approx(
                (1 + 2 * d + d * d * ev[-1] / ev[0]) * np.trace(lam) / n**2, rel=1e-12
            )
            for m in (1, 2, 5, 7, 30, 1000):
                r = risk(lam, n, m)
                bound, coarser = theorem42_average_bound(lam, n, m)
                assert r <= bound <= coarser
                assert r <= (d + 1) * np.trace(lam) / m + eps


def test_fixed_task_risk_average_equals_risk() -> None:
    """The §7.2 formula is a quadratic form in w, so E_w over N(0, I) = sum over basis vectors."""
    for n, m in [(N_TRAIN, M_TEST), (3, 3), (20, 2)]:
        avg = sum(fixed_task_risk(e, LAM, n, m) for e in np.eye(D))
        assert avg == pytest.approx(risk(LAM, n, m), rel=1e-12)


def test_theorem42_reduces_to_fixed_task() -> None:
    rng = np.random.default_rng(2)
    for _ in range(3):
        w = rng.standard_normal(D)
        sig = (w @ LAM @ w) * LAM + np.outer(LAM @ w, LAM @ w)
        r42 = theorem42_risk(LAM, N_TRAIN, M_TEST, w, sig, 0.0)
        assert r42 == pytest.approx(fixed_task_risk(w, LAM, N_TRAIN, M_TEST), rel=1e-12)


def test_theorem42_monte_carlo_noisy_nonlinear_task() -> None:
    """Thm 4.2 for y = w^T x + beta((v^T x)^2 - v^T Lambda v) + eps, MC on the full LSA map.

    Gaussian moments: E[x y] = Lambda w, best linear error = 2 beta^2 s_v^4 + s2 with
    s_v^2 = v^T Lambda v, and Cov(x y) = (w^T Lambda w + s2 + 2 beta^2 s_v^4) Lambda
    + Lambda w w^T Lambda + 8 beta^2 s_v^2 Lambda v v^T Lambda.
    """
    rng = np.random.default_rng(3)
    w = np.array([0.7, -0.4, 0.2, 0.5])
    v = np.array([0.1, 0.6, -0.3, 0.2])
    beta, s2 = 0.5, 0.3
    sv2 = v @ LAM @ v
    lw, lv = LAM @ w, LAM @ v
    sig = (w @ LAM @ w + s2 + 2 * beta**2 * sv2**2) * LAM + np.outer(lw, lw)
    sig += 8 * beta**2 * sv2 * np.outer(lv, lv)
    best = 2 * beta**2 * sv2**2 + s2
    closed = theorem42_risk(LAM, N_TRAIN, M_TEST, w, sig, best)

    chol = np.linalg.cholesky(LAM)
    x = rng.standard_normal((N_MC, M_TEST + 1, D)) @ chol.T
    y = x @ w + beta * ((x @ v) ** 2 - sv2) + np.sqrt(s2) * rng.standard_normal((N_MC, M_TEST + 1))
    W_PV, W_KQ = limit_weights(LAM, N_TRAIN)
    y_hat = full_lsa_prediction(x[:, :-1], y[:, :-1], x[:, -1], W_PV, W_KQ, rho=M_TEST)
    assert abs(zscore((y_hat - y[:, -1]) ** 2, closed)) <= Z_MAX


# ------------------------------------------------------------------------------------------------
# §8: shifts


def test_no_shift_equals_risk() -> None:
    g_inv = gamma_inv_direct(LAM, N_TRAIN)
    for m in (1, M_TEST, 40):
        r = risk(LAM, N_TRAIN, m)
        assert shift_risk(g_inv, LAM, LAM, np.eye(D), 0.0, m) == pytest.approx(r, rel=1e-11)
        assert task_shift_risk(LAM, N_TRAIN, m, np.eye(D)) == pytest.approx(r, rel=1e-11)
        assert query_shift_risk(LAM, N_TRAIN, m, LAM) == pytest.approx(r, rel=1e-11)
        assert covariate_shift_risk(LAM, N_TRAIN, m, LAM) == pytest.approx(r, rel=1e-11)
        assert covariate_scaling_risk(LAM, N_TRAIN, m, 1.0) == pytest.approx(r, rel=1e-11)


def test_named_cases_against_general_formula() -> None:
    """The named cases are coded from the §8.5 expressions (eigenbasis sums or explicit traces),
    independently of the general §8.3 expression; they must agree to round-off."""
    g_inv = gamma_inv_direct(LAM, N_TRAIN)
    m = M_TEST
    for s2, noisy in [(0.0, False), (0.4, False), (0.4, True)]:
        ref = shift_risk(g_inv, LAM, LAM, SIGMA_W, s2, m, noisy_target=noisy)
        got = task_shift_risk(LAM, N_TRAIN, m, SIGMA_W, s2, noisy_target=noisy)
        assert got == pytest.approx(ref, rel=1e-11)
    ref = shift_risk(g_inv, LAM, OMEGA, np.eye(D), 0.0, m)
    assert query_shift_risk(LAM, N_TRAIN, m, OMEGA) == pytest.approx(ref, rel=1e-11)
    ref = shift_risk(g_inv, OMEGA, OMEGA, np.eye(D), 0.0, m)
    assert covariate_shift_risk(LAM, N_TRAIN, m, OMEGA) == pytest.approx(ref, rel=1e-11)
    for c in (0.5, 2.0):
        ref = covariate_shift_risk(LAM, N_TRAIN, m, c * c * LAM)
        assert covariate_scaling_risk(LAM, N_TRAIN, m, c) == pytest.approx(ref, rel=1e-11)
    # label noise adds s2 tr(Gamma^-2 Lambda^2)/M (§8.5)
    extra = task_shift_risk(LAM, N_TRAIN, m, SIGMA_W, 0.4) - task_shift_risk(
        LAM, N_TRAIN, m, SIGMA_W, 0.0
    )
    assert extra == pytest.approx(0.4 * np.trace(g_inv @ g_inv @ LAM @ LAM) / m, rel=1e-10)


@pytest.mark.parametrize(("d", "n", "m", "c"), [(3, 5, 7, 2.0), (4, 2, 30, 0.5), (1, 1, 1, 3.0)])
def test_covariate_scaling_isotropic(d: int, n: int, m: int, c: float) -> None:
    got = covariate_scaling_risk_isotropic(d, n, m, c)
    assert got == pytest.approx(covariate_scaling_risk(np.eye(d), n, m, c), rel=1e-12)


def test_covariate_scaling_limit() -> None:
    for c in (0.5, 2.0, 3.0):
        lim = covariate_scaling_limit(LAM, c)
        assert lim == pytest.approx(c**2 * (c**2 - 1) ** 2 * np.trace(LAM), rel=1e-13)
        e1 = abs(covariate_scaling_risk(LAM, 10**5, 10**5, c) - lim)
        e2 = abs(covariate_scaling_risk(LAM, 10**6, 10**6, c) - lim)
        assert e2 < 1e-4 * lim
        assert e1 / e2 == pytest.approx(10.0, rel=1e-2)


def test_shift_risk_limit_large_M() -> None:
    g = gamma_inv_direct(LAM, N_TRAIN)
    lim = shift_risk_limit(g, OMEGA, LAM, SIGMA_W)
    e1 = shift_risk(g, OMEGA, LAM, SIGMA_W, 0.3, 10**4) - lim
    e2 = shift_risk(g, OMEGA, LAM, SIGMA_W, 0.3, 10**5) - lim
    assert abs(e2) < abs(e1)
    assert e1 / e2 == pytest.approx(10.0, rel=1e-6)
    # §8.5: covariate-shift limit with M, N -> inf is tr(Omega (L^-1 Omega - I)(Omega L^-1 - I))
    li = np.linalg.inv(LAM)
    ref = np.trace(OMEGA @ (li @ OMEGA - np.eye(D)) @ (OMEGA @ li - np.eye(D)))
    assert shift_risk_limit(li, OMEGA, OMEGA, np.eye(D)) == pytest.approx(ref, rel=1e-11)


def _prompts(rng: np.random.Generator, lam_x: np.ndarray, w: np.ndarray, s2: float, m: int):
    n = w.shape[0]
    x = rng.standard_normal((n, m, lam_x.shape[0])) @ np.linalg.cholesky(lam_x).T
    y = np.einsum("bmd,bd->bm", x, w) + np.sqrt(s2) * rng.standard_normal((n, m))
    h = np.einsum("bm,bmd->bd", y, x) / m
    return h


def test_shift_risk_monte_carlo_non_gaussian_task_and_query() -> None:
    """General §8.3 formula: Rademacher-based w (E ww^T = Sigma_w), Rademacher-based query
    (E x_q x_q^T = Omega), label noise, noisy target, a generic non-symmetric G."""
    rng = np.random.default_rng(4)
    G = gamma_inv_direct(LAM, N_TRAIN) + 0.1 * rng.standard_normal((D, D))
    lam_x = make_lambda(D, seed=30, spread=4.0)
    s2, m = 0.5, M_TEST
    w = rng.choice([-1.0, 1.0], size=(N_MC, D)) @ sqrtm_sym(SIGMA_W)
    h = _prompts(rng, lam_x, w, s2, m)
    x_q = rng.choice([-1.0, 1.0], size=(N_MC, D)) @ sqrtm_sym(OMEGA)
    y_hat = np.einsum("bi,ij,bj->b", h, G, x_q)
    target = np.einsum("bd,bd->b", w, x_q) + np.sqrt(s2) * rng.standard_normal(N_MC)
    closed = shift_risk(G, lam_x, OMEGA, SIGMA_W, s2, m, noisy_target=True)
    assert abs(zscore((y_hat - target) ** 2, closed)) <= Z_MAX
    # E[h h^T] itself, entrywise
    ehh = prompt_moment(lam_x, SIGMA_W, s2, m)
    hh = np.einsum("bi,bj->bij", h, h)
    z = (hh.mean(0) - ehh) / (hh.std(0, ddof=1) / np.sqrt(N_MC))
    assert np.max(np.abs(z)) <= Z_MAX


def test_covariate_scaling_monte_carlo_full_map() -> None:
    rng = np.random.default_rng(5)
    c, m = 1.5, M_TEST
    W_PV, W_KQ = limit_weights(LAM, N_TRAIN)
    chol = c * np.linalg.cholesky(LAM)
    x = rng.standard_normal((N_MC, m + 1, D)) @ chol.T
    w = rng.standard_normal((N_MC, D))
    y = np.einsum("bmd,bd->bm", x, w)
    y_hat = full_lsa_prediction(x[:, :-1], y[:, :-1], x[:, -1], W_PV, W_KQ, rho=m)
    closed = covariate_scaling_risk(LAM, N_TRAIN, m, c)
    assert abs(zscore((y_hat - y[:, -1]) ** 2, closed)) <= Z_MAX


# ------------------------------------------------------------------------------------------------
# §8.4, §8.6: optimal preconditioner and noisy training


def test_optimal_preconditioner_bfgs() -> None:
    lam_x = make_lambda(D, seed=31, spread=3.0)
    s2, m = 0.3, M_TEST
    g_star = optimal_preconditioner(lam_x, SIGMA_W, s2, m)

    def fun(g: np.ndarray) -> float:
        return shift_risk(g.reshape(D, D), lam_x, OMEGA, SIGMA_W, s2, m)

    res = minimize(fun, np.zeros(D * D), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(res.x.reshape(D, D), g_star, atol=1e-5)
    assert fun(g_star.ravel()) <= res.fun + 1e-12
    # the minimiser does not depend on the query law
    res2 = minimize(
        lambda g: shift_risk(g.reshape(D, D), lam_x, np.eye(D), SIGMA_W, s2, m),
        np.zeros(D * D),
        method="BFGS",
        options={"gtol": 1e-10},
    )
    np.testing.assert_allclose(res2.x.reshape(D, D), g_star, atol=1e-5)


def test_optimal_preconditioner_is_gamma_inv_under_training_law() -> None:
    for n in (1, 3, N_TRAIN, 30):
        g_star = optimal_preconditioner(LAM, np.eye(D), 0.0, n)
        np.testing.assert_allclose(g_star, gamma_inv_direct(LAM, n), rtol=1e-10, atol=1e-12)


def test_noisy_training_minimiser() -> None:
    for s2 in (0.0, 0.25, 2.0):
        got = noisy_training_minimiser(LAM, N_TRAIN, s2)
        np.testing.assert_allclose(
            got, optimal_preconditioner(LAM, np.eye(D), s2, N_TRAIN), rtol=1e-10, atol=1e-12
        )
    # isotropic: a GD step of size N/(N + d + 1 + s2)
    n, s2 = 7, 0.6
    np.testing.assert_allclose(
        noisy_training_minimiser(np.eye(3), n, s2), n / (n + 3 + 1 + s2) * np.eye(3), rtol=1e-13
    )


# ------------------------------------------------------------------------------------------------
# §8.7 baselines, Monte Carlo with explicit least squares


def test_ols_risk_monte_carlo() -> None:
    rng = np.random.default_rng(6)
    n_mc, m, s2 = N_MC, 12, 0.5
    lam_x = LAM
    w = rng.standard_normal((n_mc, D))
    x = rng.standard_normal((n_mc, m, D)) @ np.linalg.cholesky(lam_x).T
    y = np.einsum("bmd,bd->bm", x, w) + np.sqrt(s2) * rng.standard_normal((n_mc, m))
    w_hat = np.einsum("bdm,bm->bd", np.linalg.pinv(x), y)  # least squares, full column rank
    np.testing.assert_allclose(w_hat[0], np.linalg.lstsq(x[0], y[0], rcond=None)[0], rtol=1e-10)
    x_q = rng.standard_normal((n_mc, D)) @ np.linalg.cholesky(OMEGA).T
    err = np.einsum("bd,bd->b", w_hat - w, x_q) ** 2
    assert abs(zscore(err, ols_risk(s2, OMEGA, lam_x, m))) <= Z_MAX


def test_minnorm_ols_risk_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    d, m, tau2, s2 = 8, 3, 0.7, 0.4
    w = np.sqrt(tau2) * rng.standard_normal((N_MC, d))
    x = rng.standard_normal((N_MC, m, d))
    y = np.einsum("bmd,bd->bm", x, w) + np.sqrt(s2) * rng.standard_normal((N_MC, m))
    w_hat = np.einsum("bdm,bm->bd", np.linalg.pinv(x), y)  # minimum-norm solution
    x_q = rng.standard_normal((N_MC, d))
    err = np.einsum("bd,bd->b", w_hat - w, x_q) ** 2
    assert abs(zscore(err, minnorm_ols_risk(d, m, tau2, s2))) <= Z_MAX


# ------------------------------------------------------------------------------------------------
# §11: GD(alpha), SPD, ILWD


def test_gd_G_matches_one_gd_step() -> None:
    rng = np.random.default_rng(8)
    alpha, m = 0.02, 9
    x = rng.standard_normal((m, D))
    y = rng.standard_normal(m)
    x_q = rng.standard_normal(D)
    w1 = np.zeros(D) - 2 * alpha * (x.T @ x @ np.zeros(D) - x.T @ y)
    h = (y[:, None] * x).mean(0)
    assert h @ gd_G(alpha, m, D) @ x_q == pytest.approx(w1 @ x_q, rel=1e-13)


def test_spd_ilwd_monte_carlo_with_probe_fit() -> None:
    rng = np.random.default_rng(9)
    n_mc, m, s2 = N_MC, M_TEST, 0.2
    g1 = gamma_inv_direct(LAM, N_TRAIN)
    g2 = gd_G(0.02, m, D)
    w = rng.standard_normal((n_mc, D))
    h = _prompts(rng, LAM, w, s2, m)
    ehh = prompt_moment(LAM, np.eye(D), s2, m)
    chol = np.linalg.cholesky(LAM)
    x_q = rng.standard_normal((n_mc, D)) @ chol.T
    spd = (np.einsum("bi,ij,bj->b", h, g1, x_q) - np.einsum("bi,ij,bj->b", h, g2, x_q)) ** 2
    assert abs(zscore(spd, spd_linear(g1, g2, LAM, ehh))) <= Z_MAX
    # ILWD: label k = d + 2 probe points per prompt with each predictor and fit w by least squares
    k = D + 2
    probes = rng.standard_normal((n_mc, k, D)) @ chol.T
    p1 = np.einsum("bi,ij,bkj->bk", h, g1, probes)
    p2 = np.einsum("bi,ij,bkj->bk", h, g2, probes)
    ptp = np.einsum("bki,bkj->bij", probes, probes)
    w1 = np.linalg.solve(ptp, np.einsum("bki,bk->bi", probes, p1)[..., None])[..., 0]
    w2 = np.linalg.solve(ptp, np.einsum("bki,bk->bi", probes, p2)[..., None])[..., 0]
    il = np.sum((w1 - w2) ** 2, axis=1)
    assert abs(zscore(il, ilwd_linear(g1, g2, ehh))) <= Z_MAX


# ------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_lambda_in_risk() -> None:
    bad = LAM.copy()
    bad[0, 2] += 1e-3
    with pytest.raises(ValueError, match="Lambda is not symmetric"):
        risk(bad, N_TRAIN, M_TEST)
    with pytest.raises(ValueError, match="Lambda is not positive definite"):
        risk_floor(-LAM, N_TRAIN)
    with pytest.raises(ValueError, match="Lambda contains NaN"):
        risk_limit_large_N(np.full((2, 2), np.nan), 3)
    with pytest.raises(ValueError, match="Lambda_x is not positive definite"):
        prompt_moment(np.zeros((D, D)), np.eye(D), 0.0, 3)
    with pytest.raises(ValueError, match="Lambda_x must be a non-empty square"):
        shift_risk(np.eye(D), np.ones((D, D + 1)), OMEGA, np.eye(D), 0.0, 3)


@pytest.mark.parametrize("bad", [0, -3, 1.5, "7", None])
def test_bad_N_M(bad: object) -> None:
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        risk(LAM, bad, M_TEST)
    with pytest.raises(ValueError, match="M must be an integer >= 1"):
        risk(LAM, N_TRAIN, bad)
    with pytest.raises(ValueError, match="M must be an integer >= 1"):
        risk_isotropic(3, N_TRAIN, bad)
    with pytest.raises(ValueError, match="M must be an integer >= 1"):
        shift_risk(np.eye(D), LAM, OMEGA, np.eye(D), 0.0, bad)
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        corollary43_epsilon(LAM, bad)


def test_mismatched_shapes() -> None:
    e5 = np.eye(D + 1)
    with pytest.raises(ValueError, match="G has shape"):
        shift_risk(e5, LAM, OMEGA, np.eye(D), 0.0, 3)
    with pytest.raises(ValueError, match="Omega has shape"):
        query_shift_risk(LAM, N_TRAIN, 3, e5)
    with pytest.raises(ValueError, match="Sigma_w has shape"):
        task_shift_risk(LAM, N_TRAIN, 3, e5)
    with pytest.raises(ValueError, match="a_D must have shape"):
        theorem42_risk(LAM, N_TRAIN, 3, np.ones(D + 1), LAM, 0.0)
    with pytest.raises(ValueError, match="Sigma_xy has shape"):
        theorem42_risk(LAM, N_TRAIN, 3, np.ones(D), e5, 0.0)
    with pytest.raises(ValueError, match="w must have shape"):
        fixed_task_risk(np.ones(D - 1), LAM, N_TRAIN, 3)
    with pytest.raises(ValueError, match="G2 has shape"):
        spd_linear(np.eye(D), e5, LAM, LAM)
    with pytest.raises(ValueError, match="G1 has shape"):
        ilwd_linear(e5, np.eye(D), LAM)
    with pytest.raises(ValueError, match="Ehh has shape"):
        spd_linear(np.eye(D), np.eye(D), LAM, e5)
    x = np.ones((2, 3, D))
    with pytest.raises(ValueError, match="X must have shape"):
        trained_prediction(np.ones((2, 3, D + 1)), np.ones((2, 3)), np.ones((2, D)), LAM, 5)
    with pytest.raises(ValueError, match="y must have shape"):
        trained_prediction(x, np.ones((2, 4)), np.ones((2, D)), LAM, 5)
    with pytest.raises(ValueError, match="x_q must have shape"):
        trained_prediction(x, np.ones((2, 3)), np.ones((3, D)), LAM, 5)


def test_bad_scalars_and_psd() -> None:
    for c in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="c must be"):
            covariate_scaling_risk(LAM, N_TRAIN, 3, c)
        with pytest.raises(ValueError, match="c must be"):
            covariate_scaling_risk_isotropic(3, N_TRAIN, 3, c)
        with pytest.raises(ValueError, match="c must be"):
            covariate_scaling_limit(LAM, c)
    with pytest.raises(ValueError, match="s2 must be >= 0"):
        task_shift_risk(LAM, N_TRAIN, 3, np.eye(D), s2=-0.1)
    with pytest.raises(ValueError, match="s2 must be >= 0"):
        noisy_training_minimiser(LAM, N_TRAIN, -1.0)
    with pytest.raises(ValueError, match="s2 must be >= 0"):
        ols_risk(-1.0, OMEGA, LAM, 20)
    with pytest.raises(ValueError, match="tau2 must be >= 0"):
        minnorm_ols_risk(8, 3, -1.0, 0.0)
    with pytest.raises(ValueError, match="best_linear_error must be >= 0"):
        theorem42_risk(LAM, N_TRAIN, 3, np.ones(D), LAM, -1.0)
    with pytest.raises(ValueError, match="Sigma_w is not positive semi-definite"):
        shift_risk(np.eye(D), LAM, OMEGA, -np.eye(D), 0.0, 3)
    with pytest.raises(ValueError, match="Omega is not positive semi-definite"):
        query_shift_risk(LAM, N_TRAIN, 3, -OMEGA)
    with pytest.raises(ValueError, match="Omega is not positive definite"):
        covariate_shift_risk(LAM, N_TRAIN, 3, np.zeros((D, D)))
    with pytest.raises(ValueError, match="Sigma_w = 0 and s2 = 0"):
        optimal_preconditioner(LAM, np.zeros((D, D)), 0.0, 3)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        gd_G(0.0, 3, D)
    with pytest.raises(ValueError, match="d must be an integer >= 1"):
        gd_G(0.1, 3, 0)


def test_baseline_sample_size_requirements() -> None:
    with pytest.raises(ValueError, match=r"M must be >= d \+ 2"):
        ols_risk(0.5, OMEGA, LAM, D + 1)
    assert ols_risk(0.5, OMEGA, LAM, D + 2) > 0
    with pytest.raises(ValueError, match=r"M must be <= d - 2"):
        minnorm_ols_risk(8, 7, 1.0, 0.1)
    with pytest.raises(ValueError, match="M must be an integer >= 1"):
        minnorm_ols_risk(8, 0, 1.0, 0.1)
    assert minnorm_ols_risk(8, 6, 1.0, 0.1) == pytest.approx(2.0 + 0.6, rel=1e-14)
