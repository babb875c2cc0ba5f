"""Tests of `lsa.prompts`: the sampler, the covariance builders and the paper's initialisation.

Random quantities are checked by z-tests against the Monte Carlo standard error (acceptance
|z| <= 4, fixed in advance); closed quantities against `theory` or exact identities.
"""

import warnings

import jax
import numpy as np
import pytest

import lsa
import theory

N_TRAIN = 5
Z_MAX = 4.0


def _z(samples, target):
    """z-score of the sample mean against `target`, with the sample's own standard error."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    return (samples.mean() - target) / se


# ----------------------------------------------------------------------------------------------
# PromptDistribution.sample


@pytest.fixture(scope="module")
def big_sample():
    Lambda = np.asarray(
        lsa.rotated_covariance(np.array([0.4, 0.9, 1.7, 4.0]), jax.random.PRNGKey(7))
    )
    dist = lsa.PromptDistribution(Lambda)
    return Lambda, dist.sample(jax.random.PRNGKey(3), 20_000, 6)


def test_sample_shapes_and_dtype(big_sample):
    _, p = big_sample
    assert p.X.shape == (20_000, 6, 4)
    assert p.y.shape == (20_000, 6)
    assert p.x_q.shape == (20_000, 4)
    assert p.y_q.shape == p.w.shape[:1] == (20_000,)
    assert all(np.asarray(a).dtype == np.float64 for a in p)


@pytest.mark.parametrize("ij", [(0, 0), (0, 1), (1, 3), (2, 2), (2, 3)])
def test_sample_input_second_moments(big_sample, ij):
    """E[x_i x_j] = Lambda_ij for the context inputs and the query (iid N(0, Lambda))."""
    Lambda, p = big_sample
    i, j = ij
    X = np.asarray(p.X).reshape(-1, 4)
    x_q = np.asarray(p.x_q)
    z_ctx = _z(X[:, i] * X[:, j], Lambda[i, j])
    z_q = _z(x_q[:, i] * x_q[:, j], Lambda[i, j])
    assert abs(z_ctx) <= Z_MAX, z_ctx
    assert abs(z_q) <= Z_MAX, z_q


def test_sample_task_moments_and_means(big_sample):
    _, p = big_sample
    w = np.asarray(p.w)
    for i, j in [(0, 0), (1, 1), (0, 2), (1, 3)]:
        z = _z(w[:, i] * w[:, j], float(i == j))
        assert abs(z) <= Z_MAX, (i, j, z)
    X = np.asarray(p.X).reshape(-1, 4)
    for i in range(4):
        assert abs(_z(X[:, i], 0.0)) <= Z_MAX
        assert abs(_z(w[:, i], 0.0)) <= Z_MAX


def test_sample_context_and_query_independent(big_sample):
    """Different prompt positions and the query are uncorrelated (E[x_1,i x_q,j] = 0)."""
    _, p = big_sample
    X = np.asarray(p.X)
    x_q = np.asarray(p.x_q)
    assert abs(_z(X[:, 0, 1] * x_q[:, 1], 0.0)) <= Z_MAX
    assert abs(_z(X[:, 0, 2] * X[:, 3, 2], 0.0)) <= Z_MAX


def test_noiseless_labels_equal_w_dot_x(big_sample):
    _, p = big_sample
    X, y, x_q, y_q, w = (np.asarray(a) for a in p)
    # y = <w, x> up to the rounding of a d-term dot product (bound 4 eps sum |x_k w_k|, d = 4)
    bound = 4 * np.finfo(np.float64).eps * np.einsum("bnd,bd->bn", np.abs(X), np.abs(w))
    assert np.all(np.abs(y - np.einsum("bnd,bd->bn", X, w)) <= bound)
    bound_q = 4 * np.finfo(np.float64).eps * np.einsum("bd,bd->b", np.abs(x_q), np.abs(w))
    assert np.all(np.abs(y_q - np.einsum("bd,bd->b", x_q, w)) <= bound_q)


@pytest.mark.parametrize("noisy_target", [False, True])
def test_noise_variance(aniso_lambda, noisy_target):
    s = 0.3
    dist = lsa.PromptDistribution(aniso_lambda, noise_std=s, noisy_target=noisy_target)
    p = dist.sample(jax.random.PRNGKey(5), 20_000, 6)
    X, y, x_q, y_q, w = (np.asarray(a) for a in p)
    eps = y - np.einsum("bnd,bd->bn", X, w)
    assert abs(_z(eps**2, s**2)) <= Z_MAX
    assert abs(_z(eps, 0.0)) <= Z_MAX
    eps_q = y_q - np.einsum("bd,bd->b", x_q, w)
    if noisy_target:
        assert abs(_z(eps_q**2, s**2)) <= Z_MAX
        # the target noise is independent of the label noise
        assert abs(_z(eps_q * eps[:, 0], 0.0)) <= Z_MAX
    else:
        assert np.max(np.abs(eps_q)) <= 1e-13 * np.max(np.abs(y_q))


def test_task_covariance_sigma_w(aniso_lambda):
    Sigma_w = np.asarray(
        lsa.rotated_covariance(np.array([0.5, 1.0, 2.0, 3.0]), jax.random.PRNGKey(9))
    )
    p = lsa.PromptDistribution(aniso_lambda, Sigma_w=Sigma_w).sample(
        jax.random.PRNGKey(6), 20_000, 6
    )
    w = np.asarray(p.w)
    for i, j in [(0, 0), (0, 1), (2, 3), (3, 3)]:
        assert abs(_z(w[:, i] * w[:, j], Sigma_w[i, j])) <= Z_MAX


def test_antithetic_pairing(aniso_lambda):
    dist = lsa.PromptDistribution(aniso_lambda, noise_std=0.2, noisy_target=True)
    p = dist.sample(jax.random.PRNGKey(8), 40_000, 6, antithetic=True)
    X, y, x_q, y_q, w = (np.asarray(a) for a in p)
    h = 20_000
    np.testing.assert_array_equal(X[:h], X[h:])
    np.testing.assert_array_equal(x_q[:h], x_q[h:])
    np.testing.assert_array_equal(w[h:], -w[:h])
    # labels and targets (with their noise) are exactly negated
    np.testing.assert_array_equal(y[h:], -y[:h])
    np.testing.assert_array_equal(y_q[h:], -y_q[:h])
    assert np.all(w[:h] != 0)
    with pytest.raises(ValueError, match="n_prompts"):
        dist.sample(jax.random.PRNGKey(8), 7, 5, antithetic=True)


def test_sample_is_reproducible_and_key_dependent(aniso_lambda):
    dist = lsa.PromptDistribution(aniso_lambda)
    a = dist.sample(jax.random.PRNGKey(1), 20_000, 6)
    b = dist.sample(jax.random.PRNGKey(1), 20_000, 6)
    c = dist.sample(jax.random.PRNGKey(2), 20_000, 6)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    assert not np.allclose(np.asarray(a.X), np.asarray(c.X))


# ----------------------------------------------------------------------------------------------
# random_theta, paper_init, sigma_bound


@pytest.mark.parametrize("d", [1, 3, 6])
def test_random_theta_normalised(key, d):
    Th = np.asarray(lsa.random_theta(key, d))
    assert Th.shape == (d, d)
    assert np.linalg.norm(Th @ Th.T, "fro") == pytest.approx(1.0, rel=1e-14)


def test_sigma_bound_matches_theory(aniso_lambda):
    for N in (1, 5, 40):
        assert lsa.sigma_bound(aniso_lambda, N) == pytest.approx(
            theory.sigma_max(aniso_lambda, N), rel=1e-14
        )


def test_paper_init_explicit_theta(aniso_lambda, rng):
    Theta = 3.0 * rng.standard_normal((4, 4))  # not normalised: paper_init rescales
    sigma = 0.2
    init = lsa.paper_init(aniso_lambda, N_TRAIN, sigma=sigma, Theta=Theta)
    TT = Theta @ Theta.T
    np.testing.assert_allclose(
        np.asarray(init.U), sigma * TT / np.linalg.norm(TT), rtol=1e-14, atol=1e-16
    )
    assert float(init.u) == sigma
    # balanced: u^2 = ||U||_F^2 (Assumption 3.3)
    assert float(init.u) ** 2 == pytest.approx(float(np.sum(np.asarray(init.U) ** 2)), rel=1e-14)
    # the full weights of Assumption 3.3
    W_PV, W_KQ = (np.asarray(m) for m in init.weights())
    ref_PV = np.zeros((5, 5))
    ref_PV[4, 4] = sigma
    ref_KQ = np.zeros((5, 5))
    ref_KQ[:4, :4] = sigma * TT / np.linalg.norm(TT)
    np.testing.assert_array_equal(W_PV, ref_PV)
    np.testing.assert_allclose(W_KQ, ref_KQ, rtol=1e-14, atol=1e-16)


def test_paper_init_sigma_fraction_and_key(aniso_lambda, key):
    init = lsa.paper_init(aniso_lambda, N_TRAIN, sigma_fraction=0.3, key=key)
    smax = theory.sigma_max(aniso_lambda, N_TRAIN)
    assert float(init.u) == pytest.approx(0.3 * smax, rel=1e-14)
    U = np.asarray(init.U)
    assert np.linalg.norm(U, "fro") == pytest.approx(0.3 * smax, rel=1e-13)
    np.testing.assert_allclose(U, U.T, rtol=0, atol=1e-16)  # sigma Theta Theta^T is symmetric
    assert np.linalg.eigvalsh(U)[0] > -1e-15  # and positive semidefinite


def test_paper_init_warns_at_and_above_sigma_max(aniso_lambda, key):
    with pytest.warns(lsa.TheoremCoverageWarning, match="sigma_max"):
        lsa.paper_init(aniso_lambda, N_TRAIN, sigma_fraction=1.0, key=key)
    smax = theory.sigma_max(aniso_lambda, N_TRAIN)
    with pytest.warns(lsa.TheoremCoverageWarning):
        lsa.paper_init(aniso_lambda, N_TRAIN, sigma=1.5 * smax, key=key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lsa.paper_init(aniso_lambda, N_TRAIN, sigma=0.999 * smax, key=key)


# ----------------------------------------------------------------------------------------------
# spread_covariance / rotated_covariance


@pytest.mark.parametrize(("d", "kappa"), [(2, 3.0), (5, 100.0), (20, 1e4)])
def test_spread_covariance_spectrum(key, d, kappa):
    S = np.asarray(lsa.spread_covariance(d, kappa, key))
    np.testing.assert_array_equal(S, S.T)
    ev = np.linalg.eigvalsh(S)
    assert ev[-1] / ev[0] == pytest.approx(kappa, rel=1e-9)
    assert np.trace(S) == pytest.approx(d, rel=1e-13)
    # geometric spread: consecutive ratios all equal kappa^(1/(d-1))
    np.testing.assert_allclose(ev[1:] / ev[:-1], kappa ** (1 / (d - 1)), rtol=1e-9)
    # rotated: not diagonal
    assert np.abs(S - np.diag(np.diag(S))).max() > 1e-3 * ev[-1]


def test_spread_covariance_diagonal_and_trace(key):
    S = np.asarray(lsa.spread_covariance(4, 8.0, None, trace=2.0))
    np.testing.assert_array_equal(S, np.diag(np.diag(S)))
    geo = 8.0 ** (np.arange(4) / 3)
    np.testing.assert_allclose(np.diag(S), 2.0 * geo / geo.sum(), rtol=1e-14)
    assert np.asarray(lsa.spread_covariance(1, 1.0, key)).shape == (1, 1)


def test_rotated_covariance_eigenvalues(key):
    lam = np.array([0.1, 0.5, 2.0, 7.0])
    S = np.asarray(lsa.rotated_covariance(lam, key))
    np.testing.assert_array_equal(S, S.T)
    np.testing.assert_allclose(np.linalg.eigvalsh(S), lam, rtol=1e-13)
    Q = np.asarray(lsa.random_orthogonal(key, 5))
    np.testing.assert_allclose(Q.T @ Q, np.eye(5), atol=1e-14)


# ----------------------------------------------------------------------------------------------
# bad inputs: every error names the parameter


def _nonsym():
    A = np.eye(3)
    A[0, 1] = 0.5
    return A


BAD_LAMBDAS = [
    pytest.param(_nonsym(), id="not-symmetric"),
    pytest.param(np.diag([1.0, -1.0, 2.0]), id="not-PD"),
    pytest.param(np.diag([1.0, 0.0, 2.0]), id="singular"),
    pytest.param(np.array([[1.0, np.nan, 0], [np.nan, 1.0, 0], [0, 0, 1.0]]), id="nan"),
    pytest.param(np.ones((3, 2)), id="not-square"),
    pytest.param(np.ones(3), id="vector"),
]


@pytest.mark.parametrize("bad", BAD_LAMBDAS)
def test_bad_lambda_rejected(bad):
    with pytest.raises(ValueError, match="Lambda"):
        lsa.PromptDistribution(bad)
    with pytest.raises(ValueError, match="Lambda"):
        lsa.sigma_bound(bad, 5)
    with pytest.raises(ValueError, match="Lambda"):
        lsa.paper_init(bad, 5, sigma=0.1, Theta=np.eye(3))


def test_bad_theta_shape(aniso_lambda):
    with pytest.raises(ValueError, match="Theta"):
        lsa.paper_init(aniso_lambda, 5, sigma=0.1, Theta=np.eye(3))
    with pytest.raises(ValueError, match="Theta"):
        lsa.paper_init(aniso_lambda, 5, sigma=0.1, Theta=np.zeros((4, 4)))


@pytest.mark.parametrize("bad_N", [0, -3, 2.5, "5", None])
def test_bad_N(aniso_lambda, key, bad_N):
    with pytest.raises(ValueError, match="`N`"):
        lsa.paper_init(aniso_lambda, bad_N, sigma=0.1, key=key)
    with pytest.raises(ValueError, match="`N`"):
        lsa.sigma_bound(aniso_lambda, bad_N)


@pytest.mark.parametrize("bad_n", [0, -1])
def test_bad_prompt_length(aniso_lambda, key, bad_n):
    dist = lsa.PromptDistribution(aniso_lambda)
    with pytest.raises(ValueError, match="`n`"):
        dist.sample(key, 4, bad_n)
    with pytest.raises(ValueError, match="n_prompts"):
        dist.sample(key, bad_n, 3)


@pytest.mark.parametrize("bad_sigma", [0.0, -0.1, np.inf, np.nan])
def test_bad_sigma(aniso_lambda, key, bad_sigma):
    with pytest.raises(ValueError, match="`sigma`"):
        lsa.paper_init(aniso_lambda, 5, sigma=bad_sigma, key=key)
    with pytest.raises(ValueError, match="sigma_fraction"):
        lsa.paper_init(aniso_lambda, 5, sigma_fraction=bad_sigma, key=key)


def test_sigma_exactly_one_of(aniso_lambda, key):
    with pytest.raises(ValueError, match="sigma_fraction"):
        lsa.paper_init(aniso_lambda, 5, sigma=0.1, sigma_fraction=0.5, key=key)
    with pytest.raises(ValueError, match="sigma_fraction"):
        lsa.paper_init(aniso_lambda, 5, key=key)
    with pytest.raises(ValueError, match="key"):
        lsa.paper_init(aniso_lambda, 5, sigma=0.1)  # neither Theta nor key


def test_bad_noise_and_sigma_w(aniso_lambda):
    with pytest.raises(ValueError, match="noise_std"):
        lsa.PromptDistribution(aniso_lambda, noise_std=-1.0)
    with pytest.raises(ValueError, match="Sigma_w"):
        lsa.PromptDistribution(aniso_lambda, Sigma_w=np.eye(3))
    with pytest.raises(ValueError, match="Sigma_w"):
        lsa.PromptDistribution(aniso_lambda, Sigma_w=-np.eye(4))


def test_bad_spread_covariance(key):
    with pytest.raises(ValueError, match="kappa"):
        lsa.spread_covariance(3, 0.5, key)
    with pytest.raises(ValueError, match="kappa"):
        lsa.spread_covariance(3, -2.0, key)
    with pytest.raises(ValueError, match="`d`"):
        lsa.spread_covariance(0, 2.0, key)
    with pytest.raises(ValueError, match="eigenvalues"):
        lsa.rotated_covariance(np.array([1.0, 0.0]), key)
