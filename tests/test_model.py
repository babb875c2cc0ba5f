"""Tests of `lsa.model`: the embedding, the literal LSA map and its shortcuts (theory.md §2, §5,
§6).

Every comparison is against something independent of the code under test: an explicit numpy
loop implementation of the map, the block formula of §5 written out by hand, or the closed
forms of `theory` (rows 1–3 of theory.md §14). Float64 throughout; Lambda is anisotropic and
non-diagonal, N is comparable to d and M != N.
"""

import numpy as np
import pytest

import lsa
import theory

D = 4
N_TRAIN = 5


def _draw_prompt(rng, Lambda, n, batch=()):
    """Gaussian prompt(s) with x ~ N(0, Lambda), w ~ N(0, I) and noiseless labels (numpy)."""
    d = Lambda.shape[0]
    L = np.linalg.cholesky(Lambda)
    X = rng.standard_normal((*batch, n, d)) @ L.T
    x_q = rng.standard_normal((*batch, d)) @ L.T
    w = rng.standard_normal((*batch, d))
    y = np.einsum("...nd,...d->...n", X, w)
    return X, y, x_q, w


def _explicit_map(E, W_PV, W_KQ, rho):
    """`E + W_PV E (E^T W_KQ E) / rho` for ONE prompt by explicit scalar loops (no matmul)."""
    D1, C = E.shape
    attn = np.zeros((C, C))
    for j in range(C):
        for k in range(C):
            s = 0.0
            for a in range(D1):
                for b in range(D1):
                    s += E[a, j] * W_KQ[a, b] * E[b, k]
            attn[j, k] = s
    VE = np.zeros((D1, C))
    for i in range(D1):
        for j in range(C):
            VE[i, j] = sum(W_PV[i, c] * E[c, j] for c in range(D1))
    out = E.copy()
    for i in range(D1):
        for k in range(C):
            out[i, k] += sum(VE[i, j] * attn[j, k] for j in range(C)) / rho
    return out


# ----------------------------------------------------------------------------------------------
# embed


def test_embed_layout(rng, aniso_lambda):
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, 6, batch=(3, 2))
    E = np.asarray(lsa.embed(X, y, x_q))
    assert E.shape == (3, 2, D + 1, 7)
    assert E.dtype == np.float64
    for b in np.ndindex(3, 2):
        for i in range(6):
            np.testing.assert_array_equal(E[b][:D, i], X[b][i])
            assert E[b][D, i] == y[b][i]
        np.testing.assert_array_equal(E[b][:D, 6], x_q[b])
        assert E[b][D, 6] == 0.0  # the query's label slot is 0 (convention trap 4)


def test_embed_shape_mismatch_raises(rng, aniso_lambda):
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, 5, batch=(3,))
    with pytest.raises(ValueError, match="x_q"):
        lsa.embed(X, y[:, :4], x_q)  # y has the wrong length
    with pytest.raises(ValueError, match="x_q"):
        lsa.embed(X, y, x_q[:, :3])  # query of the wrong dimension
    with pytest.raises(ValueError, match="x_q"):
        lsa.embed(X, y, x_q[:2])  # batch sizes differ


# ----------------------------------------------------------------------------------------------
# the literal map


@pytest.mark.parametrize("n", [3, 8])
def test_lsa_forward_matches_explicit_loops(rng, aniso_lambda, n):
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, n)
    W_PV = rng.standard_normal((D + 1, D + 1))
    W_KQ = rng.standard_normal((D + 1, D + 1))
    E = np.asarray(lsa.embed(X, y, x_q))
    ref = _explicit_map(E, W_PV, W_KQ, rho=n)  # rho = number of columns - 1
    out = np.asarray(lsa.lsa_forward(E, W_PV, W_KQ))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert float(lsa.predict(E, W_PV, W_KQ)) == out[D, n]  # bottom-right entry


