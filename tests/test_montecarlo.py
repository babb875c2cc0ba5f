"""Monte Carlo engine against the closed forms of `theory` (theory.md §7.3, §8.5, §8.7, §11.3,
§14 rows 16, 19, 21, 24).

Instance: anisotropic, non-diagonal Lambda (d = 4), training length N = 6, test length M = 10
(M != N), the trained LSA at `theory.limit_weights`. Acceptance: |z| <= 4 with z = (MC mean -
closed form) / MC standard error, fixed seeds. Sample sizes (2e5 prompts) are chosen so that the
rho = N convention error (every prediction times M/N) gives |z| > 20, which is asserted too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsa
import theory
from simulations.icl.distributions import (
    GaussianCovariates,
    GaussianTask,
    OrthogonalQuery,
    TestDistribution,
    named_shift,
)
from simulations.icl.montecarlo import (
    MCEstimate,
    _Accumulator,
    _batch_key,
    auto_sampler,
    mc_ilwd,
    mc_mean,
    mc_means,
    mc_risk,
    mc_spd,
    two_sample_z,
)
from simulations.icl.predictors import GD, KNN, OLS, LSAPredictor, linear_G

Z_MAX = 4.0  # acceptance bound on |z| (fixed in advance)
Z_MUTATION = 20.0  # the rho = N mutation must be detected at least this clearly
N, M = 6, 10
N_MC = 200_000
BATCH = 100_000


@pytest.fixture(scope="module")
def inst():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
    Lam = np.asarray(lsa.rotated_covariance(np.array([0.4, 0.9, 1.7, 4.0]), k1))
    W_PV, W_KQ = theory.limit_weights(Lam, N)
    return {
        "Lambda": Lam,
        "Sigma_w": np.asarray(lsa.rotated_covariance(np.array([0.5, 1.0, 1.5, 2.5]), k2)),
        "Omega": np.asarray(lsa.rotated_covariance(np.array([0.3, 0.8, 2.0, 3.0]), k3)),
        "W": (W_PV, W_KQ),
        "lsa": LSAPredictor(W_PV, W_KQ),
        # rho = N at test: the literal map divided by N instead of M, i.e. W_PV scaled by M/N
        "lsa_rhoN": LSAPredictor(W_PV * (M / N), W_KQ),
    }


def _gaussian_set(inst):
    """One predictor set for every Gaussian-structure distribution (one compilation)."""
    W_PV, W_KQ = inst["W"]
    return {
        "lsa": inst["lsa"],
        "lsa_copy": LSAPredictor(W_PV.copy(), W_KQ.copy()),
        "lsa_rhoN": inst["lsa_rhoN"],
        "ols": OLS(),
    }


# ----------------------------------------------------------------------------------------------
# risk of the trained LSA (and OLS) against closed forms


def test_no_shift_and_rho_mutation(inst):
    """§7.3: R(N, M) at M != N; the rho = N convention is rejected by a wide margin.

    Like every Gaussian case in this file it runs through `sampler="auto"`: the sets with OLS
    use the full sufficient statistics, the LSA alone its subspace statistics (asserted here;
    test_montecarlo_stats.py checks those samplers against the prompts)."""
    Lam = inst["Lambda"]
    assert auto_sampler(_gaussian_set(inst), named_shift("none", Lam), M) == "stats"
    assert auto_sampler([inst["lsa"]], named_shift("none", Lam), M) == "subspace"
    res = mc_risk(
        _gaussian_set(inst), named_shift("none", Lam), M, N_MC, jax.random.PRNGKey(1),
        batch_size=BATCH,
    )  # fmt: skip
    R = theory.risk(Lam, N, M)
    assert abs(res["lsa"].z(R)) <= Z_MAX, res["lsa"]
    # every predictor is evaluated on the same prompts
    assert res["lsa_copy"] == res["lsa"]
    # mutation: rho = N at test multiplies predictions by M/N
    assert abs(res["lsa_rhoN"].z(R)) > Z_MUTATION, res["lsa_rhoN"]
    G_mut = (M / N) * np.linalg.inv(theory.gamma(Lam, N))
    R_mut = theory.shift_risk(G_mut, Lam, Lam, np.eye(4), 0.0, M)
    assert abs(res["lsa_rhoN"].z(R_mut)) <= Z_MAX
    # noiseless and M >= d: least squares interpolates, risk 0 up to round-off
    assert res["ols"].mean < 1e-20


def test_gaussian_task_shift(inst):
    """§8.5 task shift, Sigma_w != I (theory.task_shift_risk)."""
    Lam, Sw = inst["Lambda"], inst["Sigma_w"]
    res = mc_risk(
        _gaussian_set(inst), named_shift("task", Lam, Sigma_w=Sw), M, N_MC,
        jax.random.PRNGKey(2), batch_size=BATCH,
    )  # fmt: skip
    assert abs(res["lsa"].z(theory.task_shift_risk(Lam, N, M, Sw))) <= Z_MAX, res["lsa"]


def test_noisy_labels_clean_target_and_ols(inst):
    """§8.5 label noise, clean target (LSA); §8.7 OLS risk s^2 tr(Omega Lambda^-1) / (M-d-1)."""
    Lam = inst["Lambda"]
    s = 0.5
    res = mc_risk(
        _gaussian_set(inst), named_shift("noisy", Lam, noise_std=s), M, N_MC,
        jax.random.PRNGKey(3), batch_size=BATCH,
    )  # fmt: skip
    R = theory.task_shift_risk(Lam, N, M, np.eye(4), s2=s**2)
    assert abs(res["lsa"].z(R)) <= Z_MAX, res["lsa"]
    assert abs(res["ols"].z(theory.ols_risk(s**2, Lam, Lam, M))) <= Z_MAX, res["ols"]


def test_sphere_task_same_second_moment(inst):
    """§8.5: a non-Gaussian task law with the same Sigma_w has the same risk."""
    Lam, Sw = inst["Lambda"], inst["Sigma_w"]
    res = mc_risk(
        {"lsa": inst["lsa"]}, named_shift("task-sphere", Lam, Sigma_w=Sw), M, N_MC,
        jax.random.PRNGKey(4), batch_size=BATCH,
    )  # fmt: skip
    assert abs(res["lsa"].z(theory.task_shift_risk(Lam, N, M, Sw))) <= Z_MAX, res["lsa"]


@pytest.mark.parametrize("name", ["query", "query-rademacher"])
def test_query_shift_gaussian_and_rademacher(inst, name):
    """§8.5 query shift: only E[x_q x_q^T] = Omega matters (Gaussian and Rademacher-based)."""
    Lam, Om = inst["Lambda"], inst["Omega"]
    res = mc_risk(
        {"lsa": inst["lsa"]}, named_shift(name, Lam, Omega=Om), M, N_MC,
        jax.random.PRNGKey(5), batch_size=BATCH,
    )  # fmt: skip
    assert abs(res["lsa"].z(theory.query_shift_risk(Lam, N, M, Om))) <= Z_MAX, res["lsa"]


def test_covariate_scaling(inst):
    """§8.5 covariate scaling c = 2 (prompt and query): theory.covariate_scaling_risk."""
    Lam = inst["Lambda"]
    res = mc_risk(
        {"lsa": inst["lsa"]}, named_shift("scale-x", Lam, c=2.0), M, N_MC,
        jax.random.PRNGKey(6), batch_size=BATCH,
    )  # fmt: skip
    R = theory.covariate_scaling_risk(Lam, N, M, 2.0)
    assert abs(res["lsa"].z(R)) <= Z_MAX, res["lsa"]


def test_min_norm_ols():
    """§8.7 min-norm OLS, Lambda = I, w ~ N(0, I), M <= d - 2: tau^2 (d - M) + s^2 M/(d - M - 1).

    d = 8, M = 3 keeps the variance of the noise term finite (d - M - 3 > 0).
    """
    d, m, s = 8, 3, 0.5
    res = mc_risk(
        [OLS()], named_shift("noisy", np.eye(d), noise_std=s), m, N_MC,
        jax.random.PRNGKey(8), batch_size=BATCH,
    )  # fmt: skip
    assert abs(res["OLS"].z(theory.minnorm_ols_risk(d, m, 1.0, s**2))) <= Z_MAX, res["OLS"]


# ----------------------------------------------------------------------------------------------
# SPD and ILWD against the closed forms for predictors linear in h


def test_spd_and_ilwd_lsa_vs_gd(inst):
    """§11.3: SPD = tr(D Lambda D^T E[hh^T]), ILWD = tr(D D^T E[hh^T]), D = G_LSA - G_GD."""
    Lam = inst["Lambda"]
    gd = GD(0.04)
    d = Lam.shape[0]
    G1, G2 = linear_G(inst["lsa"], d, M), linear_G(gd, d, M)
    Ehh = theory.prompt_moment(Lam, np.eye(d), 0.0, M)
    dist = named_shift("none", Lam)
    spd = mc_spd(inst["lsa"], gd, dist, M, 100_000, jax.random.PRNGKey(9), batch_size=BATCH)
    assert abs(spd.z(theory.spd_linear(G1, G2, Lam, Ehh))) <= Z_MAX, spd
    ilwd = mc_ilwd(
        inst["lsa"], gd, dist, M, 100_000, jax.random.PRNGKey(10), n_probe=d, batch_size=BATCH
    )
    assert abs(ilwd.z(theory.ilwd_linear(G1, G2, Ehh))) <= Z_MAX, ilwd
    # the mutation (rho = N) moves the SPD far away
    spd_mut = mc_spd(
        inst["lsa_rhoN"], gd, dist, M, 100_000, jax.random.PRNGKey(9), batch_size=BATCH
    )
    assert abs(spd_mut.z(theory.spd_linear(G1, G2, Lam, Ehh))) > Z_MUTATION


# ----------------------------------------------------------------------------------------------
# mechanics: batching, masking, seeds


def test_batches_combine_exactly(inst):
    """Mean and SE equal a direct computation on the same prompts (uneven last batch masked)."""
    Lam = inst["Lambda"]
    dist = named_shift("none", Lam)
    n, B = 2_500, 1_000
    key = jax.random.PRNGKey(11)
    kw = {"batch_size": B, "sampler": "prompts"}
    est = mc_risk({"lsa": inst["lsa"]}, dist, M, n, key, **kw)["lsa"]
    again = mc_risk([inst["lsa"]], dist, M, n, key, progress=True, **kw)["LSA"]
    assert est == again  # same key and batch size: identical
    errs = []
    for b in range(3):
        P = dist._sample(_batch_key(key, jnp.asarray(b)), B, M)
        yhat = theory.trained_prediction(P.X, P.y, P.x_q, Lam, N)
        errs.append((yhat - np.asarray(P.y_q)) ** 2)
    e = np.concatenate(errs)[:n]
    assert est.n == n
    assert est.mean == pytest.approx(e.mean(), rel=1e-12)
    assert est.se == pytest.approx(e.std(ddof=1) / np.sqrt(n), rel=1e-9)


def _normal_moments(key, B, scale):  # type: ignore[no-untyped-def]
    """Per-sample `(x, x^2)` with `x ~ N(0, scale^2)` (a module-level `values` for mc_means)."""
    x = scale * jax.random.normal(key, (B,), jnp.float64)
    return jnp.stack([x, x * x], axis=1)


def test_mc_means_generic_quantity():
    """`mc_means` / `mc_mean`: the engine's estimator for any per-prompt quantity. Batches (an
    uneven last one, masked) combine to the direct mean and SE of the same draws; jitted and
    eager evaluation agree; the estimates match the closed forms (|z| <= 4)."""
    key, n, B, scale = jax.random.PRNGKey(3), 2_500, 1_000, jnp.asarray(1.5)
    mean_x, mean_x2 = mc_means(_normal_moments, key, n, scale, batch_size=B)
    eager = mc_means(_normal_moments, key, n, scale, batch_size=B, jit=False)
    assert eager[1].mean == pytest.approx(mean_x2.mean, rel=1e-12)
    v = np.concatenate(
        [np.asarray(_normal_moments(_batch_key(key, jnp.asarray(b)), B, scale)) for b in range(3)]
    )[:n]
    for j, est in enumerate((mean_x, mean_x2)):
        assert est.n == n
        assert est.mean == pytest.approx(v[:, j].mean(), rel=1e-12, abs=1e-15)
        assert est.se == pytest.approx(v[:, j].std(ddof=1) / np.sqrt(n), rel=1e-9)
    assert abs(mean_x.z(0.0)) <= Z_MAX and abs(mean_x2.z(2.25)) <= Z_MAX
    one = mc_mean(lambda k, B: _normal_moments(k, B, scale)[:, 1], key, n, batch_size=B)
    assert one.mean == pytest.approx(mean_x2.mean, rel=1e-12)
    with pytest.raises(ValueError, match="use mc_means"):
        mc_mean(_normal_moments, key, n, scale)
    with pytest.raises(ValueError, match="shape"):
        mc_means(lambda k, B: jnp.zeros((B + 1,)), key, 10)
    with pytest.raises(ValueError, match="n_prompts"):
        mc_means(_normal_moments, key, 1, scale)


def test_two_sample_z():
    a, b = MCEstimate(1.0, 0.3, 100), MCEstimate(0.5, 0.4, 50)
    assert two_sample_z(a, b) == pytest.approx(0.5 / 0.5)
    assert two_sample_z(b, a) == -two_sample_z(a, b)


def test_accumulator_matches_numpy(rng):
    data = rng.standard_normal((2, 1003)) ** 2 * np.array([[1.0], [1e4]]) + 1e6
    acc = _Accumulator(2)
    for lo, hi in [(0, 10), (10, 11), (11, 600), (600, 1003)]:
        chunk = data[:, lo:hi]
        mean = chunk.mean(axis=1)
        acc.add(hi - lo, mean, ((chunk - mean[:, None]) ** 2).sum(axis=1))
    est = acc.estimates()
    for i in range(2):
        assert est[i].mean == pytest.approx(data[i].mean(), rel=1e-14)
        assert est[i].sd == pytest.approx(data[i].std(ddof=1), rel=1e-10)
    assert MCEstimate(1.0, 0.5, 4).z(0.0) == 2.0


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(inst):
    Lam = inst["Lambda"]
    dist = named_shift("none", Lam)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="k = 3 <= M"):
        mc_risk([KNN(3)], dist, 2, 100, key)
    with pytest.raises(ValueError, match="empty"):
        mc_risk({}, dist, M, 100, key)
    with pytest.raises(ValueError, match="distinct"):
        mc_risk([OLS(), OLS()], dist, M, 100, key)
    with pytest.raises(ValueError, match="target"):
        mc_risk([OLS()], dist, M, 100, key, target="w")
    with pytest.raises(ValueError, match="n_prompts"):
        mc_risk([OLS()], dist, M, 1, key)
    with pytest.raises(ValueError, match="n_probe"):
        mc_ilwd(OLS(), GD(0.1), dist, M, 100, key, n_probe=3)
    with pytest.raises(ValueError, match="d = 4"):
        mc_spd(LSAPredictor(np.eye(3), np.eye(3)), OLS(), dist, M, 100, key)
    orth = TestDistribution(GaussianTask(np.eye(4)), GaussianCovariates(Lam), OrthogonalQuery())
    with pytest.raises(ValueError, match="OrthogonalQuery needs M < d"):
        mc_risk([OLS()], orth, 4, 100, key)
    with pytest.raises(TypeError, match="TestDistribution"):
        mc_risk([OLS()], "none", M, 100, key)


_MANY_SVD_SCRIPT = """
import jax, numpy as np
import lsa
lsa.set_precision("float64")
from simulations.icl.distributions import named_shift
from simulations.icl.montecarlo import mc_risk
from simulations.icl.predictors import OLS
from simulations.checks.shift import Prefix, gaussian_law
L = np.diag(np.linspace(1.0, 3.0, 5))
Ms = (2, 3, 5, 8, 12, 20, 40, 80)
preds = {f"ols|{m}": Prefix(OLS(), m) for m in Ms}
dist = gaussian_law(L, L, np.eye(5))
key = jax.random.PRNGKey(0)
joint = mc_risk(preds, dist, 80, 10_000, key, sampler="prompts")
for name in ("ols|2", "ols|3"):
    alone = mc_risk({name: preds[name]}, dist, 80, 10_000, key, sampler="prompts")[name]
    assert abs(alone.mean - joint[name].mean) <= 1e-9 * alone.mean, (name, alone, joint[name])
print("ok", len(preds))
"""


def test_many_svd_predictors_in_one_program_do_not_deadlock(tmp_path):
    """Regression: 8 SVD-based predictors (OLS at 8 prefix lengths) in one Monte Carlo
    program. Evaluated as independent branches, this deadlocked XLA's CPU runtime on a 2-core
    machine (jax 0.10.2); `montecarlo.one_at_a_time` runs them in sequence. Run in a subprocess
    with a time limit, so a regression fails instead of hanging the suite. The joint estimate must
    equal the estimates of two of them alone on the same prompts (same key and batch size)."""
    import subprocess
    import sys

    script = tmp_path / "many_svd.py"
    script.write_text(_MANY_SVD_SCRIPT)
    try:
        res = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.fail("mc_risk with 8 SVD predictors did not finish in 300 s (deadlock?)")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok 8")
