"""Explicit stack constructions (`lsa.deep_constructions`) against independent references.

GD / preconditioned GD: the full "ahn" map on `lsa.embed` against an explicit numpy loop (1e-12
per prompt). Ridge: the 2L-layer stack on `ridge_embed` against a numpy Richardson loop with
theory's steps, and its error against theory's closed-form Chebyshev bound (no slack), which is
attained on prompts whose spectrum sits at the extremal points.
"""

from __future__ import annotations

import numpy as np
import pytest

import lsa
from lsa.deep import deep_predict
from lsa.deep_constructions import (
    chebyshev_ridge_steps,
    chebyshev_ridge_weights,
    gd_weights,
    preconditioned_gd_weights,
    ridge_embed,
)
from theory.deep_constructions import (
    chebyshev_extremal_points,
    chebyshev_richardson_steps,
    chebyshev_ridge_bound,
    chebyshev_ridge_residual,
    gd_polynomial,
)


def _prompts(rng, B, n, d):
    X = rng.standard_normal((B, n, d))
    y = X @ rng.standard_normal(d) + 0.3 * rng.standard_normal((B, n))
    return X, y, rng.standard_normal((B, d))


def _np_gd(X, y, steps):
    """w <- w - P_l X^T (X w - y) / n from 0, per prompt, in numpy."""
    n = X.shape[-2]
    w = np.zeros(X.shape[:-2] + X.shape[-1:])
    for P in steps:
        grad = np.einsum("bnd,bn->bd", X, np.einsum("bnd,bd->bn", X, w) - y) / n
        w = w - grad @ P.T
    return w


