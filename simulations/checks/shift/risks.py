"""Checks s1–s12: closed-form test risks under distribution shift against Monte Carlo.

- s1–s9: the trained layer under task, query and covariate shift, covariate scaling and label
  noise (theory.md §8.5), by Monte Carlo on the full LSA map at the trained weights
  (theory.md §14 row 19);
- s10–s12: OLS and min-norm OLS (theory.md §8.7) with explicit least-squares solves (§14 row 21).

Every row is a z-check (`z_check`): `z = (MC mean - closed form) / SE`, passed if
`|z| <= sizes.z_max`; `details` records the z-scores that plausible convention errors in the
closed form would give (`z_if_rho_N`, `z_if_Gamma_M`, ...), which shows the power of the sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from jaxtyping import PRNGKeyArray

import theory

from ...icl.distributions import TestDistribution, named_shift
from ...icl.montecarlo import MCEstimate, mc_risk, two_sample_z
from ...icl.predictors import OLS, Predictor
from ..base import CheckResult
from .instance import Prefix, ShiftInstance, Sizes, gaussian_law

__all__ = [
    "check_ols",
    "check_shift_risks",
    "lsa_mutations",
    "lsa_risks",
    "mc_full_map",
    "z_check",
]


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


@dataclasses.dataclass(frozen=True)
class _RiskRow:
    """One row of s1–s9: the law, the test length it is checked at and its closed form."""

    cid: str
    statement: str
    reference: str
    dist: TestDistribution
    M: int
    closed: Callable[[int], float]
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _task_query_rows(inst: ShiftInstance) -> list[_RiskRow]:
    """s1–s4: task shift (Gaussian and sphere) and query shift (Gaussian and Rademacher)."""
    L, N, Sw, Oq = inst.Lambda, inst.N, inst.Sigma_w, inst.Omega_q
    I = np.eye(inst.d)
    return [
        _RiskRow(
            "s1",
            "task shift w ~ N(0, Sigma_w), Sigma_w non-diagonal",
            "theory.md §8.5 (task shift)",
            gaussian_law(L, L, Sw),
            inst.M_a,
            lambda m: theory.task_shift_risk(L, N, m, Sw),
        ),
        _RiskRow(
            "s2",
            "task shift, w = Sigma_w^1/2 sqrt(d) u (sphere): same risk",
            "theory.md §8.5 (only E[w w^T] matters)",
            named_shift("task-sphere", L, Sigma_w=Sw),
            inst.M_a,
            lambda m: theory.task_shift_risk(L, N, m, Sw),
        ),
        _RiskRow(
            "s3",
            "query shift x_q ~ N(0, Omega), Omega != Lambda",
            "theory.md §8.5 (query shift), ZFB eq. 4.8",
            gaussian_law(L, Oq, I),
            inst.M_b,
            lambda m: theory.query_shift_risk(L, N, m, Oq),
        ),
        _RiskRow(
            "s4",
            "query shift x_q = Omega^1/2 r, r Rademacher: same risk",
            "theory.md §8.5 (only E[x_q x_q^T] matters)",
            named_shift("query-rademacher", L, Omega=Oq),
            inst.M_b,
            lambda m: theory.query_shift_risk(L, N, m, Oq),
        ),
    ]


def _covariate_noise_rows(inst: ShiftInstance) -> list[_RiskRow]:
    """s5–s9: covariate scaling c = 2 and 1/2, a general covariate shift, label noise with a
    clean and with a noisy target."""
    L, N, Ox, s = inst.Lambda, inst.N, inst.Omega_x, inst.noise_std
    I = np.eye(inst.d)
    return [
        _RiskRow(
            "s5",
            "covariate scaling c = 2 (prompt and query)",
            "theory.md §8.5 (covariate scaling), ZFB §4.2",
            gaussian_law(4.0 * L, 4.0 * L, I),
            inst.M_b,
            lambda m: theory.covariate_scaling_risk(L, N, m, 2.0),
            {"limit_MN_inf": theory.covariate_scaling_limit(L, 2.0)},
        ),
        _RiskRow(
            "s6",
            "covariate scaling c = 1/2 (prompt and query)",
            "theory.md §8.5 (covariate scaling)",
            gaussian_law(0.25 * L, 0.25 * L, I),
            inst.M_a,
            lambda m: theory.covariate_scaling_risk(L, N, m, 0.5),
            {"limit_MN_inf": theory.covariate_scaling_limit(L, 0.5)},
        ),
        _RiskRow(
            "s7",
            "covariate shift x ~ N(0, Omega), general Omega",
            "theory.md §8.5 (covariate shift)",
            gaussian_law(Ox, Ox, I),
            inst.M_a,
            lambda m: theory.covariate_shift_risk(L, N, m, Ox),
        ),
        _RiskRow(
            "s8",
            f"label noise s = {s:g}, clean target w^T x_q",
            "theory.md §8.5 (noise adds s^2 tr(G^-2 L^2)/M)",
            gaussian_law(L, L, I, noise_std=s),
            inst.M_b,
            lambda m: theory.task_shift_risk(L, N, m, I, s2=s * s),
        ),
        _RiskRow(
            "s9",
            f"label noise s = {s:g}, noisy target y_q (+ s^2)",
            "theory.md §8.3 (+ s^2 for a noisy target)",
            named_shift("noisy", L, noise_std=s, noisy_target=True),
            inst.M_a,
            lambda m: theory.task_shift_risk(L, N, m, I, s2=s * s, noisy_target=True),
        ),
    ]


def _risk_row(inst: ShiftInstance, sizes: Sizes, row: _RiskRow) -> tuple[CheckResult, MCEstimate]:
    """Monte Carlo of one row at both test lengths; checked at `row.M`, the other length is
    recorded as `details["z_at_M_other"]`."""
    est = lsa_risks(inst, row.dist, sizes.n, inst.key(int(row.cid[1:])), sizes.batch)
    M = row.M
    other = inst.M_b if M == inst.M_a else inst.M_a
    more = {"M": M, "z_at_M_other": est[other].z(row.closed(other)), "M_other": other}
    result = z_check(
        row.cid,
        f"{row.statement}, M = {M}",
        row.reference,
        est[M],
        row.closed(M),
        sizes.z_max,
        lsa_mutations(inst, row.dist.shift_risk_args(), M),
        more | dict(row.extra),
    )
    return result, est[M]


def check_shift_risks(inst: ShiftInstance, sizes: Sizes) -> list[CheckResult]:
    """s1–s9: every closed-form shift risk of the trained layer (theory.md §8.5) against Monte
    Carlo on the full LSA map at the trained weights (theory.md §14 row 19).

    Cross-checks recorded in `details`: the sphere and Rademacher laws against their Gaussian
    counterparts (two-sample z), and the z-scores of the noise rows had the noise been ignored.
    """
    L, N, s = inst.Lambda, inst.N, inst.noise_std
    I = np.eye(inst.d)
    rows: dict[str, CheckResult] = {}
    ests: dict[str, MCEstimate] = {}
    for spec in _task_query_rows(inst) + _covariate_noise_rows(inst):
        rows[spec.cid], ests[spec.cid] = _risk_row(inst, sizes, spec)
    rows["s2"].details["z_sphere_minus_gaussian"] = two_sample_z(ests["s2"], ests["s1"])
    rows["s4"].details["z_rademacher_minus_gaussian"] = two_sample_z(ests["s4"], ests["s3"])
    rows["s8"].details["z_if_noise_ignored"] = ests["s8"].z(
        theory.task_shift_risk(L, N, inst.M_b, I)
    )
    rows["s9"].details["z_if_clean_target_form"] = ests["s9"].z(
        theory.task_shift_risk(L, N, inst.M_a, I, s2=s * s)
    )
    return list(rows.values())


# ----------------------------------------------------------------------------------------------
# s10-s12: least-squares baselines


def check_ols(inst: ShiftInstance, sizes: Sizes) -> list[CheckResult]:
    """s10–s12: OLS closed forms (theory.md §8.7) against Monte Carlo with explicit
    least-squares solves (`OLS()`: min-norm solution by SVD), theory.md §14 row 21."""
    L, s, d = inst.Lambda, inst.noise_std, inst.d
    I = np.eye(d)
    M = max(inst.M_a, d + 4)  # M >= d + 4: the squared error has a finite variance
    n, B, z_max = sizes.n, sizes.batch, sizes.z_max
    ols = {"OLS": OLS()}
    R = theory.ols_risk(s * s, L, L, M)
    est = mc_full_map(ols, gaussian_law(L, L, I, noise_std=s), M, n, inst.key(10), batch=B)
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
    est = mc_full_map(ols, dist, M, n, inst.key(11), batch=B)
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
    est = mc_full_map(ols, dist8, M8, n, inst.key(12), batch=B)
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
