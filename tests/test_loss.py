"""Tests of `lsa.loss`: the population loss on a = b = 0, its gradient, and the empirical loss.

References: the independently written closed forms of `theory` (rows 4, 8 of theory.md §14), the
literal right-hand side of Lemma 5.2, Monte Carlo on the full LSA map (rows 6–7; acceptance
|z| <= 4 with z = (MC mean - closed form) / MC standard error), and the exact odd/even symmetry
of antithetic prompt sets (row 5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsa
import theory
from lsa.flow import reduced_vector_field

D = 4
N_TRAIN = 5
Z_MAX = 4.0


@pytest.fixture(scope="module")
def lam():
    """Anisotropic, non-diagonal Lambda (d = 4, condition number 10)."""
    return np.asarray(lsa.rotated_covariance(np.array([0.4, 0.9, 1.7, 4.0]), jax.random.PRNGKey(7)))


def _random_point(rng, scale=0.4):
    return rng.standard_normal((D, D)) * scale, float(rng.uniform(0.3, 1.5))


# ----------------------------------------------------------------------------------------------
# row 4: closed form against closed form, gradient against the literal ODE


def test_gamma_matrix_matches_theory(lam):
    for N in (1, 5, 17):
        np.testing.assert_allclose(
            np.asarray(lsa.gamma_matrix(lam, N)), theory.gamma(lam, N), rtol=1e-14, atol=1e-15
        )


@pytest.mark.parametrize("N", [3, 5, 12])
def test_population_loss_matches_theory(lam, rng, N):
    for _ in range(5):
        U, u = _random_point(rng)
        L = float(lsa.population_loss(U, u, lam, N))
        ref = theory.reduced_loss(U, u, lam, N)  # theory's L includes tr(Lambda)/2
        assert L == pytest.approx(ref, rel=1e-13, abs=1e-14)
        # l~ = L - tr(Lambda)/2 (§4.3)
        assert float(lsa.reduced_loss(U, u, lam, N)) == pytest.approx(
            ref - 0.5 * np.trace(lam), rel=1e-12, abs=1e-13
        )


def test_population_loss_minimum_and_gap(lam, rng):
    u_s, U_s = theory.limit_reduced(lam, N_TRAIN)
    L_min = theory.min_loss(lam, N_TRAIN)
    assert float(lsa.population_loss(U_s, u_s, lam, N_TRAIN)) == pytest.approx(L_min, rel=1e-13)
    for _ in range(5):
        U, u = _random_point(rng)
        gap = float(lsa.population_loss(U, u, lam, N_TRAIN)) - L_min
        assert gap == pytest.approx(theory.loss_gap(U, u, lam, N_TRAIN), rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("N", [3, 5, 12])
def test_population_loss_grad_is_minus_lemma52_rhs(lam, rng, N):
    for _ in range(5):
        U, u = _random_point(rng)
        gU, gu = lsa.population_loss_grad(jnp.asarray(U), jnp.asarray(u), lam, N)
        dU, du = reduced_vector_field(U, u, lam, N)
        scale = np.abs(np.asarray(dU)).max()
        np.testing.assert_allclose(np.asarray(gU), -np.asarray(dU), rtol=1e-12, atol=1e-13 * scale)
        assert float(gu) == pytest.approx(-float(du), rel=1e-12, abs=1e-13)
        # and against theory's hand-written gradient (a third, independent form)
        tU, tu = theory.reduced_loss_grad(U, u, lam, N)
        np.testing.assert_allclose(np.asarray(gU), tU, rtol=1e-12, atol=1e-13 * scale)
        assert float(gu) == pytest.approx(tu, rel=1e-12, abs=1e-13)


def test_reduced_vector_field_vanishes_at_limit(lam):
    u_s, U_s = theory.limit_reduced(lam, N_TRAIN)
    dU, du = reduced_vector_field(U_s, u_s, lam, N_TRAIN)
    assert np.abs(np.asarray(dU)).max() <= 1e-13
    assert abs(float(du)) <= 1e-13


# ----------------------------------------------------------------------------------------------
# rows 6–7: Monte Carlo on the full LSA map


def _mc_half_sq_error(lam, W_PV, W_KQ, n_prompts, seed, batch=50_000):
    """Per-prompt (y_hat - y_q)^2 from the literal map lsa.predict(lsa.embed(...)), in batches."""
    dist = lsa.PromptDistribution(lam)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_prompts // batch)
    out = []
    for k in keys:
        p = dist.sample(k, batch, N_TRAIN)
        y_hat = lsa.predict(lsa.embed(p.X, p.y, p.x_q), W_PV, W_KQ)
        out.append(np.asarray((y_hat - p.y_q) ** 2))
    return np.concatenate(out)


def _z(samples, target):
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    return (samples.mean() - target) / se, se


@pytest.mark.parametrize("where", ["paper_init", "random"])
def test_population_loss_monte_carlo_full_map(lam, rng, where):
    """Rows 6/7: L (with the 1/2) against MC of (1/2)(y_hat - y_q)^2 on 2e5 prompts, |z| <= 4."""
    if where == "paper_init":
        init = lsa.paper_init(lam, N_TRAIN, sigma_fraction=0.5, key=jax.random.PRNGKey(1))
        u, U = float(init.u), np.asarray(init.U)
        W_PV, W_KQ = init.weights()
    else:
        U, u = rng.standard_normal((D, D)) * 0.3, 0.8
        W_PV, W_KQ = lsa.from_reduced(u, U)
    closed = float(lsa.population_loss(U, u, lam, N_TRAIN))
    sq = _mc_half_sq_error(lam, W_PV, W_KQ, 200_000, seed=11 if where == "random" else 12)
    z, se = _z(0.5 * sq, closed)
    assert abs(z) <= Z_MAX, (z, se, closed)
    # Sensitivity: the same sample against the loss without the 1/2 is rejected by far.
    z_no_half, _ = _z(sq, closed)
    assert abs(z_no_half) > 20, z_no_half
    # ... and a relative SE well below the size of a factor-of-2 error
    assert se < 0.02 * closed


# ----------------------------------------------------------------------------------------------
# row 5: exact zero gradient in a, b and the irrelevant entries at a = b = 0


# The prompt sets below reuse the MC batch shape (50_000 prompts of length N) so that the
# eagerly compiled sampling kernels are shared between tests.
MC_BATCH = 50_000


@pytest.fixture(scope="module")
def anti_prompts(lam):
    """100_000 prompts: 50_000 draws and their antithetic partners (same X, x_q; w -> -w)."""
    return lsa.PromptDistribution(lam).sample(
        jax.random.PRNGKey(21), 2 * MC_BATCH, N_TRAIN, antithetic=True
    )


@pytest.fixture(scope="module")
def anti_stats(anti_prompts):
    p = anti_prompts
    return lsa.prompt_stats(p.X, p.y, p.x_q, p.y_q)


@pytest.fixture(scope="module")
def plain_prompts(lam, anti_prompts):
    """100_000 prompts without pairing: the first antithetic half plus 50_000 fresh draws."""
    fresh = lsa.PromptDistribution(lam).sample(jax.random.PRNGKey(22), MC_BATCH, N_TRAIN)
    return type(fresh)(
        *(jnp.concatenate([a[:MC_BATCH], b]) for a, b in zip(anti_prompts, fresh, strict=True))
    )


@pytest.fixture(scope="module")
def plain_stats(plain_prompts):
    p = plain_prompts
    return lsa.prompt_stats(p.X, p.y, p.x_q, p.y_q)


_grad_full = jax.jit(jax.grad(lsa.empirical_loss, argnums=(0, 1)))


def _full_grad(W_PV, W_KQ, stats):
    return (np.asarray(g) for g in _grad_full(jnp.asarray(W_PV), jnp.asarray(W_KQ), stats))


@pytest.mark.parametrize("kind", ["paper_init", "random_U"])
def test_zero_gradient_in_a_b_irrelevant_with_antithetic_prompts(lam, rng, anti_stats, kind):
    if kind == "paper_init":
        W_PV, W_KQ = lsa.paper_init(lam, N_TRAIN, sigma=0.3, key=jax.random.PRNGKey(2)).weights()
    else:
        W_PV, W_KQ = lsa.from_reduced(0.9, rng.standard_normal((D, D)))
    gPV, gKQ = _full_grad(W_PV, W_KQ, anti_stats)
    scale = max(abs(gPV[D, D]), np.abs(gKQ[:D, :D]).max())
    assert scale > 1e-3  # the relevant gradient is not zero
    assert np.abs(gPV[D, :D]).max() <= 1e-13 * scale  # a
    assert np.abs(gKQ[D, :D]).max() <= 1e-13 * scale  # b
    # irrelevant entries: exactly zero (they do not enter the prediction at all)
    assert not np.any(gPV[:D, :])
    assert not np.any(gKQ[:, D])


def test_gradient_in_a_b_nonzero_without_antithetic(lam, rng, plain_stats):
    """Sanity: on a plain (non-antithetic) finite prompt set the a, b gradient is not 0."""
    W_PV, W_KQ = lsa.from_reduced(0.9, rng.standard_normal((D, D)))
    gPV, gKQ = _full_grad(W_PV, W_KQ, plain_stats)
    scale = max(abs(gPV[D, D]), np.abs(gKQ[:D, :D]).max())
    assert max(np.abs(gPV[D, :D]).max(), np.abs(gKQ[D, :D]).max()) > 1e-6 * scale
    assert not np.any(gPV[:D, :]) and not np.any(gKQ[:, D])


# ----------------------------------------------------------------------------------------------
# empirical predictions and statistics


def test_prompt_stats_is_E_Et_over_n(plain_prompts, plain_stats):
    p, st = plain_prompts, plain_stats
    X, y, x_q, y_q = (np.asarray(a) for a in p[:4])
    assert st.S.shape == (2 * MC_BATCH, D + 1, D + 1)
    n = N_TRAIN
    for b in range(16):
        cols = [np.append(X[b, i], y[b, i]) for i in range(n)] + [np.append(x_q[b], 0.0)]
        S = sum(np.outer(c, c) for c in cols) / n  # query column included, divided by n
        np.testing.assert_allclose(np.asarray(st.S[b]), S, rtol=1e-13, atol=1e-14 * np.abs(S).max())
    np.testing.assert_array_equal(np.asarray(st.x_q), x_q)
    np.testing.assert_array_equal(np.asarray(st.y_q), y_q)


def test_empirical_predict_and_loss_match_literal_map(rng, plain_prompts, plain_stats):
    p, st = plain_prompts, plain_stats
    W_PV = rng.standard_normal((D + 1, D + 1))
    W_KQ = rng.standard_normal((D + 1, D + 1))
    ref = np.concatenate(
        [
            np.asarray(lsa.predict(lsa.embed(p.X[sl], p.y[sl], p.x_q[sl]), W_PV, W_KQ))
            for sl in (slice(0, MC_BATCH), slice(MC_BATCH, None))
        ]
    )
    got = np.asarray(lsa.empirical_predict(W_PV, W_KQ, st))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    L_ref = 0.5 * np.mean((ref - np.asarray(p.y_q)) ** 2)
    assert float(lsa.empirical_loss(W_PV, W_KQ, st)) == pytest.approx(L_ref, rel=1e-11)


def test_quadratic_form_loss_matches_empirical_loss(lam, rng, plain_stats):
    """The folded quadratic form (a second algorithm) equals the per-prompt empirical loss."""
    if not hasattr(lsa, "quadratic_loss"):
        pytest.skip("lsa.quadratic_loss not available")
    q = lsa.quadratic_loss(plain_stats)
    grad_q = jax.jit(jax.grad(lsa.quadratic_form_loss, argnums=(0, 1)))
    for _ in range(3):
        W_PV = rng.standard_normal((D + 1, D + 1)) * 0.5
        W_KQ = rng.standard_normal((D + 1, D + 1)) * 0.5
        L = float(lsa.empirical_loss(W_PV, W_KQ, plain_stats))
        Lq = float(lsa.quadratic_form_loss(W_PV, W_KQ, q))
        assert Lq == pytest.approx(L, rel=1e-10)
        g = _full_grad(W_PV, W_KQ, plain_stats)
        gq = grad_q(jnp.asarray(W_PV), jnp.asarray(W_KQ), q)
        for a, b in zip(g, gq, strict=True):
            b = np.asarray(b)
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-10 * np.abs(a).max())
