"""Tests of `lsa.full_loss`: the exact population loss over all `2 (d+1)^2` entries (theory.md §5;
§14 rows 4, 5, 6, 9).

References: the reduced loss `lsa.population_loss` and its autodiff gradient (row 4, round-off);
exact zeros of the gradient (row 5); Monte Carlo through the literal LSA map on explicit
embeddings (`lsa.embed` + `lsa.predict`, i.e. the bottom-right entry of `lsa.lsa_forward`) at
random dense matrices (row 6; acceptance |z| <= 4 with z = (MC mean - closed form) / MC standard
error, fixed in advance), with mutants (query term R dropped, rho = N at test, a dropped 1/2)
that must give |z| >= 10 on the same sample; BFGS + Newton from random restarts against
`theory.min_loss` and `inv(theory.gamma)` (row 9); central finite differences of the gradient
for the Hessian.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import lsa
import theory
from lsa.full_loss import (
    full_loss_grad_theta,
    full_loss_hessian,
    full_loss_terms,
    full_loss_theta,
    full_loss_value_and_grad,
    full_population_loss,
    full_population_risk,
    pack_params,
    prediction_indices,
    unpack_params,
)

Z_MAX = 4.0  # acceptance of a Monte Carlo row, fixed in advance
Z_MUTANT = 10.0  # a mutant must be rejected by at least this much on the same sample


def _lam(d: int, trace: float, seed: int) -> np.ndarray:
    """Anisotropic, rotated Lambda (condition number 20) with the given trace (far from d)."""
    lam = np.geomspace(1.0, 20.0, d)
    lam *= trace / lam.sum()
    return np.asarray(lsa.rotated_covariance(lam, jax.random.PRNGKey(seed)))


# ----------------------------------------------------------------------------------------------
# row 4: equal to the reduced loss on a = b = 0


@pytest.mark.parametrize(("d", "N", "trace"), [(2, 3, 0.07), (3, 5, 40.0), (5, 2, 11.0)])
def test_equals_reduced_loss_on_manifold(d, N, trace, rng):
    Lam = _lam(d, trace, seed=d)
    for _ in range(4):
        u = float(rng.uniform(-1.5, 1.5)) / np.sqrt(trace / d)
        U = rng.standard_normal((d, d)) / np.sqrt(trace / d)
        W_PV, W_KQ = (np.array(w) for w in lsa.from_reduced(u, U))
        # the entries the prediction ignores do not matter: fill them with noise
        W_PV[:-1, :] = rng.standard_normal((d, d + 1))
        W_KQ[:, -1] = rng.standard_normal(d + 1)
        full = float(full_population_loss(W_PV, W_KQ, Lam, N))
        ref = float(lsa.population_loss(U, u, Lam, N))
        assert full == pytest.approx(ref, rel=1e-13, abs=1e-15 * trace)
        # the risk at M = N is twice the loss (trap 3)
        assert float(full_population_risk(W_PV, W_KQ, Lam, N)) == pytest.approx(2 * full, rel=1e-14)


# ----------------------------------------------------------------------------------------------
# row 5: the gradient in a, b and in the ignored entries is exactly 0 on a = b = 0


@pytest.mark.parametrize(("d", "N"), [(2, 2), (4, 7)])
def test_gradient_exact_zeros_on_manifold(d, N, rng):
    Lam = _lam(d, 3.0 * d, seed=10 + d)
    u = 0.8
    U = rng.standard_normal((d, d))
    W_PV, W_KQ = (np.array(w) for w in lsa.from_reduced(u, U))
    W_PV[:-1, :] = rng.standard_normal((d, d + 1))
    W_KQ[:, -1] = rng.standard_normal(d + 1)
    gPV, gKQ = jax.grad(full_population_loss, argnums=(0, 1))(
        jnp.asarray(W_PV), jnp.asarray(W_KQ), Lam, N
    )
    gPV, gKQ = np.asarray(gPV), np.asarray(gKQ)
    assert np.all(gPV[:-1, :] == 0.0)  # rows the prediction ignores
    assert np.all(gPV[-1, :-1] == 0.0)  # a
    assert np.all(gKQ[:, -1] == 0.0)  # last column of W_KQ
    assert np.all(gKQ[-1, :-1] == 0.0)  # b
    # the remaining entries are the reduced gradient
    dU, du = lsa.population_loss_grad(U, u, Lam, N)
    np.testing.assert_allclose(gKQ[:-1, :-1], np.asarray(dU), rtol=1e-12, atol=1e-13)
    assert gPV[-1, -1] == pytest.approx(float(du), rel=1e-12)
    # the compiled fast path agrees
    val, (gp2, gk2) = full_loss_value_and_grad(W_PV, W_KQ, Lam, N)
    assert float(val) == pytest.approx(float(lsa.population_loss(U, u, Lam, N)), rel=1e-13)
    np.testing.assert_array_equal(np.asarray(gp2)[-1, :-1], 0.0)
    np.testing.assert_allclose(np.asarray(gk2), gKQ, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# row 6: Monte Carlo through the literal map, random dense matrices


MC_D, MC_N, MC_M = 3, 4, 9
MC_CHUNK = 50_000


def _dense_point(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random dense (W_PV, W_KQ); the row `a` is enlarged and `u` shrunk so that the query
    self-term R carries a visible share of the error (a dropped R is then rejected)."""
    r = np.random.default_rng(seed)
    d = MC_D
    W_PV = 0.3 * r.standard_normal((d + 1, d + 1))
    W_KQ = 0.3 * r.standard_normal((d + 1, d + 1))
    W_PV[-1, :-1] *= 5.0
    W_PV[-1, -1] *= 0.5
    return W_PV, W_KQ


