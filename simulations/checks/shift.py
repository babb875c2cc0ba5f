"""Distribution-shift checks and figures (theory.md §7.1, §8, §11.3, §12; issue items 5–6).

Used by `lsa reproduce` (as an extra suite) and by `lsa shift`. Every closed-form risk of
`theory/` under a test distribution is compared with float64 Monte Carlo on the **full LSA map at
the trained weights** (the end point of `lsa.flow.gradient_flow`, not the closed-form limit
weights), with a z-score against the Monte Carlo standard error (theory.md §14, rows 15, 19–21,
24):

| id | statement | closed form (`theory.`) | theory.md |
|---|---|---|---|
| s1 | Gaussian task shift, non-diagonal `Sigma_w != I` | `task_shift_risk` | §8.5 |
| s2 | sphere task law with the same `Sigma_w`: same risk | `task_shift_risk` | §8.5 |
| s3 | Gaussian query shift, `Omega != Lambda` | `query_shift_risk` | §8.5 |
| s4 | Rademacher-based query, same `Omega`: same risk | `query_shift_risk` | §8.5 |
| s5, s6 | covariate scaling `c = 2`, `c = 1/2` | `covariate_scaling_risk` | §8.5 |
| s7 | covariate shift, general `Omega` | `covariate_shift_risk` | §8.5 |
| s8, s9 | label noise, clean and noisy target | `task_shift_risk(s2=...)` | §8.5 |
| s10, s11 | OLS with noise, `M >= d + 2`; under scaling | `ols_risk` | §8.7 |
| s12 | min-norm OLS, `M <= d - 2`, `Lambda = I` | `minnorm_ols_risk` | §8.7 |
| s13 | optimal `G` = numerical minimiser of the risk | `optimal_preconditioner` | §8.4 |
| s14, s15 | reduction to `Gamma^-1`, `(Gamma + s^2/N I)^-1` | same | §8.4, §8.6 |
| s16–s19 | SPD, ILWD of the LSA vs GD and averaging | `spd_linear`, `ilwd_linear` | §11.3 |
| s20 | ZFB Theorem 4.2, noise and a quadratic part | `theorem42_risk` | §7.1 |

Each Monte Carlo row records in `details` its standard error, sample size and the z-scores that
plausible convention errors in the closed form would give (`z_if_rho_N`: test normaliser
`rho = N`, i.e. `G` times `M/N`; `z_if_Gamma_M`: `Gamma` built with `M`; ...), which shows that the
sample size has the power to catch them.

Figures (`out/*.png`) are drawn by `simulations.plots` from tables saved in `out/shift/*.csv`.

Cost. On CPU the compilation of a Monte Carlo kernel (one per predictor tuple, distribution
*structure*, batch size and prompt length) costs far more than running it, so rows share kernels:
Gaussian shifts are all drawn from one `TestDistribution(GaussianTask, GaussianCovariates,
GaussianQuery)` structure whose matrices are traced (a query `x_q ~ N(0, Lambda_x)` independent of
the prompt has the law of `SameAsCovariates`); prompt lengths of a figure are prefixes of one
prompt (`Prefix`); the Garg panels draw prompts outside `jit`, so the per-shape operations are
shared between the evaluations.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize
from jaxtyping import Array, Float, PRNGKeyArray

import lsa
import theory
from lsa.flow import gradient_flow

from ..icl.distributions import (
    GaussianCovariates,
    GaussianQuery,
    GaussianTask,
    TestDistribution,
    garg_catalogue,
    named_shift,
    rbg_key,
)
from ..icl.montecarlo import MCEstimate, mc_ilwd, mc_risk, mc_spd, one_at_a_time
from ..icl.predictors import GD, OLS, Averaging, LSAPredictor, Predictor, Ridge
from ..plots import figures as plots
from .core import CheckResult, Setting

__all__ = [
    "Prefix",
    "ShiftInstance",
    "check_ols",
    "check_optimal_G",
    "check_shift_risks",
    "check_spd_ilwd",
    "check_theorem42",
    "gaussian_law",
    "lsa_mutations",
    "lsa_risks",
    "make_instance",
    "mc_full_map",
    "run_suite",
    "single_shift_report",
    "theorem42_moments",
    "z_check",
]

_F64 = jnp.float64


# ----------------------------------------------------------------------------------------------
# sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Monte Carlo sizes of one run (normal or quick).

    - `n`: prompts per risk row (`batch` per kernel call, so rows share a compiled kernel);
    - `n_spd`, `n_ilwd`: prompts for the SPD and ILWD rows;
    - `fig_M`, `fig_n`: prompt lengths and prompts per panel of `shift_risk_vs_M.png`;
    - `scale_c`: scale factors of `covariate_scale.png`;
    - `N_values`, `M_large`, `N_n`: training lengths, test length and prompts of `risk_vs_N.png`;
    - `garg_M`, `garg_n`: prompt lengths and prompts per Garg panel.
    """

    n: int
    batch: int
    n_spd: int
    n_ilwd: int
    fig_M: tuple[int, ...]
    fig_n: int
    scale_c: tuple[float, ...]
    N_values: tuple[int, ...]
    M_large: int
    N_n: int
    garg_M: tuple[int, ...]
    garg_n: int