def test_lsa_forward_batch_equals_per_prompt(rng, aniso_lambda):
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, 4, batch=(2, 3))
    W_PV = rng.standard_normal((D + 1, D + 1))
    W_KQ = rng.standard_normal((D + 1, D + 1))
    E = np.asarray(lsa.embed(X, y, x_q))
    out = np.asarray(lsa.lsa_forward(E, W_PV, W_KQ))
    for b in np.ndindex(2, 3):
        ref = _explicit_map(E[b], W_PV, W_KQ, rho=4)
        np.testing.assert_allclose(out[b], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("n", [3, 8])
def test_predict_prompt_equals_literal_map(rng, aniso_lambda, n):
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, n, batch=(40,))
    W_PV = rng.standard_normal((D + 1, D + 1))
    W_KQ = rng.standard_normal((D + 1, D + 1))
    ref = np.asarray(lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ))
    got = np.asarray(lsa.predict_prompt(X, y, x_q, W_PV, W_KQ))
    assert got.shape == (40,)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


# ----------------------------------------------------------------------------------------------
# row 3: the block formula of §5 for generic dense parameters


@pytest.mark.parametrize("n", [3, 8])
def test_block_formula_section5(rng, aniso_lambda, n):
    """y_hat = alpha_w^T S_hat B_w x_q + (a^T x_q)(x_q^T U x_q)/rho with rho = n (§5, row 3)."""
    X, y, x_q, w = _draw_prompt(rng, aniso_lambda, n, batch=(40,))
    W_PV = rng.standard_normal((D + 1, D + 1))
    W_KQ = rng.standard_normal((D + 1, D + 1))
    u, U = W_PV[D, D], W_KQ[:D, :D]
    a, b = W_PV[D, :D], W_KQ[D, :D]
    ref = np.asarray(lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ))
    rho = n
    block = np.empty(40)
    for t in range(40):
        alpha = a + u * w[t]
        B_w = U + np.outer(w[t], b)
        S_hat = X[t].T @ X[t] / n
        block[t] = (n / rho) * alpha @ S_hat @ B_w @ x_q[t] + (a @ x_q[t]) * (
            x_q[t] @ U @ x_q[t]
        ) / rho
    np.testing.assert_allclose(ref, block, rtol=1e-11, atol=1e-12 * np.abs(ref).max())
    # The query self-term is not negligible for generic parameters (convention trap 5): dropping
    # it would fail the comparison above by far.
    self_term = np.einsum("d,bd->b", a, x_q) * np.einsum("bi,ij,bj->b", x_q, U, x_q) / rho
    assert np.max(np.abs(self_term)) > 1e3 * 1e-12 * np.abs(ref).max()


def test_block_formula_with_a_b_zero_is_h_G_xq(rng, aniso_lambda):
    """With a = b = 0 the map is h^T (u U) x_q with h = (1/n) sum y_i x_i (§5, §6)."""
    n = 8
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, n, batch=(40,))
    u = 0.8
    U = rng.standard_normal((D, D))  # not symmetric
    W_PV, W_KQ = lsa.from_reduced(u, U)
    ref = np.asarray(lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ))
    h = np.einsum("bn,bnd->bd", y, X) / n
    np.testing.assert_allclose(
        ref, np.einsum("bi,ij,bj->b", h, u * U, x_q), rtol=1e-11, atol=1e-12 * np.abs(ref).max()
    )


# ----------------------------------------------------------------------------------------------
# reduced view


def test_reduced_view_from_reduced_round_trip(rng):
    u = 0.7
    U = rng.standard_normal((D, D))
    a = rng.standard_normal(D)
    b = rng.standard_normal(D)
    W_PV, W_KQ = (np.asarray(m) for m in lsa.from_reduced(u, U, a, b))
    assert W_PV.shape == W_KQ.shape == (D + 1, D + 1)
    assert W_PV[D, D] == u
    np.testing.assert_array_equal(W_PV[D, :D], a)
    np.testing.assert_array_equal(W_KQ[:D, :D], U)
    np.testing.assert_array_equal(W_KQ[D, :D], b)
    # every other entry is zero
    assert not np.any(W_PV[:D, :]) and not np.any(W_KQ[:, D])
    r = lsa.reduced_view(W_PV, W_KQ)
    assert float(r.u) == u
    np.testing.assert_array_equal(np.asarray(r.U), U)
    np.testing.assert_array_equal(np.asarray(r.a), a)
    np.testing.assert_array_equal(np.asarray(r.b), b)
    # defaults a = b = 0 (Assumption 3.3 form)
    W_PV0, W_KQ0 = (np.asarray(m) for m in lsa.from_reduced(u, U))
    assert not np.any(W_PV0[D, :D]) and not np.any(W_KQ0[D, :D])