def _mc_squared_error(Lam, n, W_PV, W_KQ, key, chunks):
    """Squared errors of the literal map on `MC_CHUNK * chunks` fresh prompts of length n."""
    dist = lsa.PromptDistribution(Lam)

    @jax.jit
    def chunk(k):
        p = dist.sample(k, MC_CHUNK, n)
        E = lsa.embed(p.X, p.y, p.x_q)  # (B, d+1, n+1), query label slot 0
        y_hat = lsa.lsa_forward(E, W_PV, W_KQ)[:, -1, -1]  # rho = n inside the map
        return (y_hat - p.y_q) ** 2

    err = np.concatenate([np.asarray(chunk(jax.random.fold_in(key, i))) for i in range(chunks)])
    return float(err.mean()), float(err.std(ddof=1) / np.sqrt(err.size))


@pytest.mark.parametrize(("point_seed", "chunks"), [(101, 24), (202, 8)])
def test_monte_carlo_full_map_dense(point_seed, chunks):
    """1.2e6 (4e5) prompts per row: sized so that every mutant gives |z| >= 10 (measured: no R
    31 / 17 at n = N / M on point 101, rho = N -744, a kept 1/2 >= 100)."""
    Lam = _lam(MC_D, 7.0, seed=3)  # tr Lambda = 7, d = 3
    W_PV, W_KQ = _dense_point(point_seed)
    key = jax.random.PRNGKey(point_seed)
    z = {}
    for n in (MC_N, MC_M):
        mean, se = _mc_squared_error(Lam, n, W_PV, W_KQ, jax.random.fold_in(key, n), chunks)
        if n == MC_N:
            closed = 2.0 * float(full_population_loss(W_PV, W_KQ, Lam, MC_N))
        else:
            closed = float(full_population_risk(W_PV, W_KQ, Lam, MC_M))
        t = full_loss_terms(W_PV, W_KQ, Lam, n)
        assert float(t.total) == pytest.approx(closed, rel=1e-14)
        z[n, "exact"] = (mean - closed) / se
        z[n, "no R"] = (mean - float(t.total - t.R2 - 2.0 * (t.PR + t.QR))) / se
        z[n, "half"] = (mean - 0.5 * closed) / se  # the 1/2 of the loss kept in a risk
        if n == MC_M:
            z[n, "rho=N"] = (mean - float(full_loss_terms(W_PV, W_KQ, Lam, MC_M, MC_N).total)) / se
    print({k: round(v, 2) for k, v in z.items()})
    for n in (MC_N, MC_M):
        assert abs(z[n, "exact"]) <= Z_MAX, z
        assert abs(z[n, "no R"]) >= Z_MUTANT, z
        assert abs(z[n, "half"]) >= Z_MUTANT, z
    assert abs(z[MC_M, "rho=N"]) >= Z_MUTANT, z