NORMAL = Sizes(
    n=100_000,
    batch=25_000,
    n_spd=50_000,
    n_ilwd=25_000,
    fig_M=(2, 3, 5, 8, 12, 20, 40, 80),
    fig_n=10_000,
    scale_c=(1 / 3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
    N_values=(5, 20, 80),
    M_large=1000,
    N_n=4_000,
    garg_M=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
    garg_n=4_000,
)
QUICK = Sizes(
    n=20_000,
    batch=20_000,
    n_spd=10_000,
    n_ilwd=5_000,
    fig_M=(2, 5, 20),
    fig_n=2_000,
    scale_c=(1 / 3, 1.0, 3.0),
    N_values=(5, 40),
    M_large=300,
    N_n=1_000,
    garg_M=(1, 2, 4, 8),
    garg_n=1_000,
)


# ----------------------------------------------------------------------------------------------
# the instance: Lambda, trained weights and the shifted laws


@dataclasses.dataclass(frozen=True)
class ShiftInstance:
    """The trained layer and the test laws of the shift checks.

    - `Lambda`, `N`: training covariance and length; `lsa`: the trained layer (`LSAPredictor`
      at the end point of `gradient_flow`); `Ginv`: `Gamma^{-1}(Lambda, N)` (theory.md §6);
    - `Sigma_w`: a non-identity, non-diagonal task second moment; `Omega_q`: a query second
      moment `!= Lambda`; `Omega_x`: a general covariate-shift covariance (all Haar-rotated);
    - `noise_std`: label-noise standard deviation of the noisy rows;
    - `M_a`, `M_b`: the two test lengths (`!= N`), a short and a long one.
    """

    Lambda: np.ndarray
    N: int
    lsa: LSAPredictor
    Ginv: np.ndarray
    Sigma_w: np.ndarray
    Omega_q: np.ndarray
    Omega_x: np.ndarray
    noise_std: float
    M_a: int
    M_b: int
    flow_seconds: float

    @property
    def d(self) -> int:
        return int(self.Lambda.shape[0])


def _rotated(eigenvalues: np.ndarray, seed: int) -> np.ndarray:
    S = np.asarray(lsa.rotated_covariance(eigenvalues, jax.random.PRNGKey(seed)))
    return 0.5 * (S + S.T)


def _avoid(M: int, N: int) -> int:
    """`M`, moved off `N` (at M = N the rho = N convention error is invisible)."""
    return M + 2 if M == N else M


def train_lsa(Lambda: np.ndarray, N: int, sigma_fraction: float, seed: int) -> LSAPredictor:
    """The LSA layer trained by the reduced population gradient flow (ZFB Thm 4.1, Lemma 5.2)
    from Assumption 3.3, as an `LSAPredictor` on the full `(d+1) x (d+1)` weights."""
    init = lsa.paper_init(
        Lambda, N, sigma_fraction=sigma_fraction, key=jax.random.PRNGKey(seed + 1)
    )
    res = gradient_flow(Lambda, N, init)
    return LSAPredictor(res.W_PV, res.W_KQ)


def make_instance(setting: Setting) -> ShiftInstance:
    """Train the layer of `setting` (`gradient_flow`) and build the shifted laws (§8.5)."""
    Lambda = setting.Lambda()
    d = Lambda.shape[0]
    t0 = time.perf_counter()
    pred = train_lsa(Lambda, setting.N, setting.sigma_fraction, setting.seed)
    flow_seconds = time.perf_counter() - t0
    ramp = np.linspace(0.0, 1.0, d)
    return ShiftInstance(
        Lambda=Lambda,
        N=setting.N,
        lsa=pred,
        Ginv=np.linalg.inv(theory.gamma(Lambda, setting.N)),
        Sigma_w=_rotated(0.3 + 2.2 * ramp, setting.seed + 11),
        Omega_q=_rotated(2.0 - 1.5 * ramp, setting.seed + 12),
        Omega_x=_rotated(0.5 + 1.5 * ramp, setting.seed + 13),
        noise_std=0.7,
        M_a=_avoid(10, setting.N),
        M_b=_avoid(40, setting.N),
        flow_seconds=flow_seconds,
    )


def gaussian_law(
    Lambda_x: np.ndarray,
    Omega: np.ndarray,
    Sigma_w: np.ndarray,
    noise_std: float = 0.0,
    noisy_target: bool = False,
) -> TestDistribution:
    """`x_i ~ N(0, Lambda_x)`, `x_q ~ N(0, Omega)` independent, `w ~ N(0, Sigma_w)`, label noise
    (theory.md §8.3). Every Gaussian shift of §8.5 is one of these; all share one structure, so
    one compiled Monte Carlo kernel per prompt length serves them all."""
    return TestDistribution(
        task=GaussianTask(Sigma_w),
        covariates=GaussianCovariates(Lambda_x),
        query=GaussianQuery(Omega),
        noise_std=noise_std,
        noisy_target=noisy_target,
    )


# ----------------------------------------------------------------------------------------------
# prefixes: several prompt lengths from one prompt


class Prefix(Predictor):
    """`base` applied to the first `m` examples of a prompt (the others are masked out).

    Lets one Monte Carlo kernel evaluate several test lengths on prefixes of the same prompts
    (common random numbers). The LSA normalises by `rho = m`, the number of examples it sees
    (theory.md §2.2), through `Predictor`'s mask protocol.
    """

    base: Predictor
    m: int = eqx.field(static=True)

    @property
    def name(self) -> str:
        return f"{self.base.name}@{self.m}"

    def check_dimension(self, d: int) -> None:
        self.base.check_dimension(d)

    def check_dims(self, M: int, d: int) -> None:
        if self.m > M:
            raise ValueError(f"prefix length {self.m} exceeds the prompt length M = {M}.")
        self.base.check_dims(self.m, d)

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        keep = (jnp.arange(X.shape[1]) < self.m).astype(_F64)
        if mask is not None:
            keep = keep * mask
        return self.base._predict(X, y, x_q, keep)


# ----------------------------------------------------------------------------------------------
# one Monte Carlo row


def _key(setting_seed: int, tag: int) -> PRNGKeyArray:
    return jax.random.fold_in(jax.random.PRNGKey(setting_seed + 7), tag)


def mc_full_map(
    predictors: Mapping[str, Predictor],
    dist: TestDistribution,
    M: int,
    n: int,
    key: PRNGKeyArray,
    *,
    batch: int,
    target: str = "y_q",
) -> dict[str, MCEstimate]:
    """`mc_risk` on explicit prompts: every prompt is drawn and the predictors are applied to it
    (for the LSA, the full map through `lsa.predict_prompt`), never a sufficient-statistics
    shortcut (theory.md §14, "MC on the full map")."""
    return mc_risk(predictors, dist, M, n, key, batch_size=batch, target=target, sampler="prompts")


def z_check(
    cid: str,
    statement: str,
    reference: str,
    est: MCEstimate,
    closed_form: float,
    z_max: float,
    mutations: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CheckResult:
    """A Monte Carlo estimate against a closed form as a z-check (theory.md §14):
    `z = (MC mean - closed form) / SE`, passed if `|z| <= z_max`.

    `mutations` maps a name to the value a plausible error in the closed form would give; its
    z-score against the same sample is recorded as `details["z_if_<name>"]`, to show the power of
    the sample size.
    """
    z = est.z(closed_form)
    details: dict[str, Any] = {"se": est.se, "n": est.n}
    for name, value in (mutations or {}).items():
        details[f"z_if_{name}"] = est.z(value)
    details.update(extra or {})
    return CheckResult(
        cid,
        statement,
        reference,
        float(closed_form),
        est.mean,
        z,
        z_max,
        "z",
        bool(abs(z) <= z_max),
        details,
    )


def lsa_mutations(inst: ShiftInstance, args: Mapping[str, Any], M: int) -> dict[str, float]:
    """Closed forms with a convention error (theory.md "Convention traps" 1–2): `rho = N` at test
    (every prediction times M/N, i.e. `G` times M/N) and `Gamma` built with `M` instead of `N`."""
    G_M = np.linalg.inv(theory.gamma(inst.Lambda, M))
    return {
        "rho_N": theory.shift_risk(inst.Ginv * (M / inst.N), **args, M=M),
        "Gamma_M": theory.shift_risk(G_M, **args, M=M),
    }


def _two_sample_z(a: MCEstimate, b: MCEstimate) -> float:
    return (a.mean - b.mean) / math.hypot(a.se, b.se)


# ----------------------------------------------------------------------------------------------
# s1-s9: the shift risks of the trained layer


def lsa_risks(
    inst: ShiftInstance, dist: TestDistribution, n: int, key: PRNGKeyArray, batch: int
) -> dict[int, MCEstimate]:
    """Monte Carlo risk of the trained layer at both test lengths `M_a < M_b`, on prompts of
    length `M_b` and their prefixes of length `M_a` (one compiled kernel per law structure)."""
    preds = {"a": Prefix(inst.lsa, inst.M_a), "b": Prefix(inst.lsa, inst.M_b)}
    est = mc_full_map(preds, dist, inst.M_b, n, key, batch=batch)
    return {inst.M_a: est["a"], inst.M_b: est["b"]}


def check_shift_risks(
    inst: ShiftInstance, sizes: Sizes, seed: int, z_max: float
) -> list[CheckResult]:
    """s1–s9: every closed-form shift risk of the trained layer (theory.md §8.5) against Monte
    Carlo on the full LSA map at the trained weights (theory.md §14 row 19).

    Each row is checked at its test length `M` (`M_a` or `M_b`); the other length, drawn on the
    same prompts, is recorded as `details["z_at_M_other"]`."""
    L, N, Sw, Oq, Ox = inst.Lambda, inst.N, inst.Sigma_w, inst.Omega_q, inst.Omega_x
    s = inst.noise_std
    I = np.eye(inst.d)
    Ma, Mb = inst.M_a, inst.M_b
    rows: list[CheckResult] = []
    ests: dict[str, MCEstimate] = {}

    def row(
        cid: str,
        statement: str,
        ref: str,
        dist: TestDistribution,
        M: int,
        closed: Callable[[int], float],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        args = dist.shift_risk_args()
        est = lsa_risks(inst, dist, sizes.n, _key(seed, int(cid[1:])), sizes.batch)
        other = Mb if M == Ma else Ma
        more = {"M": M, "z_at_M_other": est[other].z(closed(other)), "M_other": other}
        rows.append(
            z_check(
                cid,
                f"{statement}, M = {M}",
                ref,
                est[M],
                closed(M),
                z_max,
                lsa_mutations(inst, args, M),
                more | dict(extra or {}),
            )
        )
        ests[cid] = est[M]

    row(
        "s1",
        "task shift w ~ N(0, Sigma_w), Sigma_w non-diagonal",
        "theory.md §8.5 (task shift)",
        gaussian_law(L, L, Sw),
        Ma,
        lambda m: theory.task_shift_risk(L, N, m, Sw),
    )
    row(
        "s2",
        "task shift, w = Sigma_w^1/2 sqrt(d) u (sphere): same risk",
        "theory.md §8.5 (only E[w w^T] matters)",
        named_shift("task-sphere", L, Sigma_w=Sw),
        Ma,
        lambda m: theory.task_shift_risk(L, N, m, Sw),
    )
    rows[-1].details["z_sphere_minus_gaussian"] = _two_sample_z(ests["s2"], ests["s1"])
    row(
        "s3",
        "query shift x_q ~ N(0, Omega), Omega != Lambda",
        "theory.md §8.5 (query shift), ZFB eq. 4.8",
        gaussian_law(L, Oq, I),
        Mb,
        lambda m: theory.query_shift_risk(L, N, m, Oq),
    )
    row(
        "s4",
        "query shift x_q = Omega^1/2 r, r Rademacher: same risk",
        "theory.md §8.5 (only E[x_q x_q^T] matters)",
        named_shift("query-rademacher", L, Omega=Oq),
        Mb,
        lambda m: theory.query_shift_risk(L, N, m, Oq),
    )
    rows[-1].details["z_rademacher_minus_gaussian"] = _two_sample_z(ests["s4"], ests["s3"])
    row(
        "s5",
        "covariate scaling c = 2 (prompt and query)",
        "theory.md §8.5 (covariate scaling), ZFB §4.2",
        gaussian_law(4.0 * L, 4.0 * L, I),
        Mb,
        lambda m: theory.covariate_scaling_risk(L, N, m, 2.0),
        {"limit_MN_inf": theory.covariate_scaling_limit(L, 2.0)},
    )
    row(
        "s6",
        "covariate scaling c = 1/2 (prompt and query)",
        "theory.md §8.5 (covariate scaling)",
        gaussian_law(0.25 * L, 0.25 * L, I),
        Ma,
        lambda m: theory.covariate_scaling_risk(L, N, m, 0.5),
        {"limit_MN_inf": theory.covariate_scaling_limit(L, 0.5)},
    )
    row(
        "s7",
        "covariate shift x ~ N(0, Omega), general Omega",
        "theory.md §8.5 (covariate shift)",
        gaussian_law(Ox, Ox, I),
        Ma,
        lambda m: theory.covariate_shift_risk(L, N, m, Ox),
    )
    row(
        "s8",
        f"label noise s = {s:g}, clean target w^T x_q",
        "theory.md §8.5 (noise adds s^2 tr(G^-2 L^2)/M)",
        gaussian_law(L, L, I, noise_std=s),
        Mb,
        lambda m: theory.task_shift_risk(L, N, m, I, s2=s * s),
        {"z_if_noise_ignored": 0.0},
    )
    rows[-1].details["z_if_noise_ignored"] = ests["s8"].z(theory.task_shift_risk(L, N, Mb, I))
    row(
        "s9",
        f"label noise s = {s:g}, noisy target y_q (+ s^2)",
        "theory.md §8.3 (+ s^2 for a noisy target)",
        named_shift("noisy", L, noise_std=s, noisy_target=True),
        Ma,
        lambda m: theory.task_shift_risk(L, N, m, I, s2=s * s, noisy_target=True),
    )
    rows[-1].details["z_if_clean_target_form"] = ests["s9"].z(
        theory.task_shift_risk(L, N, Ma, I, s2=s * s)
    )
    return rows


# ----------------------------------------------------------------------------------------------
# s10-s12: least-squares baselines


def check_ols(inst: ShiftInstance, sizes: Sizes, seed: int, z_max: float) -> list[CheckResult]:
    """s10–s12: OLS closed forms (theory.md §8.7) against Monte Carlo with explicit
    least-squares solves (`OLS()`: min-norm solution by SVD), theory.md §14 row 21."""
    L, s, d = inst.Lambda, inst.noise_std, inst.d
    I = np.eye(d)
    M = max(inst.M_a, d + 4)  # M >= d + 4: the squared error has a finite variance
    n, B = sizes.n, sizes.batch
    ols = {"OLS": OLS()}
    R = theory.ols_risk(s * s, L, L, M)
    est = mc_full_map(ols, gaussian_law(L, L, I, noise_std=s), M, n, _key(seed, 10), batch=B)
    rows = [
        z_check(
            "s10",
            f"OLS with noise s = {s:g}, M = {M} >= d + 2, clean target",
            "theory.md §8.7: s^2 tr(Omega Lambda^-1)/(M-d-1)",
            est["OLS"],
            R,
            z_max,
            {"M_minus_d": R * (M - d - 1) / (M - d)},
            {"M": M},
        )
    ]
    c = 2.0
    R2 = theory.ols_risk(s * s, c * c * L, c * c * L, M)
    dist = gaussian_law(c * c * L, c * c * L, I, noise_std=s)
    est = mc_full_map(ols, dist, M, n, _key(seed, 11), batch=B)
    rows.append(
        z_check(
            "s11",
            f"OLS under covariate scaling c = 2: risk unchanged, M = {M}",
            "theory.md §8.7 (OLS is invariant), ZFB §4.2",
            est["OLS"],
            R2,
            z_max,
            {"query_scaled_only": theory.ols_risk(s * s, c * c * L, L, M)},
            {"M": M, "unscaled_closed_form": R},
        )
    )
    d8, M8, tau2, s2 = 8, 4, 0.25, 1.0
    R8 = theory.minnorm_ols_risk(d8, M8, tau2, s2)
    dist8 = gaussian_law(np.eye(d8), np.eye(d8), tau2 * np.eye(d8), noise_std=math.sqrt(s2))
    est = mc_full_map(ols, dist8, M8, n, _key(seed, 12), batch=B)
    rows.append(
        z_check(
            "s12",
            f"min-norm OLS, Lambda = I, d = {d8}, M = {M8} <= d - 2, tau^2 = {tau2:g}, "
            f"s^2 = {s2:g}",
            "theory.md §8.7: tau^2 (d-M) + s^2 M/(d-M-1)",
            est["OLS"],
            R8,
            z_max,
            {"d_minus_M": tau2 * (d8 - M8) + s2 * M8 / (d8 - M8)},
            {"M": M8, "d": d8},
        )
    )
    return rows


# ----------------------------------------------------------------------------------------------
# s13-s15: the optimal preconditioner


def _gamma_explicit(Lambda: np.ndarray, N: int) -> np.ndarray:
    """`Gamma = (1 + 1/N) Lambda + (tr Lambda / N) I`, written out here (theory.md conventions)."""
    d = Lambda.shape[0]
    return (1.0 + 1.0 / N) * Lambda + (np.trace(Lambda) / N) * np.eye(d)


def _minimise_G(risk: Callable[[np.ndarray], float], d: int) -> np.ndarray:
    """BFGS over the `d * d` entries of `G` from `G = 0`. The risk is a quadratic in `G`, so
    central differences give its gradient exactly up to round-off."""
    h = 1e-3

    def f(g: np.ndarray) -> float:
        return risk(g.reshape(d, d))

    def grad(g: np.ndarray) -> np.ndarray:
        out = np.empty_like(g)
        for i in range(g.size):
            e = np.zeros_like(g)
            e[i] = h
            out[i] = (f(g + e) - f(g - e)) / (2 * h)
        return out

    res = scipy.optimize.minimize(
        f, np.zeros(d * d), jac=grad, method="BFGS", options={"gtol": 1e-13, "maxiter": 2000}
    )
    return res.x.reshape(d, d)


def check_optimal_G(inst: ShiftInstance) -> list[CheckResult]:
    """s13–s15: `G* = E[hh^T]^{-1} Lambda_x Sigma_w` minimises the shift risk (theory.md §8.4);
    under the training law with M = N it is `Gamma^{-1}`, with training noise
    `(Gamma + s^2/N I)^{-1}` (§8.6); theory.md §14 row 20."""
    L, N, d = inst.Lambda, inst.N, inst.d
    s2, M = inst.noise_std**2, inst.M_a
    args: dict[str, Any] = {
        "Lambda_x": inst.Omega_x,
        "Omega": inst.Omega_q,
        "Sigma_w": inst.Sigma_w,
        "s2": s2,
    }
    G_star = theory.optimal_preconditioner(inst.Omega_x, inst.Sigma_w, s2, M)
    G_num = _minimise_G(lambda G: theory.shift_risk(G, **args, M=M), d)
    err = float(np.linalg.norm(G_num - G_star) / np.linalg.norm(G_star))
    R_star = theory.shift_risk(G_star, **args, M=M)
    R_num = theory.shift_risk(G_num, **args, M=M)
    rows = [
        CheckResult(
            "s13",
            f"G* = E[hh^T]^-1 Lambda_x Sigma_w = BFGS minimiser of R(G) (shifted law, M = {M})",
            "theory.md §8.4",
            float(np.linalg.norm(G_star)),
            float(np.linalg.norm(G_num)),
            err,
            1e-6,
            "rel",
            err <= 1e-6 and R_star <= R_num + 1e-12 * abs(R_num),
            {
                "R_at_G_star": R_star,
                "R_at_bfgs": R_num,
                "R_at_Gamma_inv": theory.shift_risk(inst.Ginv, **args, M=M),
            },
        )
    ]
    Ginv = np.linalg.inv(_gamma_explicit(L, N))
    G_train = theory.optimal_preconditioner(L, np.eye(d), 0.0, N)
    err = float(np.linalg.norm(G_train - Ginv) / np.linalg.norm(Ginv))
    rows.append(
        CheckResult(
            "s14",
            "G* under the training law with M = N equals Gamma^-1 (second route to Lemma 5.3)",
            "theory.md §8.4, ZFB Lemma 5.3",
            float(np.linalg.norm(Ginv)),
            float(np.linalg.norm(G_train)),
            err,
            1e-10,
            "rel",
            err <= 1e-10,
        )
    )
    s2_train = 0.5
    Gn = np.linalg.inv(_gamma_explicit(L, N) + (s2_train / N) * np.eye(d))
    G_noisy = theory.optimal_preconditioner(L, np.eye(d), s2_train, N)
    err = float(np.linalg.norm(G_noisy - Gn) / np.linalg.norm(Gn))
    err2 = float(
        np.linalg.norm(theory.noisy_training_minimiser(L, N, s2_train) - Gn) / np.linalg.norm(Gn)
    )
    rows.append(
        CheckResult(
            "s15",
            f"G* with training noise s^2 = {s2_train:g}, M = N: (Gamma + s^2/N I)^-1",
            "theory.md §8.6",
            float(np.linalg.norm(Gn)),
            float(np.linalg.norm(G_noisy)),
            max(err, err2),
            1e-10,
            "rel",
            max(err, err2) <= 1e-10,
            {"noisy_training_minimiser_rel_err": err2},
        )
    )
    return rows


# ----------------------------------------------------------------------------------------------
# s16-s19: SPD and ILWD


def check_spd_ilwd(inst: ShiftInstance, sizes: Sizes, seed: int, z_max: float) -> list[CheckResult]:
    """s16–s19: SPD [AKY eq. 15] and ILWD [AKY eqs. 16–17] between the trained LSA and GD(0.01)
    (at M_b) and averaging (at M_a) against the closed forms for predictors linear in h
    (theory.md §11.3, §14 row 24); ILWD by probe fitting with 2d probes."""
    L, N, d = inst.Lambda, inst.N, inst.d
    dist = named_shift("none", L)
    rows = []
    tag = 16
    for other, M in ((GD(0.01), inst.M_b), (Averaging(), inst.M_a)):
        G2 = theory.gd_G(0.01, M, d) if isinstance(other, GD) else np.eye(d)
        Ehh = theory.prompt_moment(L, np.eye(d), 0.0, M)
        G_rhoN = inst.Ginv * (M / N)
        for metric in ("SPD", "ILWD"):
            if metric == "SPD":
                est = mc_spd(inst.lsa, other, dist, M, sizes.n_spd, _key(seed, tag))
                pred = theory.spd_linear(inst.Ginv, G2, L, Ehh)
                mut = theory.spd_linear(G_rhoN, G2, L, Ehh)
                ref = "AKY eq. 15; theory.md §11.3"
            else:
                est = mc_ilwd(inst.lsa, other, dist, M, sizes.n_ilwd, _key(seed, tag))
                pred = theory.ilwd_linear(inst.Ginv, G2, Ehh)
                mut = theory.ilwd_linear(G_rhoN, G2, Ehh)
                ref = "AKY eqs. 16-17; theory.md §11.3"
            z = est.z(pred)
            rows.append(
                CheckResult(
                    f"s{tag}",
                    f"{metric}(LSA, {other.name}) = closed form for linear-in-h, M = {M}",
                    ref,
                    pred,
                    est.mean,
                    z,
                    z_max,
                    "z",
                    abs(z) <= z_max,
                    {"M": M, "se": est.se, "n": est.n, "z_if_rho_N": est.z(mut)},
                )
            )
            tag += 1
    return rows


# ----------------------------------------------------------------------------------------------
# s20: Theorem 4.2 for a distribution with noise and a nonlinear part


def theorem42_moments(
    Lambda: np.ndarray, w0: np.ndarray, v: np.ndarray, beta: float, s: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """`a_D`, `Sigma = Cov(xy)` and `min_w E(<w, x> - y)^2` for
    `y = <w0, x> + beta ((v^T x)^2 - v^T Lambda v) + eps`, `x ~ N(0, Lambda)`, `eps ~ N(0, s^2)`
    (ZFB eq. 4.5), by Isserlis' theorem (written out here, independently of `theory/`).

    With `q = v^T x`, `sq = v^T Lambda v`, `a = Lambda v`:
    - odd moments vanish, so `E[xy] = Lambda w0` and `a_D = w0`;
    - `E[q^2 x x^T] = sq Lambda + 2 a a^T` and `E[q^4 x x^T] = 3 sq^2 Lambda + 12 sq a a^T`, so
      `E[(q^2 - sq)^2 x x^T] = 2 sq^2 Lambda + 8 sq a a^T`;
    - `E[(w0^T x)^2 x x^T] = (w0^T Lambda w0) Lambda + 2 Lambda w0 w0^T Lambda`;
    - `Cov(xy) = E[y^2 x x^T] - Lambda w0 w0^T Lambda`
      `= (w0^T Lambda w0 + 2 beta^2 sq^2 + s^2) Lambda + Lambda w0 w0^T Lambda
         + 8 beta^2 sq Lambda v v^T Lambda`;
    - `E y^2 = w0^T Lambda w0 + 2 beta^2 sq^2 + s^2`, so the best linear error is
      `E y^2 - E[xy]^T Lambda^{-1} E[xy] = 2 beta^2 sq^2 + s^2`.
    """
    Lw = Lambda @ w0
    a = Lambda @ v
    sq = float(v @ a)
    wLw = float(w0 @ Lw)
    Sigma = (wLw + 2 * beta**2 * sq**2 + s**2) * Lambda + np.outer(Lw, Lw)
    Sigma = Sigma + 8 * beta**2 * sq * np.outer(a, a)
    best = 2 * beta**2 * sq**2 + s**2
    return np.array(w0, dtype=np.float64), 0.5 * (Sigma + Sigma.T), best


@eqx.filter_jit
def _thm42_batch(
    key: PRNGKeyArray,
    factor: Array,
    w0: Array,
    v: Array,
    beta: Array,
    s: Array,
    W_PV: Array,
    W_KQ: Array,
    B: int,
    M: int,
    N: int,
) -> tuple[Array, Array]:
    """Squared errors on `B` prompts of length `M` (and those of predictions times M/N, the
    rho = N convention): `x ~ N(0, F F^T)`, `y = <w0, x> + beta ((v^T x)^2 - v^T Lambda v) + eps`;
    the prediction is the full LSA map through `lsa.predict_prompt`."""
    kx, ke = jax.random.split(key)
    d = factor.shape[0]
    x = jax.random.normal(kx, (B, M + 1, d), _F64) @ factor.T
    sq = jnp.sum((factor.T @ v) ** 2)
    q = x @ v
    y = x @ w0 + beta * (q * q - sq) + s * jax.random.normal(ke, (B, M + 1), _F64)
    yhat = lsa.predict_prompt(x[:, :M], y[:, :M], x[:, M], W_PV, W_KQ)
    e = (yhat - y[:, M]) ** 2
    e_mut = ((M / N) * yhat - y[:, M]) ** 2
    return e, e_mut


def check_theorem42(
    inst: ShiftInstance, sizes: Sizes, seed: int, z_max: float
) -> list[CheckResult]:
    """s20: ZFB Theorem 4.2 (eq. 4.6) for a data distribution with label noise and a quadratic
    part, by Monte Carlo on the full LSA map at the trained weights (theory.md §14 row 15)."""
    L, N, d = inst.Lambda, inst.N, inst.d
    M = inst.M_b
    rng = np.random.default_rng(seed + 42)
    w0 = rng.standard_normal(d)
    v = rng.standard_normal(d)
    v /= np.sqrt(v @ L @ v)  # v^T Lambda v = 1
    beta, s = 0.5, 0.5
    a_D, Sigma, best = theorem42_moments(L, w0, v, beta, s)
    R = theory.theorem42_risk(L, N, M, a_D, Sigma, best)
    factor = jnp.asarray(np.linalg.cholesky(L))
    W_PV, W_KQ = inst.lsa.W_PV, inst.lsa.W_KQ
    n, B = sizes.n, sizes.batch
    n_batches = -(-n // B)
    key = _key(seed, 20)
    e_all: list[np.ndarray] = []
    m_all: list[np.ndarray] = []
    for b in range(n_batches):
        eb, emb = _thm42_batch(
            rbg_key(jax.random.fold_in(key, b)),
            factor, jnp.asarray(w0), jnp.asarray(v), jnp.asarray(beta), jnp.asarray(s),
            W_PV, W_KQ, B, M, N,
        )  # fmt: skip
        e_all.append(np.asarray(eb))
        m_all.append(np.asarray(emb))
    e = np.concatenate(e_all)[:n]
    em = np.concatenate(m_all)[:n]
    mean, se = float(e.mean()), float(e.std(ddof=1) / math.sqrt(n))
    z = (mean - R) / se
    se_m = float(em.std(ddof=1) / math.sqrt(n))
    _, Sig_lin, best_lin = theorem42_moments(L, w0, v, 0.0, s)
    R_lin = theory.theorem42_risk(L, N, M, a_D, Sig_lin, best_lin)
    return [
        CheckResult(
            "s20",
            f"Thm 4.2: y = <w0,x> + {beta:g}((v^T x)^2 - v^T L v) + eps, s = {s:g}, M = {M}",
            "ZFB Thm 4.2, eq. 4.6; theory.md §7.1",
            R,
            mean,
            z,
            z_max,
            "z",
            abs(z) <= z_max,
            {
                "M": M,
                "se": se,
                "n": n,
                "best_linear_error": best,
                "z_if_rho_N": (float(em.mean()) - R) / se_m,
                "z_if_nonlinear_part_ignored": (mean - R_lin) / se,
            },
        )
    ]


# ----------------------------------------------------------------------------------------------
# figure tables


def _gd_alpha(Lambda: np.ndarray, M: int) -> float:
    """Step of one-step GD from 0 minimising the risk on the training law at length `M`:
    `G = g I` with `g = tr(Lambda^2) / tr(Lambda E[hh^T])` (theory.md §8.3), `alpha = g / (2M)`."""
    d = Lambda.shape[0]
    Ehh = theory.prompt_moment(Lambda, np.eye(d), 0.0, M)
    g = float(np.trace(Lambda @ Lambda) / np.trace(Lambda @ Ehh))
    return g / (2.0 * M)


def _baselines(inst: ShiftInstance, Ms: tuple[int, ...]) -> dict[str, Predictor]:
    preds: dict[str, Predictor] = {}
    for m in Ms:
        preds[f"LSA|{m}"] = Prefix(inst.lsa, m)
        preds[f"OLS|{m}"] = Prefix(OLS(), m)
        preds[f"Ridge(0.1)|{m}"] = Prefix(Ridge(0.1), m)
        preds[f"GD(α*)|{m}"] = Prefix(GD(_gd_alpha(inst.Lambda, m)), m)
        preds[f"Averaging|{m}"] = Prefix(Averaging(), m)
    return preds


def _records(panel: str, est: Mapping[str, MCEstimate], **extra: Any) -> list[dict[str, Any]]:
    out = []
    for name, e in est.items():
        pred, m = name.split("|")
        out.append(
            {"panel": panel, "predictor": pred, "M": int(m), "mean": e.mean, "se": e.se, "n": e.n}
            | extra
        )
    return out


def shift_panels(inst: ShiftInstance) -> dict[str, TestDistribution]:
    """The four laws of `shift_risk_vs_M.png`: no shift, task, query and covariate scaling c = 2."""
    L, I = inst.Lambda, np.eye(inst.d)
    return {
        "no shift": gaussian_law(L, L, I),
        "task shift (Σ_w)": gaussian_law(L, L, inst.Sigma_w),
        "query shift (Ω)": gaussian_law(L, inst.Omega_q, I),
        "covariate scaling c = 2": gaussian_law(4 * L, 4 * L, I),
    }


def risk_vs_M_tables(
    inst: ShiftInstance, sizes: Sizes, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Theory curve of the LSA (and its M -> infinity limit) and Monte Carlo risks of the LSA,
    OLS, Ridge(0.1), GD(alpha*_M) and averaging for each panel (theory.md §8.3, §8.7, §11.2).
    All predictors and all lengths are evaluated on prefixes of the same prompts."""
    Ms = sizes.fig_M
    preds = _baselines(inst, Ms)
    grid = np.unique(np.geomspace(1, 4 * max(Ms), 120).astype(int))
    theory_rows, mc_rows = [], []
    for i, (panel, dist) in enumerate(shift_panels(inst).items()):
        args = dist.shift_risk_args()
        lim = theory.shift_risk_limit(inst.Ginv, args["Lambda_x"], args["Omega"], args["Sigma_w"])
        for m in grid:
            theory_rows.append(
                {
                    "panel": panel,
                    "M": int(m),
                    "lsa_theory": theory.shift_risk(inst.Ginv, **args, M=int(m)),
                    "lsa_limit": lim,
                }
            )
        est = mc_risk(preds, dist, max(Ms), sizes.fig_n, _key(seed, 100 + i))
        mc_rows += _records(panel, est)
    return pd.DataFrame(theory_rows), pd.DataFrame(mc_rows)


def covariate_scale_tables(
    inst: ShiftInstance, sizes: Sizes, seed: int, s: float = 0.5
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Risk against the covariate scale `c` with label noise `s` (so OLS's risk is not 0): the
    LSA's exact finite-(N, M) risk, its M, N -> infinity limit `c^2 (c^2 - 1)^2 tr Lambda`, OLS's
    `s^2 tr(Omega Lambda_x^-1)/(M-d-1)` (invariant), and Monte Carlo (theory.md §8.5, §8.7)."""
    L, d = inst.Lambda, inst.d
    Ms = sizes.fig_M
    M = next((m for m in Ms if m >= d + 4 and m >= 20), max(Ms))
    I = np.eye(d)
    preds: dict[str, Predictor] = {f"LSA|{M}": Prefix(inst.lsa, M), f"OLS|{M}": Prefix(OLS(), M)}
    rows = []
    for c in np.geomspace(1 / 3, 3, 121):
        c2 = float(c * c)
        rows.append(
            {
                "c": float(c),
                "lsa_theory": theory.shift_risk(inst.Ginv, c2 * L, c2 * L, I, s * s, M),
                "lsa_limit": theory.covariate_scaling_limit(L, float(c)),
                "ols_theory": theory.ols_risk(s * s, c2 * L, c2 * L, M) if M >= d + 2 else np.nan,
            }
        )
    mc = []
    for j, c in enumerate(sizes.scale_c):
        dist = gaussian_law(c * c * L, c * c * L, I, noise_std=s)
        est = mc_risk(preds, dist, M, sizes.fig_n, _key(seed, 200 + j))
        for name in preds:
            e = est[name]
            mc.append(
                {
                    "c": c,
                    "predictor": name.split("|")[0],
                    "M": M,
                    "mean": e.mean,
                    "se": e.se,
                    "n": e.n,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(mc), M


def risk_vs_N_tables(
    inst: ShiftInstance, setting: Setting, sizes: Sizes, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Risk of the trained layer at a fixed long test prompt against the training length N:
    exact R(N, M), the M -> infinity floor `theory.risk_floor` (O(1/N^2)) and the N -> infinity
    limit (d+1) tr Lambda / M (theory.md §6, §7.3), with Monte Carlo on layers trained by
    `gradient_flow` at several N."""
    L, M = inst.Lambda, sizes.M_large
    Ns = np.unique(np.geomspace(2, 2000, 150).astype(int))
    curve = pd.DataFrame(
        {
            "N": Ns,
            "risk": [theory.risk(L, int(n), M) for n in Ns],
            "floor": [theory.risk_floor(L, int(n)) for n in Ns],
            "limit_large_N": theory.risk_limit_large_N(L, M),
            "M": M,
        }
    )
    preds: dict[str, Predictor] = {}
    for N in sizes.N_values:
        preds[str(N)] = (
            inst.lsa if N == inst.N else train_lsa(L, N, setting.sigma_fraction, setting.seed)
        )
    est = mc_risk(preds, named_shift("none", L), M, sizes.N_n, _key(seed, 300))
    mc = pd.DataFrame(
        [
            {
                "N": int(k),
                "M": M,
                "mean": e.mean,
                "se": e.se,
                "n": e.n,
                "theory": theory.risk(L, int(k), M),
            }
            for k, e in est.items()
        ]
    )
    return curve, mc


@eqx.filter_jit
def _prefix_sq_errors(
    pred: Predictor,
    X: Array,
    y: Array,
    x_q: Array,
    y_q: Array,
    Ms: tuple[int, ...],
) -> Float[Array, "K B"]:
    """Squared errors of one predictor on the prefixes of lengths `Ms` of the prompts, one
    length after the other (`montecarlo.one_at_a_time`: side-by-side batched SVDs can deadlock
    XLA's CPU runtime)."""
    idx = jnp.arange(X.shape[1])

    def err_at(m: int) -> Callable[..., Array]:
        keep = (idx < m).astype(_F64)
        return lambda X, y, x_q, y_q: (pred._predict(X, y, x_q, keep) - y_q) ** 2

    return one_at_a_time([err_at(m) for m in Ms], X, y, x_q, y_q)


def garg_tables(setting: Setting, sizes: Sizes, seed: int) -> tuple[pd.DataFrame, int]:
    """Risk (divided by d, as in Garg et al.'s plots) of the LSA trained on Garg's law
    `x ~ N(0, I_d)`, `w ~ N(0, I_d)` (by `gradient_flow`, d and N of `setting`) and of OLS, for
    every evaluation of `garg_catalogue` (theory.md §12), against the number of in-context
    examples M.

    One prompt of the largest length is drawn per evaluation and every length is a prefix of it
    (a prefix of a prompt is a prompt, and a query independent of the prompt stays valid). For
    `orthogonal_train_test` and `overlapping_train_test` the query depends on the prompt, so it
    is redrawn from the evaluation's query law for each prefix (M < d for the orthogonal query;
    the overlapping one also at the largest M). Prompts are drawn outside `jit`
    (`TestDistribution._sample`), so their per-shape operations are compiled once for all
    evaluations; the predictions are one jitted call for all of them.
    """
    d, N = setting.d, setting.N
    lsa_iso = train_lsa(np.eye(d), N, setting.sigma_fraction, setting.seed)
    preds = (lsa_iso, OLS())
    names = ("LSA", "OLS")
    Ms = tuple(sorted(set(sizes.garg_M)))
    M_max = max(Ms)
    n = sizes.garg_n
    catalogue = garg_catalogue(d, jax.random.PRNGKey(setting.seed + 5))
    base = _key(seed, 400)
    rows = []

    def add(name: str, x_q: Array, y_q: Array, P: lsa.Prompts, keep: tuple[int, ...]) -> None:
        for pred, pname in zip(preds, names, strict=True):
            err = np.asarray(_prefix_sq_errors(pred, P.X, P.y, x_q, y_q, Ms))
            for k, m in enumerate(Ms):
                if m not in keep:
                    continue
                e = err[k]
                rows.append(
                    {
                        "evaluation": name,
                        "predictor": pname,
                        "M": m,
                        "mean": float(e.mean()) / d,
                        "se": float(e.std(ddof=1)) / math.sqrt(e.size) / d,
                        "n": int(e.size),
                        "d": d,
                    }
                )

    for i, (name, dist) in enumerate(catalogue.items()):
        key = jax.random.fold_in(base, i)
        if dist.query.independent:
            P = dist._sample(rbg_key(key), n, dist.validate(M_max))
            add(name, P.x_q, P.y_q, P, Ms)
            continue
        # The query looks at the prompt: redraw it for each prefix length from the query law
        # (Garg's two such evaluations are noiseless, so the target is <w, x_q>).
        assert float(np.asarray(dist.noise_std)) == 0.0 and not dist.noisy_target
        P = dist._sample(rbg_key(key), n, M_max if name != "orthogonal_train_test" else d - 1)
        if P.X.shape[1] < M_max:  # pad (the padding is never inside a kept prefix)
            pad = M_max - P.X.shape[1]
            P = P._replace(
                X=jnp.pad(P.X, ((0, 0), (0, pad), (0, 0))), y=jnp.pad(P.y, ((0, 0), (0, pad)))
            )
        lengths = [m for m in Ms if m < d]
        if name != "orthogonal_train_test":
            lengths.append(M_max)
        for m in sorted(set(lengths)):
            kq = rbg_key(jax.random.fold_in(key, 1000 + m))
            x_q = dist.query.sample(kq, P.X[:, :m], dist.covariates)
            add(name, x_q, jnp.einsum("nd,nd->n", x_q, P.w), P, (m,))
    return pd.DataFrame(rows), d


# ----------------------------------------------------------------------------------------------
# the suite


def run_suite(
    setting: Setting, out: Path, quick: bool = False, log: Callable[[str], None] = print
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Run the distribution-shift checks s1–s20 and draw the shift figures (issue items 5–6).

    **Arguments:**

    - `setting`: the `Setting` of `lsa reproduce` (Lambda, N, seed, `z_max`);
    - `out`: output folder; tables go to `out/shift/*.csv`, figures to `out/*.png`;
    - `quick`: about 1/5 of the Monte Carlo sizes and fewer figure points (smoke run);
    - `log`: progress printer.

    **Returns:** `(checks, figure paths, tables)`; `tables` holds the check rows, the figure
    tables as lists of records and the timings of each part.
    """
    out = Path(out)
    tab_dir = out / "shift"
    tab_dir.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if quick else NORMAL
    seed, z_max = setting.seed, setting.z_max
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        res = fn()
        timings[name] = time.perf_counter() - t0
        log(f"  shift {name}: {timings[name]:.2f} s")
        return res

    inst = timed("train", lambda: make_instance(setting))
    checks: list[CheckResult] = []
    checks += timed("s1-s9 shift risks", lambda: check_shift_risks(inst, sizes, seed, z_max))
    checks += timed("s10-s12 OLS", lambda: check_ols(inst, sizes, seed, z_max))
    checks += timed("s13-s15 optimal G", lambda: check_optimal_G(inst))
    checks += timed("s16-s19 SPD/ILWD", lambda: check_spd_ilwd(inst, sizes, seed, z_max))
    checks += timed("s20 Theorem 4.2", lambda: check_theorem42(inst, sizes, seed, z_max))
    pd.DataFrame([c.row() for c in checks]).to_csv(tab_dir / "checks.csv", index=False)

    title = f"d={inst.d}, N={inst.N}, κ(Λ)={setting.spread:g}, trained LSA (gradient flow)"
    th, mc = timed("fig risk vs M", lambda: risk_vs_M_tables(inst, sizes, seed))
    th.to_csv(tab_dir / "risk_vs_M_theory.csv", index=False)
    mc.to_csv(tab_dir / "risk_vs_M_mc.csv", index=False)
    cs_th, cs_mc, M_cs = timed(
        "fig covariate scale", lambda: covariate_scale_tables(inst, sizes, seed)
    )
    cs_th.to_csv(tab_dir / "covariate_scale_theory.csv", index=False)
    cs_mc.to_csv(tab_dir / "covariate_scale_mc.csv", index=False)
    rn_th, rn_mc = timed("fig risk vs N", lambda: risk_vs_N_tables(inst, setting, sizes, seed))
    rn_th.to_csv(tab_dir / "risk_vs_N_theory.csv", index=False)
    rn_mc.to_csv(tab_dir / "risk_vs_N_mc.csv", index=False)
    garg, d_garg = timed("fig Garg panels", lambda: garg_tables(setting, sizes, seed))
    garg.to_csv(tab_dir / "garg.csv", index=False)

    # Figures are drawn from the saved tables, so they can be restyled without recomputing.
    def figures() -> list[Path]:
        return [
            plots.plot_shift_risk_vs_M(
                pd.read_csv(tab_dir / "risk_vs_M_theory.csv"),
                pd.read_csv(tab_dir / "risk_vs_M_mc.csv"),
                {"title": title, "N": inst.N},
                out / "shift_risk_vs_M.png",
            ),
            plots.plot_covariate_scale(
                pd.read_csv(tab_dir / "covariate_scale_theory.csv"),
                pd.read_csv(tab_dir / "covariate_scale_mc.csv"),
                {"title": f"{title}, M={M_cs}, label noise s=0.5"},
                out / "covariate_scale.png",
            ),
            plots.plot_risk_vs_N(
                pd.read_csv(tab_dir / "risk_vs_N_theory.csv"),
                pd.read_csv(tab_dir / "risk_vs_N_mc.csv"),
                {"title": f"d={inst.d}, κ(Λ)={setting.spread:g}, M={sizes.M_large}"},
                out / "risk_vs_N.png",
            ),
            plots.plot_garg_panels(
                pd.read_csv(tab_dir / "garg.csv"),
                {
                    "title": f"Garg et al. evaluations, d={d_garg}, "
                    f"LSA trained on N(0, I), N={inst.N}"
                },
                out / "garg_panels.png",
            ),
        ]

    figs = timed("figures", figures)
    timings["total"] = time.perf_counter() - t_all
    tables = {
        "checks": [c.row() for c in checks],
        "risk_vs_M_mc": mc.to_dict("records"),
        "covariate_scale_mc": cs_mc.to_dict("records"),
        "risk_vs_N_mc": rn_mc.to_dict("records"),
        "garg": garg.to_dict("records"),
        "instance": {
            "Sigma_w": inst.Sigma_w,
            "Omega_q": inst.Omega_q,
            "Omega_x": inst.Omega_x,
            "noise_std": inst.noise_std,
            "M_a": inst.M_a,
            "M_b": inst.M_b,
            "W_PV": np.asarray(inst.lsa.W_PV),
            "W_KQ": np.asarray(inst.lsa.W_KQ),
        },
        "sizes": dataclasses.asdict(sizes),
        "timings": timings,
    }
    log(f"  shift suite: {len(checks)} checks, {timings['total']:.1f} s")
    return checks, figs, tables


# ----------------------------------------------------------------------------------------------
# one named shift (`lsa shift --shift NAME`)


def single_shift_report(
    setting: Setting, name: str, Ms: tuple[int, ...], n: int, c: float = 2.0
) -> pd.DataFrame:
    """Theory and Monte Carlo risk of the trained LSA and of OLS for one named shift
    (`simulations.distributions.named_shift`) at the test lengths `Ms`.

    The matrices of the shift are those of the checks (`make_instance`); `scale-x`/`scale-y`
    use `c`, `noisy` uses `noise_std = 0.7`. Theory is `theory.shift_risk` for the LSA and, where
    it applies, `theory.ols_risk` (M >= d + 2; 0 without noise once M >= d) for OLS.
    """
    inst = make_instance(setting)
    L, d = inst.Lambda, inst.d
    all_params: dict[str, dict[str, Any]] = {
        "none": {},
        "task": {"Sigma_w": inst.Sigma_w},
        "task-sphere": {"Sigma_w": inst.Sigma_w},
        "noisy": {"noise_std": inst.noise_std},
        "query": {"Omega": inst.Omega_q},
        "query-rademacher": {"Omega": inst.Omega_q},
        "covariate": {"Omega": inst.Omega_x},
        "scale-x": {"c": c},
        "scale-y": {"c": c},
    }
    params = all_params.get(name, {})
    dist = named_shift(name, L, **params)  # raises ValueError for an unknown name
    args = dist.shift_risk_args()
    rows = []
    for i, M in enumerate(Ms):
        est = mc_risk({"LSA": inst.lsa, "OLS": OLS()}, dist, M, n, _key(setting.seed, 900 + i))
        s2 = args["s2"]
        if M >= d + 2:
            ols = theory.ols_risk(s2, args["Omega"], args["Lambda_x"], M)
            ols += s2 if args["noisy_target"] else 0.0
        elif M >= d and s2 == 0.0:
            ols = 0.0
        else:
            ols = float("nan")
        lsa_th = theory.shift_risk(inst.Ginv, **args, M=M)
        for pname, th in (("LSA", lsa_th), ("OLS", ols)):
            e = est[pname]
            rows.append(
                {
                    "shift": name,
                    "M": M,
                    "predictor": pname,
                    "theory": th,
                    "mc_mean": e.mean,
                    "mc_se": e.se,
                    # theory 0 (OLS interpolates): the MC is round-off, a z-score means nothing
                    "z": e.z(th) if np.isfinite(th) and th != 0.0 else float("nan"),
                    "n": e.n,
                }
            )
    return pd.DataFrame(rows)
