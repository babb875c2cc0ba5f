"""lsa.deep_empirical: the Gram route against the literal map (value and gradient, both
conventions), the predictor wrapper, the flows against an independent least-squares solution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsa
from lsa.deep import deep_predict
from lsa.deep_empirical import (
    deep_empirical_loss,
    deep_empirical_value_and_grad,
    deep_literal_loss,
    deep_stats,
    deep_stats_predict,
    sparse_empirical_flow,
    sparse_empirical_value_and_grad,
)

lsa.set_precision("float64")


def _prompts(seed: int, B: int, n: int, d: int, noise: float = 0.0):
    return lsa.PromptDistribution(np.eye(d), noise_std=noise).sample(jax.random.PRNGKey(seed), B, n)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize(
    ("L", "d", "n", "convention"),
    [(1, 3, 5, "ahn"), (2, 2, 7, "zfb"), (4, 4, 3, "zfb"), (4, 4, 3, "ahn")],
)
def test_gram_route_equals_literal_map(convention, L, d, n):
    P = _prompts(L + d, 64, n, d, noise=0.3)
    k1, k2 = jax.random.split(jax.random.PRNGKey(100 + L))
    Wp = 0.4 * jax.random.normal(k1, (L, d + 1, d + 1))
    Wk = 0.4 * jax.random.normal(k2, (L, d + 1, d + 1))
    st = deep_stats(P.X, P.y, P.x_q, P.y_q, convention)
    pred = deep_stats_predict(Wp, Wk, st)
    lit = deep_predict(lsa.embed(P.X, P.y, P.x_q), Wp, Wk, convention)
    assert _rel(pred, lit) < 1e-12
    v, (gP, gK) = deep_empirical_value_and_grad(Wp, Wk, st)
    v2, (gP2, gK2) = jax.value_and_grad(deep_literal_loss, argnums=(0, 1))(
        Wp, Wk, P.X, P.y, P.x_q, P.y_q, convention
    )
    assert abs(float(v - v2)) / abs(float(v2)) < 1e-12
    assert _rel(gP, gP2) < 1e-12 and _rel(gK, gK2) < 1e-12
    # the autodiff of the Gram-route loss agrees too
    gA = jax.grad(deep_empirical_loss, argnums=(0, 1))(Wp, Wk, st)
    assert _rel(gA[0], gP2) < 1e-12 and _rel(gA[1], gK2) < 1e-12


def test_sparse_gradient_chain_rule():
    d, L = 3, 2
    P = _prompts(1, 50, 6, d)
    st = deep_stats(P.X, P.y, P.x_q, P.y_q, "ahn")
    A = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (L, d, d))
    _, g = sparse_empirical_value_and_grad(A, st)
    from lsa.deep_empirical import sparse_empirical_loss

    assert _rel(g, jax.grad(sparse_empirical_loss)(A, st)) < 1e-12


def test_predictor_wrapper_equals_literal_map():
    from simulations.icl.deep_predictor import DeepLSAPredictor

    d, L, n = 3, 3, 8
    P = _prompts(3, 20, n, d)
    Wp = 0.3 * jax.random.normal(jax.random.PRNGKey(4), (L, d + 1, d + 1))
    Wk = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (L, d + 1, d + 1))
    for conv, sign in (("zfb", 1.0), ("ahn", -1.0)):
        got = DeepLSAPredictor(Wp, Wk, conv)(P.X, P.y, P.x_q)
        ref = sign * lsa.deep.deep_forward(lsa.embed(P.X, P.y, P.x_q), Wp, Wk, conv)[:, -1, -1]
        assert _rel(got, ref) < 1e-12


def test_one_layer_sparse_flow_reaches_least_squares():
    """L = 1, "ahn": y_hat = x_q^T A g with g = X^T y / n, linear in vec(A), so the empirical
    minimiser is a least-squares solution computed independently with numpy."""
    d, n, B = 2, 6, 300
    P = _prompts(7, B, n, d, noise=0.2)
    st = deep_stats(P.X, P.y, P.x_q, P.y_q, "ahn")
    g = np.einsum("bnd,bn->bd", np.asarray(P.X), np.asarray(P.y)) / n
    feats = np.einsum("bi,bj->bij", np.asarray(P.x_q), g).reshape(B, -1)  # x_q^T A g
    A_ls = np.linalg.lstsq(feats, np.asarray(P.y_q), rcond=None)[0].reshape(d, d)
    res = sparse_empirical_flow(st, 0.01 * np.ones((1, d, d)), gtol=1e-11)
    assert res.status == "converged" and res.grad_norm <= 1e-11
    assert np.max(np.abs(res.final["A"][0] - A_ls)) < 1e-8
    assert np.all(np.diff(res.loss) <= 1e-14)  # gradient flow: the loss never increases


def test_bad_input():
    P = _prompts(0, 4, 3, 2)
    with pytest.raises(ValueError, match="convention"):
        deep_stats(P.X, P.y, P.x_q, P.y_q, "bad")  # type: ignore[arg-type]
    st = deep_stats(P.X, P.y, P.x_q, P.y_q, "ahn")
    with pytest.raises(ValueError, match="W_PV"):
        deep_stats_predict(jnp.zeros((1, 4, 4)), jnp.zeros((1, 3, 3)), st)
    with pytest.raises(ValueError, match="A"):
        sparse_empirical_flow(st, np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="gtol"):
        sparse_empirical_flow(st, np.zeros((1, 2, 2)), gtol=-1.0)