@pytest.mark.parametrize(("d", "n", "L", "eta"), [(1, 3, 1, 0.7), (3, 9, 4, 0.4), (5, 20, 6, 0.9)])
def test_gd_weights_per_prompt(d, n, L, eta):
    rng = np.random.default_rng(100 + 10 * d + L)
    X, y, xq = _prompts(rng, 16, n, d)
    pred = np.asarray(deep_predict(lsa.embed(X, y, xq), *gd_weights(eta, L, d), "ahn"))
    w = _np_gd(X, y, [eta * np.eye(d)] * L)
    ref = np.einsum("bd,bd->b", w, xq)
    assert np.max(np.abs(pred - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize("per_layer", [False, True])
def test_preconditioned_gd_weights_per_prompt(per_layer):
    rng = np.random.default_rng(7 + per_layer)
    d, n, L = 4, 12, 5
    X, y, xq = _prompts(rng, 16, n, d)
    if per_layer:
        P = 0.3 * rng.standard_normal((L, d, d)) + 0.3 * np.eye(d)  # non-symmetric
        weights = preconditioned_gd_weights(P)
        steps = list(P)
    else:
        G = rng.standard_normal((d, d))
        P1 = 0.5 * np.linalg.inv(np.eye(d) + G @ G.T / d)
        weights = preconditioned_gd_weights(P1, L)
        steps = [P1] * L
    pred = np.asarray(deep_predict(lsa.embed(X, y, xq), *weights, "ahn"))
    ref = np.einsum("bd,bd->b", _np_gd(X, y, steps), xq)
    assert np.max(np.abs(pred - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref)))


def test_gd_polynomial_is_the_implicit_map():
    """w_L = (I - prod(I - a_l S)) S^{-1} h = p_L(S) h, per prompt (numpy loop vs theory)."""
    rng = np.random.default_rng(3)
    X, y, _ = _prompts(rng, 8, 15, 3)
    a = np.array([0.3, 0.8, 0.5, 1.1])
    w = _np_gd(X, y, [ak * np.eye(3) for ak in a])
    for b in range(8):
        S, h = X[b].T @ X[b] / 15, X[b].T @ y[b] / 15
        ev, V = np.linalg.eigh(S)
        direct = np.linalg.solve(S, h) - np.linalg.solve(
            S, np.linalg.multi_dot([np.eye(3) - ak * S for ak in a]) @ h
        )
        np.testing.assert_allclose(w[b], V @ (gd_polynomial(a, ev) * (V.T @ h)), atol=1e-12)
        np.testing.assert_allclose(w[b], direct, atol=1e-10)


def _ridge_stack_w(X, y, L, lam, lo, hi):
    """w_L read off the full map: predictions at the queries x_q = e_1..e_d."""
    B, _, d = X.shape
    W = chebyshev_ridge_weights(L, lam, lo, hi, d)
    Xr = np.repeat(X, d, axis=0)
    yr = np.repeat(y, d, axis=0)
    xq = np.tile(np.eye(d), (B, 1))
    return np.asarray(deep_predict(ridge_embed(Xr, yr, xq), *W, "ahn")).reshape(B, d)


def test_ridge_stack_is_chebyshev_richardson_per_prompt():
    """The 2L-layer stack equals w <- w - beta_k((S + lam) w - h), beta_k from theory, to 1e-12."""
    rng = np.random.default_rng(11)
    d, n, lam = 3, 30, 0.2
    X, y, xq = _prompts(rng, 12, n, d)
    lo, hi = 0.3, 2.5
    for L in (1, 3, 6):
        pred = np.asarray(
            deep_predict(ridge_embed(X, y, xq), *chebyshev_ridge_weights(L, lam, lo, hi, d), "ahn")
        )
        w = np.zeros((12, d))
        for beta in chebyshev_richardson_steps(L, lam, lo, hi):
            grad = np.einsum("bnd,bn->bd", X, np.einsum("bnd,bd->bn", X, w) - y) / n + lam * w
            w = w - beta * grad
        ref = np.einsum("bd,bd->b", w, xq)
        assert np.max(np.abs(pred - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5])
def test_ridge_error_against_chebyshev_bound(lam):
    """Random isotropic prompts: relative error <= 1/T_L((kappa+1)/(kappa-1)) for L = 1..6 when
    spec(S) lies in the widened Marchenko-Pastur interval; the bound decays geometrically."""
    rng = np.random.default_rng(2024 + int(100 * lam))
    d, n, B = 4, 64, 64
    lo, hi = 0.6 * (1 - np.sqrt(d / n)) ** 2, 1.25 * (1 + np.sqrt(d / n)) ** 2
    X, y, _ = _prompts(rng, B, n, d)
    S = np.einsum("bnd,bne->bde", X, X) / n
    ev = np.linalg.eigvalsh(S)
    inside = (ev[:, 0] >= lo) & (ev[:, -1] <= hi)
    assert inside.sum() >= B // 2
    h = np.einsum("bnd,bn->bd", X, y) / n
    w_ridge = np.linalg.solve(S + lam * np.eye(d), h[..., None])[..., 0]
    bounds, worst = [], []
    for L in range(1, 7):
        w_L = _ridge_stack_w(X[inside], y[inside], L, lam, lo, hi)
        rel = np.linalg.norm(w_L - w_ridge[inside], axis=1) / np.linalg.norm(
            w_ridge[inside], axis=1
        )
        bound = chebyshev_ridge_bound(L, lam, lo, hi)
        assert np.all(rel <= bound)
        bounds.append(bound)
        worst.append(rel.max())
    kappa = (hi + lam) / (lo + lam)
    sigma = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    Ls = np.arange(1, 7)
    x = (kappa + 1) / (kappa - 1)
    np.testing.assert_allclose(bounds, 1 / np.cosh(Ls * np.arccosh(x)), rtol=1e-12)
    ratio = np.array(bounds[1:]) / bounds[:-1]
    assert np.all(ratio < 1) and abs(ratio[-1] / sigma - 1) < 1e-3  # geometric, rate sigma
    assert np.all(np.diff(worst) < 0), worst


@pytest.mark.parametrize("L", [1, 2, 4])
def test_ridge_bound_attained_at_extremal_points(L):
    """A prompt with spec(S) at an extremal point of Q_L attains the bound; the stack's error per
    eigen-direction equals theory's Q_L(s + lam) (cos/cosh formula)."""
    rng = np.random.default_rng(50 + L)
    d, n, lam, lo, hi = 3, 12, 0.3, 0.4, 2.0
    s = chebyshev_extremal_points(L, lam, lo, hi)[[0, L // 2, L]]
    U, _ = np.linalg.qr(rng.standard_normal((n, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = (U * np.sqrt(n * s)) @ V.T  # X^T X / n = V diag(s) V^T
    y = rng.standard_normal(n)
    S, h = X.T @ X / n, X.T @ y / n
    w_ridge = np.linalg.solve(S + lam * np.eye(d), h)
    w_L = _ridge_stack_w(X[None], y[None], L, lam, lo, hi)[0]
    err = V.T @ (w_L - w_ridge)
    np.testing.assert_allclose(
        err, -chebyshev_ridge_residual(L, lam, lo, hi, s) * (V.T @ w_ridge), atol=1e-12
    )
    np.testing.assert_allclose(
        np.abs(chebyshev_ridge_residual(L, lam, lo, hi, s)),
        chebyshev_ridge_bound(L, lam, lo, hi),
        rtol=1e-10,
    )


def test_steps_agree_between_lsa_and_theory():
    a, mu = chebyshev_ridge_steps(5, 0.4, 0.5, 3.0)
    beta = chebyshev_richardson_steps(5, 0.4, 0.5, 3.0)
    np.testing.assert_allclose(mu, 0.4 * beta, rtol=1e-14)
    np.testing.assert_allclose(a, beta / (1 - 0.4 * beta), rtol=1e-13)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gd_weights(0.5, 0, 3), "`L` must be an integer >= 1"),
        (lambda: gd_weights(float("nan"), 2, 3), "`eta`"),
        (lambda: preconditioned_gd_weights(np.eye(3)), "`L` is required"),
        (lambda: preconditioned_gd_weights(np.ones((2, 3, 3)), 3), "disagrees"),
        (lambda: preconditioned_gd_weights(np.ones((3, 2))), "`P` must be a square"),
        (lambda: chebyshev_ridge_steps(3, -0.1, 0.5, 2.0), "`lam` must be >= 0"),
        (lambda: chebyshev_ridge_steps(3, 0.1, 0.0, 2.0), "`s_lo` must be > 0"),
        (lambda: chebyshev_ridge_steps(3, 0.1, 2.0, 1.0), "`s_hi` must exceed"),
        (lambda: chebyshev_ridge_bound(3, 0.1, 2.0, 1.0), "s_hi must exceed"),
        (lambda: chebyshev_ridge_bound(0, 0.1, 0.5, 1.0), "L"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