# ----------------------------------------------------------------------------------------------
# row 9: the minimum over all entries


def _minimise(theta0, Lam, N, idx):
    """BFGS with the autodiff gradient, then Newton steps (pseudo-inverse of the Hessian on the
    entries that enter the prediction, so the scaling symmetry is left alone)."""
    res = scipy.optimize.minimize(
        lambda th: (
            float(full_loss_theta(th, Lam, N)),
            np.asarray(full_loss_grad_theta(th, Lam, N)),
        ),
        theta0,
        jac=True,
        method="BFGS",
        options={"gtol": 1e-10, "maxiter": 1000},
    )
    th = np.array(res.x)
    if not np.all(np.abs(th) < 1e6):  # ran away along a valley to infinity
        return th
    for _ in range(8):
        g = np.asarray(full_loss_grad_theta(th, Lam, N))[idx]
        H = np.asarray(full_loss_hessian(th, Lam, N))[np.ix_(idx, idx)]
        th[idx] -= np.linalg.pinv(H, rcond=1e-10, hermitian=True) @ g
    return th


@pytest.mark.parametrize(("d", "N", "trace"), [(2, 3, 6.0), (3, 4, 0.5)])
def test_minimum_over_all_entries(d, N, trace):
    Lam = _lam(d, trace, seed=20 + d)
    L_min = theory.min_loss(Lam, N)
    G_inv = np.linalg.inv(theory.gamma(Lam, N))
    idx = prediction_indices(d)
    rng = np.random.default_rng(1000 + d)
    scale = np.sqrt(d / trace)  # weights in units where tr Lambda / d = 1
    n_global = 0
    for _ in range(6):
        th = _minimise(scale * 0.5 * rng.standard_normal(2 * (d + 1) ** 2), Lam, N, idx)
        if not np.all(np.isfinite(th)):
            continue
        L = float(full_loss_theta(th, Lam, N))
        assert L >= L_min - 1e-12 * trace  # never below min L (round-off only)
        if L - L_min <= 1e-10 * trace:
            n_global += 1
            W_PV, W_KQ = unpack_params(th)
            red = lsa.reduced_view(W_PV, W_KQ)
            assert np.max(np.abs(red.a)) <= 1e-8 * scale
            assert np.max(np.abs(red.b)) <= 1e-8 * scale
            np.testing.assert_allclose(
                float(red.u) * np.asarray(red.U), G_inv, rtol=0, atol=1e-9 * np.abs(G_inv).max()
            )
        else:
            # anything else is a strictly higher end point (a spurious critical point or a
            # valley running to infinity), never an alternative global minimiser
            assert L - L_min >= 1e-4 * trace
    assert n_global >= 1


def test_minimum_value_at_eq_41():
    """The closed-form minimiser (eq. 4.1) attains min L in the full loss too."""
    Lam = _lam(4, 9.0, seed=5)
    N = 3
    u_s, U_s = theory.limit_reduced(Lam, N)
    W_PV, W_KQ = lsa.from_reduced(u_s, U_s)
    assert float(full_population_loss(W_PV, W_KQ, Lam, N)) == pytest.approx(
        theory.min_loss(Lam, N), rel=1e-13
    )


