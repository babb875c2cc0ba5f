"""L-layer LSA stacks (`lsa.deep`) and the exact scalar-family theory (`theory.deep`).

Every check compares two independent computations: the literal stack against an explicit numpy
GD loop, theory's loop-equation moments against lsa's Wick enumeration, known closed forms and
Monte Carlo, the Hankel/orthogonal-polynomial optimum against scipy, and L = 1 against ZFB's
Gamma^{-1} and Akyuerek's GD(alpha).
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import lsa
from lsa.deep import (
    deep_forward,
    deep_predict,
    deep_trajectory,
    looped_weights,
    preconditioned_gd,
    readout_sign,
    scalar_steps,
    sparse_weights,
)
from lsa.deep_flow import wick_moment_counts, wick_moments
from theory.deep import (
    format_polynomial,
    optimal_looped_step,
    optimal_polynomial,
    optimal_risk,
    optimal_step_sizes,
    step_sizes_risk,
    wishart_moment_polynomial,
    wishart_moments,
)
from theory.global_min import gamma, min_loss_isotropic
from theory.metrics import gd_G


def _prompts(seed: int, B: int, n: int, d: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, n, d))
    w = rng.standard_normal((B, d))
    x_q = rng.standard_normal((B, d))
    return X, np.einsum("bnd,bd->bn", X, w), x_q


_forward_jit = jax.jit(deep_forward, static_argnames="convention")


def _gd_numpy(X, y, x_q, A):
    """Explicit loop: w <- w - A_l grad R(w), R(w) = (1/2n) ||X w - y||^2, w_0 = 0; <w_L, x_q>."""
    n, d = X.shape
    w = np.zeros(d)
    for Al in A:
        grad = X.T @ (X @ w - y) / n
        w = w - Al @ grad
    return float(w @ x_q), w


# ----------------------------------------------------------------------------------------------
# The model


def test_one_zfb_layer_is_lsa_forward_exactly(key):
    d, n = 3, 6
    X, y, x_q = _prompts(1, 5, n, d)
    E = lsa.embed(X, y, x_q)
    k1, k2 = jax.random.split(key)
    W_PV = jax.random.normal(k1, (d + 1, d + 1))
    W_KQ = jax.random.normal(k2, (d + 1, d + 1))
    assert E.dtype == jnp.float64
    np.testing.assert_array_equal(
        deep_forward(E, W_PV[None], W_KQ[None], "zfb"), lsa.lsa_forward(E, W_PV, W_KQ)
    )
    np.testing.assert_array_equal(
        deep_predict(E, W_PV[None], W_KQ[None], "zfb"), lsa.predict(E, W_PV, W_KQ)
    )
    # jit + vmap over prompts: the same numbers to round-off.
    f = jax.jit(jax.vmap(lambda e: deep_predict(e, W_PV[None], W_KQ[None], "zfb")))
    np.testing.assert_allclose(f(E), lsa.predict(E, W_PV, W_KQ), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("L", "d", "n"), [(1, 1, 1), (2, 3, 4), (3, 4, 20), (5, 6, 9), (4, 2, 3)])
def test_masked_sparse_stack_is_preconditioned_gd(L, d, n):
    """Per prompt, to 1e-12: general (non-symmetric) A_l, scalar a_l I and a_l Sigma^{-1}."""
    rng = np.random.default_rng(100 + 10 * L + d)
    X, y, x_q = _prompts(200 + L, 6, n, d)
    E = lsa.embed(X, y, x_q)
    M = rng.standard_normal((d, d))
    Sigma = M @ M.T + 0.5 * np.eye(d)
    a = rng.uniform(0.1, 1.2, L)
    families = {
        "general": rng.standard_normal((L, d, d)) / np.sqrt(d),
        "scalar": np.asarray(scalar_steps(a, d)),
        "sigma_inv": np.asarray(scalar_steps(a, d, Sigma)),
    }
    for name, A in families.items():
        W_PV, W_KQ = sparse_weights(A)
        Z = np.asarray(_forward_jit(E, W_PV, W_KQ, "ahn"))
        pred = readout_sign("ahn") * Z[:, -1, -1]
        for b in range(X.shape[0]):
            ref, w_L = _gd_numpy(X[b], y[b], x_q[b], A)
            scale = 1.0 + abs(ref)
            assert abs(pred[b] - ref) <= 1e-12 * scale, (name, b, pred[b], ref)
            # The whole label row: the residuals y_i - <w_L, x_i>, then -<w_L, x_q>.
            resid = np.concatenate([y[b] - X[b] @ w_L, [-(x_q[b] @ w_L)]])
            np.testing.assert_allclose(
                Z[b, -1], resid, rtol=0, atol=1e-12 * (1 + np.abs(y[b]).max())
            )
            # The inputs never change.
            np.testing.assert_array_equal(Z[b, :-1], np.asarray(E[b, :-1]))
    # lsa's own GD reference agrees with the loop too.
    A = families["general"]
    w_ref = np.asarray(preconditioned_gd(X, y, A))
    for b in range(X.shape[0]):
        np.testing.assert_allclose(w_ref[b], _gd_numpy(X[b], y[b], x_q[b], A)[1], atol=1e-12)


def test_conventions_sparse_family_example():
    """The README example: one prompt, d = 2, n = 3, scalar steps a = (0.5, 0.5)."""
    X = np.array([[1.0, 0.0], [0.5, -1.0], [-0.5, 2.0]])
    w = np.array([1.0, -1.0])
    y = X @ w
    x_q = np.array([1.0, 1.0])
    E = lsa.embed(X, y, x_q)
    A = scalar_steps([0.5, 0.5], 2)
    W_PV, W_KQ = sparse_weights(A)
    Zz = np.asarray(deep_trajectory(E, W_PV, W_KQ, "zfb"))
    Za = np.asarray(deep_trajectory(E, W_PV, W_KQ, "ahn"))
    # L = 1: the same state in both conventions (the query label slot is 0 when it is masked).
    np.testing.assert_array_equal(Zz[1], Za[1])
    gd1 = _gd_numpy(X, y, x_q, np.asarray(A[:1]))[0]
    assert Za[1][-1, -1] == pytest.approx(-gd1, abs=1e-15)
    # Each convention's readout: ahn reads <w_1, x_q>, zfb reads -<w_1, x_q> for these weights.
    assert readout_sign("ahn") * Za[1][-1, -1] == pytest.approx(gd1, abs=1e-15)
    # L = 2: the states differ by the unmasked query's term (1/n) r_q x_q^T W_KQ x_j in every slot.
    r_q = Za[1][-1, -1]
    Xt = np.asarray(E[:-1])  # (d, n+1) with x_q last
    extra = r_q * (x_q @ np.asarray(W_KQ[1, :-1, :-1]) @ Xt) / 3
    # The second layer sees different label rows only through that term at layer 1 -> 2.
    r1 = Za[1][-1]
    upd_masked = (r1[:-1] @ (X @ np.asarray(W_KQ[1, :-1, :-1]) @ Xt)) / 3
    np.testing.assert_allclose(Za[2][-1], r1 + upd_masked, atol=1e-15)
    np.testing.assert_allclose(Zz[2][-1], r1 + upd_masked + extra, atol=1e-15)
    assert abs(Zz[2][-1, -1] - Za[2][-1, -1]) > 1e-2
    gd2 = _gd_numpy(X, y, x_q, np.asarray(A))[0]
    assert float(deep_predict(E, W_PV, W_KQ, "ahn")) == pytest.approx(gd2, abs=1e-14)
    assert float(-deep_predict(E, W_PV, W_KQ, "zfb")) != pytest.approx(gd2, abs=1e-3)


def test_conventions_full_parameters_differ_at_one_layer(key):
    """Full weights: at L = 1 the unmasked map keeps the query self-term
    (1/n) (W_PV z_q) (z_q^T W_KQ Z), z_q = (x_q, 0)."""
    d, n = 3, 5
    X, y, x_q = _prompts(7, 4, n, d)
    E = np.asarray(lsa.embed(X, y, x_q))
    k1, k2 = jax.random.split(key)
    W_PV = np.asarray(jax.random.normal(k1, (1, d + 1, d + 1)))
    W_KQ = np.asarray(jax.random.normal(k2, (1, d + 1, d + 1)))
    Zz = np.asarray(deep_forward(E, W_PV, W_KQ, "zfb"))
    Za = np.asarray(deep_forward(E, W_PV, W_KQ, "ahn"))
    for b in range(4):
        z_q = E[b, :, -1]
        self_term = np.outer(W_PV[0] @ z_q, z_q @ W_KQ[0] @ E[b]) / n
        np.testing.assert_allclose(Zz[b] - Za[b], self_term, atol=1e-12)
        # the prediction entry: (a^T x_q)(x_q^T U x_q) / n with a = W_PV[d, :d], U = W_KQ[:d, :d]
        a_row, U = W_PV[0, -1, :-1], W_KQ[0, :-1, :-1]
        expect = (a_row @ x_q[b]) * (x_q[b] @ U @ x_q[b]) / n
        assert Zz[b, -1, -1] - Za[b, -1, -1] == pytest.approx(expect, abs=1e-12)
        assert abs(expect) > 1e-3


def test_looped_weights_and_batching(key):
    d, n, L = 3, 4, 3
    X, y, x_q = _prompts(11, 8, n, d)
    E = lsa.embed(X, y, x_q)
    k1, k2 = jax.random.split(key)
    W_PV = 0.3 * jax.random.normal(k1, (d + 1, d + 1))
    W_KQ = 0.3 * jax.random.normal(k2, (d + 1, d + 1))
    Wp, Wk = looped_weights(W_PV, W_KQ, L)
    assert Wp.shape == (L, d + 1, d + 1)
    for conv in ("zfb", "ahn"):
        Z = E
        for _ in range(L):
            Z = deep_forward(Z, W_PV[None], W_KQ[None], conv)
        np.testing.assert_allclose(deep_forward(E, Wp, Wk, conv), Z, rtol=1e-13, atol=1e-13)
        batched = deep_predict(E, Wp, Wk, conv)
        mapped = jax.jit(jax.vmap(lambda e, c=conv: deep_predict(e, Wp, Wk, c)))(E)
        np.testing.assert_allclose(mapped, batched, rtol=1e-13, atol=1e-13)
    traj = deep_trajectory(E, Wp, Wk, "ahn")
    assert traj.shape == (L + 1, *E.shape)


def test_model_rejects_bad_input():
    E = lsa.embed(*_prompts(0, 2, 3, 2))
    W = jnp.zeros((1, 3, 3))
    with pytest.raises(ValueError, match="convention"):
        deep_forward(E, W, W, "garg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="W_PV"):
        deep_forward(E, W[0], W, "zfb")
    with pytest.raises(ValueError, match="same number of layers"):
        deep_forward(E, W, jnp.zeros((2, 3, 3)), "zfb")
    with pytest.raises(ValueError, match="`A`"):
        sparse_weights(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="`a`"):
        scalar_steps([], 2)
    with pytest.raises(ValueError, match="positive definite"):
        scalar_steps([1.0], 2, -np.eye(2))
    with pytest.raises(ValueError, match="`L`"):
        looped_weights(W[0], W[0], 0)


# ----------------------------------------------------------------------------------------------
# Wishart moments


def test_moment_polynomials_known_forms():
    for N, d in [(7, 4), (2, 9), (1, 1), (13, 3)]:
        m = [_ev(wishart_moment_polynomial(k), N, d) for k in range(4)]
        assert m[0] == d
        assert m[1] == N * d
        assert m[2] == N * d * (N + d + 1)
        assert m[3] == N * d * (N**2 + d**2 + 3 * N * d + 3 * N + 3 * d + 4)
    assert format_polynomial(wishart_moment_polynomial(2)) == "N^2*d + N*d^2 + N*d"


def _ev(poly, N, d):
    return sum(c * N**i * d**j for (i, j), c in poly.items())


def test_moment_polynomials_match_wick_enumeration():
    """theory (loop equation) and lsa (enumerating all (2k-1)!! Wick pairings): the same
    integer coefficients for every k <= 8."""
    for k in range(1, 9):
        C = wick_moment_counts(k)
        wick = {(p, q): int(C[p, q]) for p in range(k + 1) for q in range(k + 1) if C[p, q]}
        assert wishart_moment_polynomial(k) == wick, k
    # E tr W^k is symmetric in (N, d) for k >= 1 (tr (X^T X)^k = tr (X X^T)^k).
    for k in range(1, 9):
        poly = wishart_moment_polynomial(k)
        assert poly == {(j, i): c for (i, j), c in poly.items()}
    np.testing.assert_array_equal(
        wick_moments(5, 3, 8), np.array(wishart_moments(5, 3, 8, exact=False))
    )


@pytest.mark.parametrize(("d", "N"), [(3, 5), (5, 3)])
def test_moments_monte_carlo(d, N):
    rng = np.random.default_rng(31 + d)
    B = 200_000
    X = rng.standard_normal((B, N, d))
    ev = np.linalg.eigvalsh(np.einsum("bnd,bne->bde", X, X) / N)
    m = wishart_moments(d, N, 4)
    for k in range(1, 5):
        samples = np.sum(ev**k, axis=1)
        z = (samples.mean() - float(m[k])) / (samples.std(ddof=1) / np.sqrt(B))
        assert abs(z) <= 4.0, (k, z)


def test_moments_exact_and_multi_trace():
    m = wishart_moments(2, 3, 3)
    assert m == [
        Fraction(2),
        Fraction(2),
        Fraction(2 * 6, 3),
        Fraction(2 * (9 + 4 + 18 + 9 + 6 + 4), 9),
    ]
    from theory.deep import _multi_trace

    # tr W ~ chi^2_{N d}: E (tr W)^2 = N d (N d + 2)
    for N, d in [(3, 2), (5, 7)]:
        assert _ev(dict(_multi_trace((1, 1))), N, d) == N * d * (N * d + 2)


# ----------------------------------------------------------------------------------------------
# Risk and optimum


def test_step_sizes_risk_monte_carlo_of_the_stack():
    """The masked sparse scalar stack from lsa.deep, Monte Carlo over prompts: |z| <= 4."""
    d, N, B = 4, 10, 100_000
    a = np.array([0.3, 0.9, 1.4])
    rng = np.random.default_rng(2024)
    X = rng.standard_normal((B, N, d))
    wt = rng.standard_normal((B, d))
    x_q = rng.standard_normal((B, d))
    y = np.einsum("bnd,bd->bn", X, wt)
    W_PV, W_KQ = sparse_weights(scalar_steps(a, d))
    pred = np.asarray(jax.jit(lambda E: deep_predict(E, W_PV, W_KQ, "ahn"))(lsa.embed(X, y, x_q)))
    err2 = (pred - np.einsum("bd,bd->b", wt, x_q)) ** 2
    theory_val = step_sizes_risk(a, d, N)
    z = (err2.mean() - theory_val) / (err2.std(ddof=1) / np.sqrt(B))
    assert abs(z) <= 4.0, (err2.mean(), theory_val, z)


@pytest.mark.parametrize(("d", "N"), [(8, 40), (3, 5), (5, 3), (1, 1)])
def test_one_layer_reduces_to_zfb_and_akyurek(d, N):
    a_star = optimal_step_sizes(d, N, 1)
    assert a_star.shape == (1,)
    assert a_star[0] == pytest.approx(N / (N + d + 1), rel=1e-15)
    # ZFB: Gamma^{-1} for Lambda = I (u U = Gamma^{-1}, G = Gamma^{-1})
    np.testing.assert_allclose(
        a_star[0] * np.eye(d), np.linalg.inv(gamma(np.eye(d), N)), rtol=1e-14
    )
    # Akyuerek: GD(alpha), w = 2 alpha X^T Y, with alpha = 1 / (2 (N + d + 1))
    np.testing.assert_allclose(
        gd_G(1.0 / (2 * (N + d + 1)), N, d), a_star[0] * np.eye(d), rtol=1e-14
    )
    # the minimal risk is 2 min L of ZFB
    assert optimal_risk(d, N, 1) == pytest.approx(2 * min_loss_isotropic(d, N), rel=1e-14)
    assert optimal_looped_step(d, N, 1) == pytest.approx(N / (N + d + 1), rel=1e-14)


def _float_risk(d, N, L):
    m = np.array(wishart_moments(d, N, 2 * L, exact=False))
    idx = np.arange(L + 1)
    H = m[idx[:, None] + idx[None, :]]

    def f(a):
        c = np.array([1.0])
        for al in a:
            c = np.concatenate([c, [0.0]]) - al * np.concatenate([[0.0], c])
        return float(c @ H @ c)

    return f


@pytest.mark.parametrize(
    ("d", "N", "L"), [(8, 40, 2), (8, 40, 3), (3, 5, 4), (5, 3, 3), (2, 20, 4)]
)
def test_optimum_against_scipy(d, N, L):
    a_star = optimal_step_sizes(d, N, L)
    f_star = optimal_risk(d, N, L)
    assert step_sizes_risk(a_star, d, N) == pytest.approx(f_star, rel=1e-12)
    f = _float_risk(d, N, L)
    rng = np.random.default_rng(5 + L)
    best = None
    for _ in range(4):
        x0 = np.sort(rng.uniform(0.1, 1.5, L))
        res = optimize.minimize(f, x0, method="BFGS", options={"gtol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    assert best.fun >= f_star - 1e-12 * f_star  # nothing beats the exact optimum
    np.testing.assert_allclose(np.sort(best.x), a_star, rtol=1e-5)
    # the looped optimum: scipy's scalar minimiser
    g = optimize.minimize_scalar(
        lambda s: f(np.full(L, s)), bounds=(1e-9, 5.0), method="bounded", options={"xatol": 1e-12}
    )
    assert optimal_looped_step(d, N, L) == pytest.approx(g.x, rel=1e-6)
    assert step_sizes_risk(np.full(L, optimal_looped_step(d, N, L)), d, N) >= f_star


@pytest.mark.parametrize(("d", "N"), [(8, 40), (3, 5), (6, 2), (1, 3)])
def test_optimal_polynomial_is_orthogonal_with_real_simple_positive_roots(d, N):
    for L in range(1, 6):
        c = optimal_polynomial(d, N, L)
        m = wishart_moments(d, N, 2 * L + 1)
        assert isinstance(m, list)
        # int q(s) s^{j+1} dmu = sum_i c_i m_{i+j+1} = 0 exactly, j = 0..L-1
        for j in range(L):
            assert sum(c[i] * m[i + j + 1] for i in range(L + 1)) == 0
        a = optimal_step_sizes(d, N, L)
        assert np.all(a > 0) and np.all(np.diff(a) > 0)
        # they are the reciprocal roots: q(1/a_l) = 0
        for al in a:
            q = sum(float(ci) * (1.0 / al) ** i for i, ci in enumerate(c))
            assert abs(q) <= 1e-10


def test_two_layer_closed_form():
    """docs/deep.md: a_{1,2} = N (B -/+ sqrt(Q)) / D and the minimal risk d R / D."""
    for d, N in [(8, 40), (3, 5), (1, 1), (10, 4)]:
        D = (
            N**3 * d + N**3 + N**2 * d**2 + 5 * N**2 * d + 10 * N**2 + N * d**3 + 5 * N * d**2
            + 17 * N * d + 17 * N + d**3 + 10 * d**2 + 17 * d + 4
        )  # fmt: skip
        Bc = N**2 * (d + 1) + N * (d**2 + 4 * d + 7) + d**2 + 7 * d + 8
        Q = (
            N**3 * (d + 1) ** 3 + N**2 * (3 * d**3 + 16 * d**2 + 27 * d + 18)
            + N * (3 * d**3 + 27 * d**2 + 73 * d + 57) + d**3 + 18 * d**2 + 57 * d + 52
        )  # fmt: skip
        assert Bc**2 - Q == (N * (d + 1) + d + 3) * D  # a1 a2 = N^2 (N (d+1) + d + 3) / D
        a = N * np.array([Bc - np.sqrt(Q), Bc + np.sqrt(Q)]) / D
        np.testing.assert_allclose(optimal_step_sizes(d, N, 2), a, rtol=1e-13)
        R = (N * (d + 1) * (d**2 + 3 * d + 4) + d**3 + 10 * d**2 + 17 * d + 4) * d / D
        assert optimal_risk(d, N, 2) == pytest.approx(R, rel=1e-14)


def test_theory_rejects_bad_input():
    with pytest.raises(ValueError, match="d must be"):
        wishart_moments(0, 3, 2)
    with pytest.raises(ValueError, match="N must be"):
        optimal_step_sizes(3, 1.5, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="L must be"):
        optimal_looped_step(3, 3, 0)
    with pytest.raises(ValueError, match="`a`"):
        step_sizes_risk([], 3, 3)
    with pytest.raises(ValueError, match="`a`"):
        step_sizes_risk([np.nan], 3, 3)
