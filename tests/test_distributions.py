"""Composable test distributions and Garg et al.'s catalogue (theory.md §8.5, §12, §14 row 25).

Moment checks are z-tests of sample means against `second_moment()` (|z| <= 4 per entry, fixed
seeds); structural checks (spectra, orthogonality, repeated points, orthants, exact +-1 signs)
are exact to round-off.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import pytest
import scipy.linalg

import lsa
import theory
from simulations.icl.distributions import (
    SHIFT_NAMES,
    GaussianCovariates,
    GaussianQuery,
    GaussianTask,
    HalfSubspaceCovariates,
    OrthantCovariates,
    OrthogonalQuery,
    OverlappingQuery,
    RademacherQuery,
    RademacherTask,
    SameAsCovariates,
    ScaledCovariates,
    ScaledTask,
    SkewedCovariates,
    SphereTask,
    TestDistribution,
    garg_catalogue,
    named_shift,
    rbg_key,
)
from simulations.icl.predictors import OLS, Averaging

Z_MAX = 4.0  # per-entry z bound of the moment tests (fixed seeds)


def _key(i: int) -> jax.Array:
    """An rbg key: sampling with it compiles much faster than threefry on CPU."""
    return jax.random.key(i, impl="rbg")


def _run(f, *args):
    """Evaluate `f` under one jit (one compilation instead of one per primitive)."""
    return jax.tree_util.tree_map(np.asarray, jax.jit(f)(*args))


def _moment_z(V: np.ndarray, S: np.ndarray) -> float:
    """Largest |z| of the entries of the sample mean of v v^T against S (V: (n, d))."""
    prods = V[:, :, None] * V[:, None, :]
    mean = prods.mean(axis=0)
    se = prods.std(axis=0, ddof=1) / np.sqrt(V.shape[0])
    z = np.where(se > 0, (mean - S) / np.where(se > 0, se, 1.0), 0.0)
    # entries with zero variance must match exactly
    assert np.all(np.abs(mean - S)[se == 0] <= 1e-12 * max(1.0, np.abs(S).max()))
    return float(np.max(np.abs(z)))


@pytest.fixture(scope="module")
def mats():
    key = jax.random.PRNGKey(3)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "Lambda": np.asarray(lsa.rotated_covariance(np.array([0.4, 0.9, 1.7, 4.0]), k1)),
        "Sigma_w": np.asarray(lsa.rotated_covariance(np.array([0.5, 1.0, 1.5, 2.5]), k2)),
        "Omega": np.asarray(lsa.rotated_covariance(np.array([0.3, 0.8, 2.0, 3.0]), k3)),
    }


# ----------------------------------------------------------------------------------------------
# second moments


def test_task_laws_second_moments(mats):
    S = mats["Sigma_w"]
    n = 40_000
    key = _key(11)
    laws = [GaussianTask(S), SphereTask(S), RademacherTask(S), ScaledTask(GaussianTask(S), 2.5)]
    for law in laws:
        w = _run(lambda k, law=law: law.sample(k, n), key)
        assert w.shape == (n, 4)
        assert _moment_z(w, law.second_moment()) <= Z_MAX, type(law).__name__
    np.testing.assert_allclose(ScaledTask(GaussianTask(S), 2.5).second_moment(), 6.25 * S)


def test_sphere_task_whitened_norm_is_sqrt_d(mats):
    S = mats["Sigma_w"]
    w = _run(lambda k: SphereTask(S).sample(k, 500), _key(1))
    white = w @ np.linalg.inv(np.real(scipy.linalg.sqrtm(S))).T
    np.testing.assert_allclose(np.linalg.norm(white, axis=1), 2.0, rtol=1e-10)
    r = _run(lambda k: SphereTask.with_radius(4, 3.0).sample(k, 100), _key(2))
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 3.0, rtol=1e-12)


def test_covariate_laws_second_moments(mats):
    L = mats["Lambda"]
    n, M = 8_000, 5
    key = _key(12)
    laws = [
        GaussianCovariates(L),
        ScaledCovariates(GaussianCovariates(L), 0.5),
        SkewedCovariates(4, jax.random.PRNGKey(5)),
        HalfSubspaceCovariates(4, jax.random.PRNGKey(6)),
        OrthantCovariates(GaussianCovariates(L)),
    ]
    for law in laws:
        X = _run(lambda k, law=law: law.sample(k, n, M), key)
        assert X.shape == (n, M, 4)
        # one input per prompt, so the samples are independent even for the orthant law
        assert _moment_z(X[:, 2, :], law.second_moment()) <= Z_MAX, type(law).__name__
        fresh = _run(lambda k, law=law: law.sample_fresh(k, n), key)
        assert _moment_z(fresh, law.fresh_second_moment()) <= Z_MAX, type(law).__name__
    np.testing.assert_allclose(laws[1].second_moment(), 0.25 * L, rtol=1e-15)
    np.testing.assert_allclose(laws[4].second_moment(), np.diag(np.diag(L)))


def test_query_laws_second_moments(mats):
    Om, L = mats["Omega"], mats["Lambda"]
    cov = GaussianCovariates(L)
    X = np.zeros((30_000, 3, 4))
    for law in [GaussianQuery(Om), RademacherQuery(Om)]:
        q = _run(lambda k, law=law: law.sample(k, X, cov), _key(13))
        assert _moment_z(q, Om) <= Z_MAX
        np.testing.assert_array_equal(law.second_moment(cov), Om)
    np.testing.assert_array_equal(SameAsCovariates().second_moment(cov), L)


def test_rademacher_query_has_exactly_omega(mats):
    """x_q = Omega^{1/2} r, r in {+-1}^d, so E[x_q x_q^T] = Omega^{1/2} I Omega^{1/2} exactly."""
    Om = mats["Omega"]
    q = _run(lambda k: RademacherQuery(Om).sample(k, np.zeros((200, 1, 4)), None), _key(4))
    root = np.real(scipy.linalg.sqrtm(Om))
    r = q @ np.linalg.inv(root).T
    np.testing.assert_allclose(np.abs(r), 1.0, rtol=0, atol=1e-10)
    # averaging over all 2^d sign vectors gives Omega exactly
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * 4)).reshape(4, -1).T
    np.testing.assert_allclose((signs @ root.T).T @ (signs @ root.T) / 16, Om, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Garg's structural properties


def test_skewed_spectrum():
    d = 6
    lam = np.sort(np.linalg.eigvalsh(SkewedCovariates(d, jax.random.PRNGKey(0)).second_moment()))
    ref = 1.0 / np.arange(1, d + 1) ** 2
    ref = np.sort(ref * d / ref.sum())
    np.testing.assert_allclose(lam, ref, rtol=1e-12)
    assert lam.sum() == pytest.approx(d, rel=1e-13)


def test_half_subspace():
    d = 6
    law = HalfSubspaceCovariates(d, jax.random.PRNGKey(1))
    lam = np.sort(np.linalg.eigvalsh(law.second_moment()))
    np.testing.assert_allclose(lam, [0, 0, 0, 2, 2, 2], atol=1e-12)
    X = _run(lambda k: law.sample(k, 3, 10), _key(2))
    for b in range(3):
        s = np.linalg.svd(X[b], compute_uv=False)
        assert s[2] > 1e-3 * s[0] and s[3] < 1e-12 * s[0]  # rank d/2


def test_orthogonal_query(mats):
    d, M, n = 4, 3, 50
    cov = GaussianCovariates(mats["Lambda"])
    X = _run(lambda k: cov.sample(k, n, M), _key(1))
    q, z = _run(  # z: the fresh draw the query is built from
        lambda k: (OrthogonalQuery().sample(k, X, cov), cov.sample_fresh(k, n)), _key(2)
    )
    scale = np.linalg.norm(X, axis=-1).max() * np.linalg.norm(q, axis=-1).max()
    assert np.max(np.abs(np.einsum("nmd,nd->nm", X, q))) <= 1e-10 * scale
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), np.linalg.norm(z, axis=1), rtol=1e-12)
    for b in range(n):  # q is the rescaled projection of z: z - c q lies in span{x_i}
        c = np.linalg.norm(z[b] - z[b] @ X[b].T @ np.linalg.pinv(X[b] @ X[b].T) @ X[b])
        resid = z[b] - (c / np.linalg.norm(q[b])) * q[b]
        coef = np.linalg.lstsq(X[b].T, resid, rcond=None)[0]
        np.testing.assert_allclose(X[b].T @ coef, resid, atol=1e-10)
    # min-norm OLS and averaging lie in span{x_i}: they predict exactly 0 there
    dist = TestDistribution(GaussianTask(np.eye(d)), cov, OrthogonalQuery())
    P = dist.sample(jax.random.PRNGKey(3), 2000, M)  # the shape of test_garg_catalogue
    for pred in (OLS(), Averaging()):
        np.testing.assert_allclose(np.asarray(pred(P.X, P.y, P.x_q)), 0.0, atol=1e-10)


def test_overlapping_query():
    d, M, n = 3, 5, 4000
    cov = GaussianCovariates(np.eye(d))
    X = _run(lambda k: cov.sample(k, n, M), _key(1))
    q = _run(lambda k: OverlappingQuery().sample(k, X, cov), _key(2))
    dist = np.linalg.norm(X - q[:, None, :], axis=-1)
    assert np.all(np.sum(dist == 0.0, axis=1) == 1)  # equals exactly one x_i
    counts = np.bincount(np.argmin(dist, axis=1), minlength=M)
    # uniform index: each count ~ Binomial(n, 1/M); |z| <= 4
    assert np.max(np.abs(counts - n / M) / np.sqrt(n * (1 / M) * (1 - 1 / M))) <= Z_MAX


def test_orthant_shares_one_sign_pattern():
    d, M, n = 4, 3, 2000  # the shape of test_garg_catalogue: one compilation
    dist = garg_catalogue(d, jax.random.PRNGKey(0))["random_quadrants"]
    P = dist.sample(jax.random.PRNGKey(1), n, M)
    S = np.sign(np.asarray(P.X))
    assert np.all(S == S[:, :1, :])
    # the query is unrestricted: it lies in the prompt's orthant with probability 2^-d
    inside = np.mean(np.all(np.sign(np.asarray(P.x_q)) == S[:, 0, :], axis=1))
    p = 2.0**-d
    assert abs(inside - p) <= Z_MAX * np.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------------------------
# the composed distribution, named shifts and the catalogue


def test_labels_noise_and_targets(mats):
    L = mats["Lambda"]
    s = 0.7
    n, M = 20_000, 3
    for noisy_target in (False, True):
        dist = named_shift("noisy", L, noise_std=s, noisy_target=noisy_target)
        P = dist.sample(jax.random.PRNGKey(5), n, M)
        eps = np.asarray(P.y) - np.einsum("nmd,nd->nm", np.asarray(P.X), np.asarray(P.w))
        eps_q = np.asarray(P.y_q) - np.einsum("nd,nd->n", np.asarray(P.x_q), np.asarray(P.w))
        # Var(eps) = s^2: z-test of the mean of eps^2 (sd of eps^2 is sqrt(2) s^2)
        z = (np.mean(eps[:, 0] ** 2) - s**2) / (np.sqrt(2) * s**2 / np.sqrt(n))
        assert abs(z) <= Z_MAX
        if noisy_target:
            zq = (np.mean(eps_q**2) - s**2) / (np.sqrt(2) * s**2 / np.sqrt(n))
            assert abs(zq) <= Z_MAX
        else:
            np.testing.assert_array_equal(eps_q, 0.0)


@pytest.mark.parametrize("general", [False, True])
def test_training_law_is_lsa_prompt_distribution(mats, general):
    """`TestDistribution.from_prompt_distribution(pd)` is `pd` (an `lsa.PromptDistribution`)
    as a `TestDistribution`: the same prompts for the same key (same key layout and factors),
    eagerly and through the jitted `sample`; `to_prompt_distribution` goes back, and
    `named_shift("none", Lambda)` is that law."""
    L = mats["Lambda"]
    kw = {"Sigma_w": mats["Sigma_w"], "noise_std": 0.7, "noisy_target": True} if general else {}
    law = lsa.PromptDistribution(L, **kw)
    dist = TestDistribution.from_prompt_distribution(law)
    key = jax.random.PRNGKey(8)
    a, b = law.sample(key, 64, 6), dist._sample(key, 64, 6)
    for name in a._fields:
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-13, atol=1e-13)
    a = law.sample(rbg_key(key), 64, 6)
    b = dist.sample(key, 64, 6)  # jitted, with rbg_key(key)
    for name in a._fields:
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12)
    back = dist.to_prompt_distribution()
    np.testing.assert_array_equal(back.Lambda, law.Lambda)
    assert (back.noise_std, back.noisy_target) == (law.noise_std, law.noisy_target)
    if general:
        np.testing.assert_array_equal(back.Sigma_w, law.Sigma_w)
    else:
        assert back.Sigma_w is None
        assert eqx.tree_equal(named_shift("none", L), dist)
    with pytest.raises(ValueError, match=r"lsa\.PromptDistribution"):
        named_shift("query", L, Omega=mats["Omega"]).to_prompt_distribution()
    with pytest.raises(TypeError, match=r"lsa\.PromptDistribution"):
        TestDistribution.from_prompt_distribution(dist)  # type: ignore[arg-type]


def test_named_shifts_second_moments(mats):
    L, S, Om = mats["Lambda"], mats["Sigma_w"], mats["Omega"]
    eye = np.eye(4)
    expected = {
        "none": ({}, L, L, eye),
        "task": ({"Sigma_w": S}, L, L, S),
        "task-sphere": ({"Sigma_w": S}, L, L, S),
        "noisy": ({"noise_std": 0.5}, L, L, eye),
        "query": ({"Omega": Om}, L, Om, eye),
        "query-rademacher": ({"Omega": Om}, L, Om, eye),
        "covariate": ({"Omega": Om}, Om, Om, eye),
        "scale-x": ({"c": 2.0}, 4 * L, 4 * L, eye),
        "scale-y": ({"c": 3.0}, L, L, 9 * eye),
    }
    assert set(expected) == set(SHIFT_NAMES)
    for name, (params, lx, om, sw) in expected.items():
        args = named_shift(name, L, **params).shift_risk_args()
        np.testing.assert_allclose(args["Lambda_x"], lx, rtol=1e-13, err_msg=name)
        np.testing.assert_allclose(args["Omega"], om, rtol=1e-13, err_msg=name)
        np.testing.assert_allclose(args["Sigma_w"], sw, rtol=1e-13, err_msg=name)
        assert args["s2"] == pytest.approx(0.25 if name == "noisy" else 0.0)
    # the arguments plug straight into the closed form
    G = np.linalg.inv(theory.gamma(L, 6))
    args = named_shift("scale-x", L, c=2.0).shift_risk_args()
    assert theory.shift_risk(G, M=9, **args) == pytest.approx(
        theory.covariate_scaling_risk(L, 6, 9, 2.0), rel=1e-12
    )


def test_garg_catalogue():
    d = 4
    cat = garg_catalogue(d, jax.random.PRNGKey(0))
    assert list(cat) == [
        "standard",
        "random_quadrants",
        "orthogonal_train_test",
        "overlapping_train_test",
        "half_subspace",
        "skewed",
        "scale-x=0.333",
        "scale-x=0.5",
        "scale-x=2",
        "scale-x=3",
        "scale-y=0.333",
        "scale-y=0.5",
        "scale-y=2",
        "scale-y=3",
        "noisyLR",
    ]
    assert cat["noisyLR"].noisy_target and float(cat["noisyLR"].noise_std) == 1.0
    np.testing.assert_allclose(cat["scale-x=3"].shift_risk_args()["Omega"], 9 * np.eye(d))
    np.testing.assert_allclose(cat["scale-y=0.5"].shift_risk_args()["Sigma_w"], 0.25 * np.eye(d))
    np.testing.assert_allclose(np.trace(cat["skewed"].covariates.second_moment()), d)
    for name in ("random_quadrants", "orthogonal_train_test", "overlapping_train_test"):
        with pytest.raises(ValueError, match="shift_risk needs"):
            cat[name].shift_risk_args()
    # every entry samples; one jit over the whole catalogue (`sample` = `validate` + `_sample`)
    for dist in cat.values():
        dist.validate(3)
    out = _run(lambda k: {n: dist._sample(k, 2000, 3) for n, dist in cat.items()}, _key(1))
    for name, P in out.items():
        assert P.X.shape == (2000, 3, d) and P.x_q.shape == (2000, d), name
        assert np.all(np.isfinite(P.y_q)), name


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(mats):
    L = mats["Lambda"]
    not_pd = np.diag([1.0, 1.0, 1.0, -0.5])
    with pytest.raises(ValueError, match=r"unknown shift 'sideways'.*none, task"):
        named_shift("sideways", L)
    with pytest.raises(ValueError, match="`Omega` is not positive definite"):
        named_shift("query", L, Omega=not_pd)
    with pytest.raises(ValueError, match="`Omega` is not positive definite"):
        GaussianQuery(not_pd)
    with pytest.raises(ValueError, match="`Sigma_w` is not positive definite"):
        named_shift("task", L, Sigma_w=not_pd)
    with pytest.raises(ValueError, match="`Lambda` is not positive definite"):
        named_shift("none", not_pd)
    with pytest.raises(ValueError, match="`Lambda_x` is not positive definite"):
        GaussianCovariates(not_pd)
    with pytest.raises(ValueError, match="`c` must be a finite number > 0"):
        named_shift("scale-x", L, c=0.0)
    with pytest.raises(ValueError, match="`c` must be a finite number > 0"):
        ScaledTask(GaussianTask(L), -2.0)
    with pytest.raises(ValueError, match="`c` must be a finite number > 0"):
        ScaledCovariates(GaussianCovariates(L), -1.0)
    with pytest.raises(ValueError, match="needs the parameter"):
        named_shift("query", L)
    with pytest.raises(ValueError, match="does not take"):
        named_shift("none", L, Omega=L)
    with pytest.raises(ValueError, match="noise_std"):
        named_shift("noisy", L, noise_std=-1.0)
    with pytest.raises(ValueError, match="d = 3"):
        TestDistribution(GaussianTask(np.eye(3)), GaussianCovariates(L))
    dist = TestDistribution(GaussianTask(np.eye(4)), GaussianCovariates(L), OrthogonalQuery())
    with pytest.raises(ValueError, match="OrthogonalQuery needs M < d"):
        dist.sample(jax.random.PRNGKey(0), 5, 4)
    half = HalfSubspaceCovariates(4, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="below the rank 2"):
        TestDistribution(GaussianTask(np.eye(4)), half, OrthogonalQuery()).validate(2)
    with pytest.raises(ValueError, match="M"):
        named_shift("none", L).sample(jax.random.PRNGKey(0), 5, 0)