# ----------------------------------------------------------------------------------------------
# Hessian, packing, errors


def test_hessian_symmetric_and_matches_finite_differences(rng):
    d, N = 3, 5
    Lam = _lam(d, 2.0, seed=8)
    th = 0.4 * rng.standard_normal(2 * (d + 1) ** 2)
    H = np.asarray(full_loss_hessian(th, Lam, N))
    assert H.shape == (2 * (d + 1) ** 2,) * 2
    assert np.max(np.abs(H - H.T)) <= 1e-13 * np.max(np.abs(H))
    # jax.hessian straight through the public function agrees
    H2 = jax.hessian(lambda t: full_population_loss(*unpack_params(t), Lam, N))(jnp.asarray(th))
    np.testing.assert_allclose(np.asarray(H2), H, rtol=1e-12, atol=1e-13 * np.abs(H).max())
    # central differences of the gradient
    h = 1e-5
    fd = np.empty_like(H)
    for j in range(th.size):
        e = np.zeros_like(th)
        e[j] = h
        fd[:, j] = (
            np.asarray(full_loss_grad_theta(th + e, Lam, N))
            - np.asarray(full_loss_grad_theta(th - e, Lam, N))
        ) / (2 * h)
    np.testing.assert_allclose(fd, H, rtol=0, atol=1e-7 * np.abs(H).max())
    # entries outside the prediction: zero rows and columns
    others = np.setdiff1d(np.arange(th.size), prediction_indices(d))
    assert np.all(H[others] == 0.0) and np.all(H[:, others] == 0.0)


def test_pack_and_prediction_indices(rng):
    d = 3
    W_PV, W_KQ = rng.standard_normal((2, d + 1, d + 1))
    th = np.asarray(pack_params(W_PV, W_KQ))
    back = unpack_params(th)
    np.testing.assert_array_equal(np.asarray(back[0]), W_PV)
    np.testing.assert_array_equal(np.asarray(back[1]), W_KQ)
    idx = prediction_indices(d)
    expected = np.concatenate([W_PV[-1], W_KQ[:, :-1].ravel()])
    np.testing.assert_array_equal(th[idx], expected)
    assert idx.size == (d + 1) ** 2


def test_jit_and_traced_length():
    d = 2
    Lam = _lam(d, 3.0, seed=1)
    W_PV, W_KQ = _dense_point(5)[0][1:, 1:], _dense_point(6)[1][1:, 1:]
    f = jax.jit(full_population_loss)
    assert float(f(W_PV, W_KQ, Lam, 4)) == pytest.approx(
        float(full_population_loss(W_PV, W_KQ, Lam, 4)), rel=1e-14
    )
    # the test length may be traced (one compilation for all M)
    g = jax.jit(full_population_risk)
    for M in (2, 7):
        assert float(g(W_PV, W_KQ, Lam, jnp.asarray(float(M)))) == pytest.approx(
            float(full_population_risk(W_PV, W_KQ, Lam, M)), rel=1e-14
        )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((3, 3)), np.zeros((4, 4)), np.eye(3), 2), "W_PV"),
        ((np.zeros((4, 4)), np.zeros((4, 3)), np.eye(3), 2), "W_KQ"),
        ((np.zeros((4, 4)), np.zeros((4, 4)), np.eye(3), 0), "N"),
        ((np.zeros((4, 4)), np.zeros((4, 4)), np.eye(3), 2.5), "N"),
        ((np.full((4, 4), np.nan), np.zeros((4, 4)), np.eye(3), 2), "W_PV"),
        ((np.zeros((4, 4)), np.zeros((4, 4)), -np.eye(3), 2), "positive definite"),
        ((np.zeros((4, 4)), np.zeros((4, 4)), np.ones((3, 2)), 2), "Lambda"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        full_population_loss(*args)
