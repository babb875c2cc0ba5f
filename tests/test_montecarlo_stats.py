"""The sufficient-statistics samplers of `mc_risk` (`sampler="stats"` and `"subspace"`).

1. `Predictor.from_stats` equals the call on the prompt, per prompt, to round-off: on the QR
   compression of explicit prompts (full statistics) and on the compression of `Z V` for the
   predictors' directions (subspace statistics), so the statistics each predictor declares are
   sufficient.
2. The laws: the Marsaglia–Tsang chi-square sampler against scipy (KS), and the Bartlett draw of
   `S` against `E[S] = M Lambda`, `Var S_ij = M (Lambda_ij^2 + Lambda_ii Lambda_jj)`, plus the
   noise terms of `c`.
3. The Monte Carlo risk of the trained LSA (and OLS, averaging, one GD step) from both samplers
   against the closed forms and against the prompt sampler (two-sample z). test_montecarlo.py
   runs further closed-form checks through `sampler="auto"` (task, query, covariate shifts).
4. `sampler="auto"` picks the subspace or full statistics only where they are exact.

Acceptance |z| <= 4 (fixed seeds), as in test_montecarlo.py.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import lsa
import theory
from simulations.icl.distributions import (
    GaussianCovariates,
    GaussianTask,
    HalfSubspaceCovariates,
    OrthantCovariates,
    OrthogonalQuery,
    OverlappingQuery,
    TestDistribution,
    named_shift,
)
from simulations.icl.montecarlo import auto_sampler, mc_risk, stats_sampler_issue
from simulations.icl.predictors import (
    GD,
    KNN,
    OLS,
    SGD,
    Averaging,
    BayesRidge,
    LSAPredictor,
    PromptStats,
    Ridge,
    linear_G,
)
from simulations.icl.wishart import gamma_mt, orthonormal_rows

Z_MAX = 4.0
D, N, M = 6, 8, 12
N_MC = 60_000
S_NOISE = 0.5


@pytest.fixture(scope="module")
def inst():
    Lam = np.asarray(
        lsa.rotated_covariance(np.array([0.3, 0.6, 1.0, 1.5, 2.2, 3.0]), jax.random.PRNGKey(3))
    )
    W_PV, W_KQ = theory.limit_weights(Lam, N)
    return {"Lambda": Lam, "lsa": LSAPredictor(W_PV, W_KQ)}


def _prompts(rng, B, m, d, F, s=0.3):
    Z = rng.standard_normal((B, m, d))
    X = Z @ F.T
    w = rng.standard_normal((B, d))
    y = np.einsum("bmd,bd->bm", X, w) + s * rng.standard_normal((B, m))
    return Z, X, w, y, rng.standard_normal((B, d))


def _close(a, b, rtol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(a)), 1e-300), np.max(np.abs(a - b))


# ----------------------------------------------------------------------------------------------
# 1. from_stats equals the call, per prompt


def _stats_predictors(rng, d):
    return [
        LSAPredictor(rng.standard_normal((d + 1, d + 1)), rng.standard_normal((d + 1, d + 1))),
        OLS(),
        Ridge(0.3),
        BayesRidge(0.2, 2.0),
        GD(0.02),
        GD(0.01, steps=4, lam=0.1),
        Averaging(),
    ]


@eqx.filter_jit
def _call_and_from_stats(preds, X, y, q, st):
    return [(p._predict(X, y, q), p._from_stats(st)) for p in preds]


def test_from_stats_equals_call(rng):
    """QR compression (M > d), the uncompressed prompt, M < d (OLS min norm, no QR) and a
    rank-deficient design (singular covariates: the pinv tolerance rule uses M rows)."""
    d = 5
    F = np.linalg.cholesky(np.eye(d) + 0.4 * np.ones((d, d)))
    preds = _stats_predictors(rng, d)
    F_sing = F * (np.arange(d) < 3)  # rank 3: OLS drops the zero singular values
    for m, compress, FF in [(15, True, F), (15, False, F), (3, True, F), (15, True, F_sing)]:
        _, X, _, y, q = _prompts(rng, 64, m, d, FF)
        st = PromptStats.from_prompts(X, y, q, compress=compress)
        assert st.X.shape[1] == (d if compress and m > d else m) and st.M == m
        _close(st.S, np.einsum("bmi,bmj->bij", X, X), 1e-12)
        _close(st.g, np.einsum("bmd,bm->bd", X, y), 1e-12)
        _close(st.c, np.sum(y * y, axis=1), 1e-12)
        Xa, ya, qa = (jnp.asarray(a) for a in (X, y, q))
        for p, (a, b) in zip(preds, _call_and_from_stats(preds, Xa, ya, qa, st), strict=True):
            assert p.supports_stats
            _close(b, a)
    _close(preds[0].from_stats(st), preds[0](X, y, q))  # the public, validated entry point


def test_subspace_directions_are_sufficient(rng, inst):
    """Compress `Z V` (V spans F^T w and the predictor's F^T p): the prediction is unchanged.

    Covers a dense LSA, the trained LSA (a = 0: a zero direction, hence a zero row of V),
    averaging and one GD step."""
    d, m = 6, 11
    F = np.linalg.cholesky(inst["Lambda"])
    Z, X, w, y, q = _prompts(rng, 128, m, d, F)
    rnd = _stats_predictors(rng, d)[0]
    for p in [rnd, inst["lsa"], Averaging(), GD(0.05)]:
        P = np.asarray(p._stats_directions(jnp.asarray(q)))
        C = np.concatenate([(w @ F)[:, None, :], P @ F], axis=1)
        V = np.asarray(orthonormal_rows(jnp.asarray(C)))
        live = np.linalg.norm(V, axis=-1) > 0
        gram = np.einsum("bkd,bld->bkl", V, V)
        assert np.allclose(gram, np.eye(C.shape[1]) * live[:, :, None], atol=1e-13)
        assert np.allclose(np.einsum("bkd,bld,blj->bkj", C, V, V), C, atol=1e-12)
        Qy, Tk = np.linalg.qr(np.einsum("bmd,bkd->bmk", Z, V))
        yp = np.einsum("bmk,bm->bk", Qy, y)
        st = PromptStats(
            X=jnp.asarray(np.einsum("bij,bjd,ed->bie", Tk, V, F)),
            y=jnp.asarray(yp),
            rss=jnp.asarray(np.sum(y * y, 1) - np.sum(yp * yp, 1)),
            x_q=jnp.asarray(q),
            M=m,
        )
        [(a, b)] = _call_and_from_stats([p], *(jnp.asarray(a) for a in (X, y, q)), st)
        _close(b, a, 1e-9)
    assert not np.any(np.asarray(inst["lsa"].W_PV)[-1, :-1])  # the zero direction was covered


def test_unsupported_predictors(rng):
    X, y, q = (
        rng.standard_normal((4, 6, 3)),
        rng.standard_normal((4, 6)),
        rng.standard_normal((4, 3)),
    )
    st = PromptStats.from_prompts(X, y, q)
    for p in [KNN(3), SGD(0.1)]:
        assert not p.supports_stats
        with pytest.raises(TypeError, match="sufficient statistics"):
            p.from_stats(st)
    assert GD(0.1, steps=2)._stats_dirs(jnp.asarray(q)) is None
    assert OLS()._stats_dirs(jnp.asarray(q)) is None

    # a subclass that changes _predict alone loses the statistics path; one that also changes
    # _from_stats keeps it, but not the directions declared above it
    class Doubled(LSAPredictor):
        def _predict(self, X, y, x_q, mask=None):
            return 2.0 * super()._predict(X, y, x_q, mask)

    class DoubledStats(Doubled):
        def _from_stats(self, stats):
            return 2.0 * super()._from_stats(stats)

    W = np.eye(4)
    assert LSAPredictor(W, W)._stats_dirs(jnp.asarray(q)).shape == (4, 2, 3)
    assert not Doubled(W, W).supports_stats
    assert DoubledStats(W, W).supports_stats
    assert DoubledStats(W, W)._stats_dirs(jnp.asarray(q)) is None
    with pytest.raises(TypeError, match="PromptStats"):
        OLS().from_stats((X, y, q))


# ----------------------------------------------------------------------------------------------
# 2. the laws


def test_gamma_sampler_is_exact():
    """Marsaglia–Tsang with retries (alpha = 1 rejects ~5% > the 1/32 buffer: several rounds)
    and the boost for alpha < 1, against scipy's Gamma CDF."""
    alpha = np.array([0.5, 1.0, 2.5, 10.5, 20.0])
    n = 40_000
    kx, ku, kg = jax.random.split(jax.random.PRNGKey(11), 3)
    x = jax.random.normal(kx, (n, alpha.size), jnp.float64)
    u = jax.random.uniform(ku, (n, alpha.size), jnp.float64)
    g = np.asarray(jax.jit(lambda k, x, u: gamma_mt(k, alpha, x, u))(kg, x, u))
    assert np.all(np.isfinite(g)) and np.all(g > 0)
    for j, a in enumerate(alpha):
        assert sps.kstest(g[:, j], sps.gamma(a).cdf).pvalue > 1e-3, a


@eqx.filter_jit
def _draw_stats(dist, key, n, m, noisy):
    st, w, _ = dist._sample_stats(key, n, m, noisy)
    return st.S, st.c, st.rss, w


def test_bartlett_wishart_moments(inst):
    """E[S] = M Lambda, Var S_ij = M (Lambda_ij^2 + Lambda_ii Lambda_jj); with noise s,
    E[rss] = s^2 (M - d) and E[c] = M (tr(Lambda Sigma_w) + s^2). (The code is the same for
    any factor F of Lambda: nothing depends on F being triangular or invertible.)"""
    n = 100_000
    dist = named_shift("noisy", inst["Lambda"], noise_std=S_NOISE)
    Lam = dist.covariates.second_moment()
    S, c, rss, _ = (np.asarray(a) for a in _draw_stats(dist, jax.random.PRNGKey(5), n, M, True))
    iu = np.triu_indices(D)
    s_ij = S[:, iu[0], iu[1]]
    mean_t = M * Lam[iu]
    var_t = M * (Lam[iu] ** 2 + Lam[iu[0], iu[0]] * Lam[iu[1], iu[1]])
    sd = np.maximum(s_ij.std(0, ddof=1), 1e-300)
    z_mean = (s_ij.mean(0) - mean_t) / (sd / math.sqrt(n))
    cen = s_ij - s_ij.mean(0)
    var = (cen**2).sum(0) / (n - 1)
    z_var = (var - var_t) / np.sqrt(((cen**2 - var) ** 2).mean(0) / n)
    assert np.max(np.abs(z_mean)) <= Z_MAX, z_mean
    assert np.max(np.abs(z_var)) <= Z_MAX, z_var
    for v, target in [(rss, S_NOISE**2 * (M - D)), (c, M * (np.trace(Lam) + S_NOISE**2))]:
        assert abs((v.mean() - target) / (v.std(ddof=1) / math.sqrt(n))) <= Z_MAX


# ----------------------------------------------------------------------------------------------
# 3. risk against the closed forms and against the prompt sampler


def _two_sample_z(a, b):
    return (a.mean - b.mean) / math.hypot(a.se, b.se)


@pytest.fixture(scope="module")
def runs(inst):
    """One compilation per sampler, labels with noise and a noisy target: the trained LSA with
    OLS (full statistics), with averaging and one GD step (subspace, k = 1 + 2 + 1 + 1 = 5 < d),
    and all four through the prompt sampler. (The noiseless cases, and the full statistics
    against theory.risk and theory.task_shift_risk(s2) for d = 4, are run by
    test_montecarlo.py through sampler="auto".)"""
    Lam = inst["Lambda"]
    full = {"lsa": inst["lsa"], "ols": OLS()}
    sub = {"lsa": inst["lsa"], "avg": Averaging(), "gd": GD(0.01)}
    noisy = named_shift("noisy", Lam, noise_std=S_NOISE, noisy_target=True)
    assert auto_sampler(full, noisy, M) == "stats"
    assert auto_sampler(sub, noisy, M) == "subspace"
    kw = {"batch_size": N_MC}
    return {
        "stats": mc_risk(full, noisy, M, N_MC, jax.random.PRNGKey(22), **kw),
        "subspace": mc_risk(sub, noisy, M, N_MC, jax.random.PRNGKey(23), **kw),
        "prompts": mc_risk(
            full | sub, noisy, M, N_MC, jax.random.PRNGKey(24), sampler="prompts", **kw
        ),
    }


def test_risk_against_closed_forms(inst, runs):
    """Trained LSA vs theory.task_shift_risk(s2, noisy target) from both samplers; OLS vs
    theory.ols_risk + s^2; averaging and one GD step vs theory.shift_risk with their G."""
    Lam, s2 = inst["Lambda"], S_NOISE**2
    R = theory.task_shift_risk(Lam, N, M, np.eye(D), s2=s2, noisy_target=True)
    for sampler in ("stats", "subspace"):
        assert abs(runs[sampler]["lsa"].z(R)) <= Z_MAX, (sampler, runs[sampler]["lsa"])
    ols = runs["stats"]["ols"]
    assert abs(ols.z(theory.ols_risk(s2, Lam, Lam, M) + s2)) <= Z_MAX, ols
    for name, p in [("avg", Averaging()), ("gd", GD(0.01))]:
        Rp = theory.shift_risk(linear_G(p, D, M), Lam, Lam, np.eye(D), s2, M, noisy_target=True)
        assert abs(runs["subspace"][name].z(Rp)) <= Z_MAX, (name, runs["subspace"][name])


def test_risk_agrees_with_prompt_sampler(runs):
    """Two-sample z between the statistics samplers and the prompt sampler (noisy labels)."""
    run = runs
    for sampler, names in [("stats", ("lsa", "ols")), ("subspace", ("lsa", "avg", "gd"))]:
        for name in names:
            z = _two_sample_z(run[sampler][name], run["prompts"][name])
            assert abs(z) <= Z_MAX, (sampler, name, z)


# ----------------------------------------------------------------------------------------------
# 4. automatic selection


def test_auto_selection_falls_back(inst):
    Lam = inst["Lambda"]
    lsa_p = inst["lsa"]
    gauss = named_shift("none", Lam)
    assert auto_sampler([lsa_p], gauss, M) == "subspace"
    assert auto_sampler([lsa_p, OLS()], gauss, M) == "stats"  # OLS needs the whole of S
    assert auto_sampler([lsa_p, GD(0.1, steps=2)], gauss, M) == "stats"
    assert auto_sampler([lsa_p, KNN(3)], gauss, M) == "prompts"
    assert "KNN" in stats_sampler_issue([lsa_p, KNN(3)], gauss, M)
    # M < d: the full statistics need M >= d, the LSA's subspace only M >= k = 3
    assert auto_sampler([lsa_p, OLS()], gauss, 4) == "prompts"
    assert "M = 4 < 6" in stats_sampler_issue([lsa_p, OLS()], gauss, 4)
    assert auto_sampler([lsa_p], gauss, 4) == "subspace"
    assert auto_sampler([lsa_p], gauss, 2) == "prompts"
    # too many directions for a subspace (1 + 2 + 2 + 1 = 6 = d)
    two = [lsa_p, LSAPredictor(np.eye(D + 1), np.eye(D + 1)), Averaging()]
    assert auto_sampler(two, gauss, M) == "stats"
    task = GaussianTask(np.eye(D))
    orth = TestDistribution(task, GaussianCovariates(Lam), OrthogonalQuery())
    assert auto_sampler([lsa_p], orth, 4) == "prompts"
    assert "OrthogonalQuery" in stats_sampler_issue([lsa_p], orth, 4, "subspace")
    overlap = TestDistribution(task, GaussianCovariates(Lam), OverlappingQuery())
    assert auto_sampler([lsa_p], overlap, M) == "prompts"
    orthant = TestDistribution(task, OrthantCovariates(GaussianCovariates(Lam)))
    assert auto_sampler([lsa_p], orthant, M) == "prompts"
    assert "OrthantCovariates" in stats_sampler_issue([lsa_p], orthant, M)
    assert auto_sampler([lsa_p], named_shift("scale-x", Lam, c=2.0), M) == "subspace"
    half = TestDistribution(task, HalfSubspaceCovariates(D, jax.random.PRNGKey(4)))
    assert auto_sampler([lsa_p, OLS()], half, M) == "stats"  # any factor F, even singular
    # forcing an inexact sampler is an error; an unknown one too
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="sampler='stats' is not exact here: KNN"):
        mc_risk([KNN(3)], gauss, M, 100, key, sampler="stats")
    with pytest.raises(ValueError, match="sampler='subspace' is not exact"):
        mc_risk([OLS()], gauss, M, 100, key, sampler="subspace")
    with pytest.raises(ValueError, match="not exact here: the query law OrthogonalQuery"):
        mc_risk([lsa_p], orth, 4, 100, key, sampler="stats")
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        mc_risk([lsa_p], gauss, M, 100, key, sampler="wishart")
    # auto falls back to the prompts: identical to sampler="prompts" with the same key
    a = mc_risk([KNN(3)], gauss, M, 1_000, key, batch_size=1_000)
    b = mc_risk([KNN(3)], gauss, M, 1_000, key, batch_size=1_000, sampler="prompts")
    assert a == b
