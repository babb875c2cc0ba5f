"""In-context predictors (theory.md §6, §11.2, §14 rows 1, 2, 25).

Every predictor is compared with an independent implementation: the literal LSA map built in
numpy, `numpy.linalg.lstsq` / `pinv`, scikit-learn's `Ridge` and `KNeighborsRegressor`, and
explicit per-prompt numpy loops for GD, SGD and nearest neighbours.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sklearn.linear_model
import sklearn.neighbors

import lsa
import theory
from simulations.icl.predictors import (
    GD,
    KNN,
    OLS,
    SGD,
    Averaging,
    BayesRidge,
    LSAPredictor,
    Ridge,
    at_every_prefix,
    linear_G,
)


def _prompts(rng: np.random.Generator, B: int, M: int, d: int, noise: float = 0.3):
    X = rng.standard_normal((B, M, d)) @ np.diag(np.linspace(0.5, 2.0, d))
    w = rng.standard_normal((B, d))
    y = np.einsum("bmd,bd->bm", X, w) + noise * rng.standard_normal((B, M))
    x_q = rng.standard_normal((B, d))
    return X, y, x_q


def _literal_lsa(X, y, x_q, W_PV, W_KQ, rho=None):
    """Literal numpy map: E + W_PV E (E^T W_KQ E) / rho, bottom-right entry (theory.md §2)."""
    out = []
    for b in range(X.shape[0]):
        M, d = X[b].shape
        E = np.zeros((d + 1, M + 1))
        E[:d, :M] = X[b].T
        E[:d, M] = x_q[b]
        E[d, :M] = y[b]
        r = M if rho is None else rho
        F = E + W_PV @ E @ (E.T @ W_KQ @ E) / r
        out.append(F[d, M])
    return np.array(out)


# ----------------------------------------------------------------------------------------------
# LSA


def test_lsa_equals_literal_map_for_dense_weights(rng):
    d, M, B = 3, 5, 16
    X, y, x_q = _prompts(rng, B, M, d)
    W_PV = rng.standard_normal((d + 1, d + 1))
    W_KQ = rng.standard_normal((d + 1, d + 1))
    got = np.asarray(LSAPredictor(W_PV, W_KQ)(X, y, x_q))
    ref_np = _literal_lsa(X, y, x_q, W_PV, W_KQ)
    ref_lsa = np.asarray(lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ))
    scale = np.max(np.abs(ref_np))
    np.testing.assert_allclose(got, ref_np, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(got, ref_lsa, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("M", [3, 11])
def test_lsa_at_limit_is_trained_prediction_and_rho_convention(rng, aniso_lambda, M):
    """§14 row 1 (y_hat = h^T Gamma^{-1} x_q with rho = M) and row 2 (rho = N gives M/N times)."""
    N, d = 6, aniso_lambda.shape[0]
    X, y, x_q = _prompts(rng, 12, M, d)
    W_PV, W_KQ = theory.limit_weights(aniso_lambda, N)
    got = np.asarray(LSAPredictor(W_PV, W_KQ)(X, y, x_q))
    ref = theory.trained_prediction(X, y, x_q, aniso_lambda, N)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    rho_n = _literal_lsa(X, y, x_q, W_PV, W_KQ, rho=N)
    np.testing.assert_allclose(rho_n, (M / N) * got, rtol=1e-11, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# least squares and ridge


@pytest.mark.parametrize("M", [2, 4, 9])
def test_ols_equals_min_norm_lstsq(rng, M):
    d = 4
    X, y, x_q = _prompts(rng, 10, M, d)
    got = np.asarray(OLS()(X, y, x_q))
    for b in range(X.shape[0]):
        w_lstsq = np.linalg.lstsq(X[b], y[b], rcond=None)[0]  # min-norm when M < d
        w_pinv = np.linalg.pinv(X[b]) @ y[b]
        assert got[b] == pytest.approx(w_lstsq @ x_q[b], rel=1e-10, abs=1e-12)
        assert got[b] == pytest.approx(w_pinv @ x_q[b], rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("M", [3, 8])
@pytest.mark.parametrize("lam", [0.1, 0.5, 4.0 / 9.0])
def test_ridge_equals_sklearn(rng, M, lam):
    d = 5
    X, y, x_q = _prompts(rng, 8, M, d)
    got = np.asarray(Ridge(lam)(X, y, x_q))
    bayes = np.asarray(BayesRidge(noise_var=lam * 2.0, prior_var=2.0)(X, y, x_q))
    for b in range(X.shape[0]):
        sk = sklearn.linear_model.Ridge(alpha=lam, fit_intercept=False).fit(X[b], y[b])
        ref = sk.predict(x_q[b][None])[0]
        assert got[b] == pytest.approx(ref, rel=1e-9, abs=1e-12)
        assert bayes[b] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_ridge_zero_is_min_norm_ols(rng):
    X, y, x_q = _prompts(rng, 6, 3, 6)
    ref = np.array([np.linalg.pinv(X[b]) @ y[b] @ x_q[b] for b in range(6)])
    np.testing.assert_allclose(np.asarray(Ridge(0.0)(X, y, x_q)), ref, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# GD, SGD, averaging


def test_gd_one_step_is_linear_in_h(rng):
    """[AKY §4.3] GD(alpha): y_hat = h^T (2 alpha M I) x_q, h = (1/M) sum y_i x_i (§14 row 25)."""
    d, M, alpha = 4, 7, 0.03
    X, y, x_q = _prompts(rng, 10, M, d)
    h = np.einsum("bm,bmd->bd", y, X) / M
    ref = np.einsum("bd,de,be->b", h, 2 * alpha * M * np.eye(d), x_q)
    np.testing.assert_allclose(np.asarray(GD(alpha)(X, y, x_q)), ref, rtol=1e-12)
    np.testing.assert_allclose(linear_G(GD(alpha), d, M), theory.gd_G(alpha, M, d), rtol=1e-15)


@pytest.mark.parametrize("lam", [0.0, 0.2])
def test_gd_k_steps_equals_numpy_loop(rng, lam):
    d, M, alpha, steps = 3, 6, 0.02, 5
    X, y, x_q = _prompts(rng, 8, M, d)
    got = np.asarray(GD(alpha, steps=steps, lam=lam)(X, y, x_q))
    for b in range(8):
        w = np.zeros(d)
        for _ in range(steps):
            w = w - 2 * alpha * (X[b].T @ (X[b] @ w) - X[b].T @ y[b] + lam * w)
        assert got[b] == pytest.approx(w @ x_q[b], rel=1e-11, abs=1e-13)


def _sgd_numpy(X, y, alpha, lam, clip):
    """Per-example loop of the released code: grad = 2 (x x^T w - x y + lam w), clipped."""
    w = np.zeros(X.shape[1])
    prefix = []
    for x, yy in zip(X, y, strict=True):
        prefix.append(w @ x)
        g = np.clip(2.0 * (x * (x @ w - yy) + lam * w), -clip, clip)
        w = w - alpha * g
    return w, np.array(prefix)


@pytest.mark.parametrize(("alpha", "lam", "clip"), [(0.03, 0.0, 20.0), (0.2, 0.1, 0.5)])
def test_sgd_equals_numpy_loop(rng, alpha, lam, clip):
    d, M = 4, 9
    X, y, x_q = _prompts(rng, 6, M, d)
    sgd = SGD(alpha, lam=lam, clip=clip)
    got = np.asarray(sgd(X, y, x_q))
    pref = np.asarray(at_every_prefix(sgd, X, y))
    clipped = False
    for b in range(6):
        w, prefix = _sgd_numpy(X[b], y[b], alpha, lam, clip)
        assert got[b] == pytest.approx(w @ x_q[b], rel=1e-11, abs=1e-13)
        np.testing.assert_allclose(pref[b], prefix, rtol=1e-11, atol=1e-13)
        clipped |= bool(np.any(np.abs(2.0 * X[b] * y[b][:, None]) > clip))
    if clip < 1:
        assert clipped  # the second case exercises the clipping


def test_averaging(rng):
    X, y, x_q = _prompts(rng, 5, 4, 3)
    ref = np.einsum("bmd,bm,bd->b", X, y, x_q) / 4
    np.testing.assert_allclose(np.asarray(Averaging()(X, y, x_q)), ref, rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# nearest neighbours


def _knn_numpy(X, y, x_q, k, weighting, exponent):
    dist = np.sqrt(np.sum((X - x_q) ** 2, axis=1))
    idx = np.argsort(dist, kind="stable")[:k]
    if weighting == "uniform":
        return float(np.mean(y[idx]))
    dk = dist[idx]
    if np.any(dk == 0):
        return float(np.mean(y[idx][dk == 0]))
    wts = dk**-exponent
    return float(np.sum(wts * y[idx]) / np.sum(wts))


_KNN_CASES = [(3, "uniform", 1.0), (3, "distance", 1.0), (4, "distance", 2.0)]


@pytest.mark.parametrize(("k", "weighting", "exponent"), _KNN_CASES)
def test_knn_equals_brute_force(rng, k, weighting, exponent):
    d, M, B = 3, 8, 12
    X, y, x_q = _prompts(rng, B, M, d)
    x_q[0] = X[0, 5]  # a repeated point: distance weighting keeps only the exact match
    got = np.asarray(KNN(k, weighting, exponent)(X, y, x_q))
    for b in range(B):
        assert got[b] == pytest.approx(_knn_numpy(X[b], y[b], x_q[b], k, weighting, exponent))
    if weighting == "distance":
        assert got[0] == pytest.approx(y[0, 5], rel=1e-14)
    if exponent == 1.0:
        sk = sklearn.neighbors.KNeighborsRegressor(k, weights=weighting)
        ref = [sk.fit(X[b], y[b]).predict(x_q[b][None])[0] for b in range(B)]
        np.testing.assert_allclose(got, ref, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# every prefix


_PREFIX_PREDICTORS = [OLS(), GD(0.02, steps=3), Averaging(), KNN(3), KNN(2, "distance", 2.0)]


@pytest.mark.parametrize("pred", _PREFIX_PREDICTORS, ids=lambda p: p.name)
def test_every_prefix_equals_truncated_prompts(rng, pred):
    d, M, B = 3, 4, 5
    X, y, _ = _prompts(rng, B, M, d)
    got = np.asarray(at_every_prefix(pred, X, y))
    assert got.shape == (B, M)
    np.testing.assert_array_equal(got[:, 0], 0.0)
    for i in range(1, M):
        p = pred
        if isinstance(pred, KNN) and i < pred.k:  # fewer examples than k: use them all
            p = KNN(i, pred.weighting, float(pred.exponent))
        ref = np.asarray(p(X[:, :i], y[:, :i], X[:, i]))
        np.testing.assert_allclose(got[:, i], ref, rtol=1e-10, atol=1e-12)


def test_every_prefix_lsa_uses_rho_equal_prefix_length(rng):
    d, M = 3, 5
    X, y, _ = _prompts(rng, 4, M, d)
    W_PV = rng.standard_normal((d + 1, d + 1))
    W_KQ = rng.standard_normal((d + 1, d + 1))
    got = np.asarray(LSAPredictor(W_PV, W_KQ).predict_prefixes(X, y))
    for i in range(1, M):
        ref = _literal_lsa(X[:, :i], y[:, :i], X[:, i], W_PV, W_KQ)  # rho = i
        np.testing.assert_allclose(got[:, i], ref, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# preconditioner view


def test_linear_G(rng, aniso_lambda):
    d, N, M = aniso_lambda.shape[0], 6, 9
    W_PV, W_KQ = theory.limit_weights(aniso_lambda, N)
    G = linear_G(LSAPredictor(W_PV, W_KQ), d, M)
    np.testing.assert_allclose(G, np.linalg.inv(theory.gamma(aniso_lambda, N)), rtol=1e-12)
    np.testing.assert_array_equal(linear_G(Averaging(), d, M), np.eye(d))
    assert linear_G(OLS(), d, M) is None
    assert linear_G(GD(0.1, steps=2), d, M) is None
    W_PV_a = W_PV.copy()
    W_PV_a[d, 0] = 0.3  # a != 0: the query self-term makes y_hat non-linear in h
    assert linear_G(LSAPredictor(W_PV_a, W_KQ), d, M) is None
    # generic (u, U) with a = b = 0: y_hat = h^T (u U) x_q, checked on prompts
    U = rng.standard_normal((d, d))
    pv, kq = lsa.from_reduced(1.7, U)
    X, y, x_q = _prompts(rng, 6, M, d)
    Gg = linear_G(LSAPredictor(pv, kq), d, M)
    h = np.einsum("bm,bmd->bd", y, X) / M
    np.testing.assert_allclose(
        np.asarray(LSAPredictor(pv, kq)(X, y, x_q)),
        np.einsum("bd,de,be->b", h, Gg, x_q),
        rtol=1e-11,
    )


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(rng):
    X, y, x_q = _prompts(rng, 3, 2, 3)
    with pytest.raises(ValueError, match="lam"):
        Ridge(-0.1)
    with pytest.raises(ValueError, match="noise_var"):
        BayesRidge(-1.0, 1.0)
    with pytest.raises(ValueError, match="prior_var"):
        BayesRidge(1.0, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        GD(0.0)
    with pytest.raises(ValueError, match="alpha"):
        SGD(-0.1)
    with pytest.raises(ValueError, match="k = 3 <= M"):
        KNN(3)(X, y, x_q)  # M = 2 < k
    with pytest.raises(ValueError, match="weighting"):
        KNN(3, "gaussian")
    with pytest.raises(ValueError, match="at least 1"):
        OLS()(np.zeros((3, 0, 3)), np.zeros((3, 0)), x_q)  # empty prompt
    with pytest.raises(ValueError, match="x_q"):
        OLS()(X, y, x_q[:, :2])
    with pytest.raises(ValueError, match="W_KQ"):
        LSAPredictor(np.eye(4), np.eye(3))
    with pytest.raises(ValueError, match="d = 4"):
        LSAPredictor(np.eye(5), np.eye(5))(X, y, x_q)
    with pytest.raises(ValueError, match="d = 4"):
        at_every_prefix(LSAPredictor(np.eye(5), np.eye(5)), X, y)
    with pytest.raises(ValueError, match="NaN"):
        LSAPredictor(np.full((4, 4), np.nan), np.eye(4))


def test_predictor_is_jit_and_vmap_friendly(rng):
    """Predictors are pytrees: a hyper-parameter can be traced (one compile for a scan)."""
    X, y, x_q = _prompts(rng, 4, 5, 3)
    lams = np.array([0.1, 0.5, 1.0])

    @jax.jit
    def f(lam):
        r = Ridge(1.0)
        r = jax.tree_util.tree_map(lambda _: lam, r)
        return r._predict(X, y, x_q)

    for lam in lams:
        np.testing.assert_allclose(np.asarray(f(lam)), np.asarray(Ridge(lam)(X, y, x_q)))


@pytest.mark.parametrize("m", [1, 4, 9])
def test_prefix_is_the_predictor_on_the_first_m_examples(rng, m):
    """`Prefix(p, m)` on a prompt of length 12 equals `p` on its first m examples (the LSA with
    rho = m, against the literal map; OLS against lstsq on the truncated prompt)."""
    from simulations.icl.prefix import Prefix

    d = 4
    X, y, x_q = _prompts(rng, 32, 12, d)
    W_PV, W_KQ = rng.standard_normal((d + 1, d + 1)), rng.standard_normal((d + 1, d + 1))
    got = np.asarray(Prefix(LSAPredictor(W_PV, W_KQ), m)(X, y, x_q))
    want = _literal_lsa(X[:, :m], y[:, :m], x_q, W_PV, W_KQ)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    got_ols = np.asarray(Prefix(OLS(), m)(X, y, x_q))
    w_ls = [np.linalg.lstsq(X[b, :m], y[b, :m], rcond=None)[0] for b in range(32)]
    np.testing.assert_allclose(got_ols, np.einsum("bd,bd->b", np.array(w_ls), x_q), atol=1e-10)
    with pytest.raises(ValueError, match="prefix length"):
        Prefix(OLS(), 13)(X, y, x_q)