def test_irrelevant_entries_do_not_change_predictions(rng, aniso_lambda):
    """Only the last row of W_PV and the first d columns of W_KQ matter (§2.4)."""
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, 8, batch=(40,))
    E = lsa.embed(X, y, x_q)
    W_PV = rng.standard_normal((D + 1, D + 1))
    W_KQ = rng.standard_normal((D + 1, D + 1))
    ref = np.asarray(lsa.predict(E, W_PV, W_KQ))
    P_PV = W_PV.copy()
    P_PV[:D, :] += 10.0 * rng.standard_normal((D, D + 1))
    P_KQ = W_KQ.copy()
    P_KQ[:, D] += 10.0 * rng.standard_normal(D + 1)
    np.testing.assert_array_equal(np.asarray(lsa.predict(E, P_PV, P_KQ)), ref)
    # ... and keeping only the reduced entries gives the same predictions to round-off
    red = lsa.reduced_view(W_PV, W_KQ)
    R_PV, R_KQ = lsa.from_reduced(red.u, red.U, red.a, red.b)
    np.testing.assert_allclose(
        np.asarray(lsa.predict(E, R_PV, R_KQ)), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max()
    )
    # sanity: a relevant entry does change them
    Q_KQ = W_KQ.copy()
    Q_KQ[D, 0] += 1.0
    assert np.max(np.abs(np.asarray(lsa.predict(E, W_PV, Q_KQ)) - ref)) > 1e-3


# ----------------------------------------------------------------------------------------------
# rows 1–2: the trained layer on test prompts


@pytest.mark.parametrize("M", [3, 8, 13])
def test_trained_layer_prediction_row1(rng, aniso_lambda, M):
    assert M != N_TRAIN
    W_PV, W_KQ = theory.limit_weights(aniso_lambda, N_TRAIN)
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, M, batch=(40,))
    ref = theory.trained_prediction(X, y, x_q, aniso_lambda, N_TRAIN)
    scale = np.abs(ref).max()
    got = np.asarray(lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ))
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12 * scale)
    got2 = np.asarray(lsa.predict_prompt(X, y, x_q, W_PV, W_KQ))
    np.testing.assert_allclose(got2, ref, rtol=1e-11, atol=1e-12 * scale)
    # query column removed from E E^T (computed by hand): the same, since w^PV_21 = 0 at W_*
    E = np.asarray(lsa.embed(X, y, x_q))
    E_ctx = E[..., :M]  # the M context columns only
    no_q = np.empty(40)
    for t in range(40):
        col = W_PV @ (E_ctx[t] @ E_ctx[t].T / M) @ W_KQ @ E[t, :, M]
        no_q[t] = col[D]
    np.testing.assert_allclose(no_q, ref, rtol=1e-11, atol=1e-12 * scale)


@pytest.mark.parametrize("M", [3, 13])
def test_rho_convention_row2(rng, aniso_lambda, M):
    """rho = N at test would give exactly M/N times the rho = M prediction (§6, trap 1)."""
    W_PV, W_KQ = theory.limit_weights(aniso_lambda, N_TRAIN)
    X, y, x_q, _ = _draw_prompt(rng, aniso_lambda, M, batch=(40,))
    E = np.asarray(lsa.embed(X, y, x_q))
    got = np.asarray(lsa.predict(E, W_PV, W_KQ))
    ref = theory.trained_prediction(X, y, x_q, aniso_lambda, N_TRAIN)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12 * scale)
    wrong = np.array([_explicit_map(E[t], W_PV, W_KQ, rho=N_TRAIN)[D, M] for t in range(40)])
    np.testing.assert_allclose(wrong, (M / N_TRAIN) * got, rtol=1e-11, atol=1e-12 * scale)
    # the library does not use rho = N: it is far from the wrong convention
    assert np.max(np.abs(wrong - got)) > 0.1 * scale


def test_fixture_lambda_is_anisotropic_non_diagonal(aniso_lambda):
    off = aniso_lambda - np.diag(np.diag(aniso_lambda))
    assert np.abs(off).max() > 0.1
    ev = np.linalg.eigvalsh(aniso_lambda)
    assert ev[-1] / ev[0] == pytest.approx(10.0)
