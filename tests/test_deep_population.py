"""The exact population risk of the masked sparse stack with matrix steps (`lsa.deep_population`)
and its gradient flow.

Independent references: the second-order Wishart moment in closed form; `theory.deep`'s
loop-equation moments for scalar steps; Monte Carlo through the literal stack (`lsa.deep`), with
|z| < 4 (two-sided, a false alarm about 6e-5 per comparison); `theory.deep.optimal_step_sizes`
for the flow's limit.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import lsa
from lsa._options import FlowError
from lsa.deep import deep_predict, sparse_weights
from lsa.deep_population import (
    mixed_wishart_moment,
    sparse_population_flow,
    sparse_population_risk,
)
from theory.deep import optimal_step_sizes, step_sizes_risk

_risk = jax.jit(sparse_population_risk, static_argnums=1)


def _random_spd(rng: np.random.Generator, d: int, scale: float) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return scale * (Q * rng.uniform(0.2, 3.0, d)) @ Q.T


def test_second_moment_closed_form():
    """E tr(S C1 S C2) = tr(C1 C2) + (tr(C1^T C2) + tr C1 tr C2) / N for real Wishart S/N."""
    rng = np.random.default_rng(0)
    for d, N in [(1, 1), (3, 2), (4, 9)]:
        C = rng.normal(size=(2, d, d))
        t1, t2 = np.trace(C[0]), np.trace(C[1])
        want = np.trace(C[0] @ C[1]) + (np.trace(C[0].T @ C[1]) + t1 * t2) / N
        assert float(mixed_wishart_moment(C, N)) == pytest.approx(want, rel=1e-13, abs=1e-13)
    C = rng.normal(size=(1, 3, 3))
    assert float(mixed_wishart_moment(C, 5)) == pytest.approx(np.trace(C[0]), rel=1e-14)


@pytest.mark.parametrize(("d", "N"), [(3, 10), (5, 3), (2, 7)])
def test_scalar_steps_equal_theory(d, N):
    """A_l = a_l I: theory.deep's risk (loop-equation moments) to 1e-12 relative, L = 1..3."""
    rng = np.random.default_rng(d * 100 + N)
    for L in (1, 2, 3):
        a = rng.uniform(0.1, 1.5, L)
        A = np.stack([ai * np.eye(d) for ai in a])
        got = float(_risk(A, N))
        assert got == pytest.approx(step_sizes_risk(a, d, N), rel=1e-12)


def test_monte_carlo_through_the_literal_stack():
    """Random non-symmetric A, anisotropic Sigma and Sigma_w (tr Sigma = 15.3, far from d), L = 2:
    the exact risk against the mean squared error of the literal masked stack."""
    rng = np.random.default_rng(5)
    d, N, L, B = 3, 6, 2, 400_000
    Sigma = _random_spd(rng, d, 2.6)
    Sigma_w = _random_spd(rng, d, 0.7)
    A = 0.15 * rng.normal(size=(L, d, d)) + 0.2 * np.eye(d)
    exact = float(_risk(A, N, Sigma, Sigma_w))
    key = jax.random.PRNGKey(11)
    k1, k2, k3 = jax.random.split(key, 3)
    Lx = np.linalg.cholesky(Sigma)
    Lw = np.linalg.cholesky(Sigma_w)
    X = jax.random.normal(k1, (B, N, d)) @ Lx.T
    xq = jax.random.normal(k2, (B, d)) @ Lx.T
    w = jax.random.normal(k3, (B, d)) @ Lw.T
    y = np.einsum("bnd,bd->bn", X, w)
    W_PV, W_KQ = sparse_weights(A)
    pred = np.asarray(deep_predict(lsa.embed(X, y, xq), W_PV, W_KQ, "ahn"))
    err2 = (pred - np.einsum("bd,bd->b", xq, w)) ** 2
    z = (err2.mean() - exact) / (err2.std(ddof=1) / np.sqrt(B))
    assert abs(z) < 4, (exact, err2.mean(), z)


def test_flow_reaches_the_scalar_optimum_and_the_whitened_one():
    """Isotropic x, w ~ N(0, I): from a small random start the matrix flow ends at a*_l I
    (theory.deep.optimal_step_sizes, layers matched by trace) to 1e-8. With Sigma != I and
    w ~ N(0, Sigma^{-1}) the same limit holds for Sigma^{1/2} A_l Sigma^{1/2}."""
    d, N, L = 3, 10, 2
    a_star = optimal_step_sizes(d, N, L)
    rng = np.random.default_rng(2)
    Sigma = _random_spd(rng, d, 4.0)
    lam, V = np.linalg.eigh(Sigma)
    R = (V * np.sqrt(lam)) @ V.T
    for Sig, Sw, whiten in [(None, None, np.eye(d)), (Sigma, np.linalg.inv(Sigma), R)]:
        A0 = 0.05 * rng.normal(size=(L, d, d))
        res = sparse_population_flow(A0, N, Sig, Sw)
        B = np.einsum("ij,ljk,km->lim", whiten, res.A, whiten)
        order = np.argsort(np.trace(B, axis1=1, axis2=2))
        for i, ell in enumerate(order):
            assert np.max(np.abs(B[ell] - a_star[i] * np.eye(d))) <= 1e-8, (res.A, a_star)
        assert res.hessian_min_eig > 0
        assert np.all(np.diff(res.risk) <= 1e-12 * res.risk[0])
        assert res.risk[-1] == pytest.approx(step_sizes_risk(a_star, d, N), rel=1e-10)


def test_bad_input_and_failure_are_loud():
    with pytest.raises(ValueError, match="L = 4"):
        sparse_population_flow(np.zeros((4, 2, 2)), 5)
    with pytest.raises(ValueError, match="Sigma"):
        sparse_population_flow(np.zeros((1, 2, 2)), 5, Sigma=np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive definite"):
        sparse_population_flow(np.zeros((1, 2, 2)), 5, Sigma_w=-np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        sparse_population_flow(np.full((1, 2, 2), np.nan), 5)
    with pytest.raises(ValueError, match="`N`"):
        sparse_population_flow(np.zeros((1, 2, 2)), 0)
    # A horizon too short to converge (same shapes as the flow test: no new compilation).
    with pytest.raises(FlowError) as info:
        sparse_population_flow(0.05 * np.ones((2, 3, 3)), 10, t_max=1e-3)
    assert info.value.status == "horizon"


@pytest.fixture(autouse=True)
def _x64():
    lsa.set_precision("float64")
    yield
