"""The tables behind the shift figures (`simulations.plots.figures` draws them from
`out/shift/*.csv`).

- `risk_vs_M_tables`: `shift_risk_vs_M.png`, the trained LSA and baselines under four laws;
- `covariate_scale_tables`: `covariate_scale.png`, risk against the covariate scale `c`;
- `risk_vs_N_tables`: `risk_vs_N.png`, risk of layers trained at several N;
- `garg_tables`: `garg_panels.png`, Garg et al.'s evaluation catalogue (theory.md §12).

Every Monte Carlo mean and standard error comes from `simulations.icl.montecarlo` (`mc_risk`, or
`mc_means` for Garg's prefix errors). Prompt lengths of a figure are prefixes of one prompt
(`Prefix`), so they share a compiled kernel and common random numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float, PRNGKeyArray

import theory

from ...icl.distributions import TestDistribution, garg_catalogue, named_shift
from ...icl.montecarlo import MCEstimate, mc_means, mc_risk, one_at_a_time
from ...icl.predictors import GD, OLS, Averaging, Predictor, Ridge
from .instance import Prefix, ShiftInstance, Sizes, Tag, gaussian_law, train_lsa

__all__ = [
    "covariate_scale_tables",
    "garg_tables",
    "risk_vs_M_tables",
    "risk_vs_N_tables",
    "shift_panels",
]

_F64 = jnp.float64


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


def risk_vs_M_tables(inst: ShiftInstance, sizes: Sizes) -> tuple[pd.DataFrame, pd.DataFrame]:
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
        est = mc_risk(preds, dist, max(Ms), sizes.fig_n, inst.key(Tag.RISK_VS_M + i))
        mc_rows += _records(panel, est)
    return pd.DataFrame(theory_rows), pd.DataFrame(mc_rows)


def covariate_scale_tables(
    inst: ShiftInstance, sizes: Sizes, s: float = 0.5
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
        est = mc_risk(preds, dist, M, sizes.fig_n, inst.key(Tag.COVARIATE_SCALE + j))
        for name, e in est.items():
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


def risk_vs_N_tables(inst: ShiftInstance, sizes: Sizes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Risk of the trained layer at a fixed long test prompt against the training length N:
    exact R(N, M), the M -> infinity floor `theory.risk_floor` (O(1/N^2)) and the N -> infinity
    limit (d+1) tr Lambda / M (theory.md §6, §7.3), with Monte Carlo on layers trained by
    `gradient_flow` at several N (the setting with `N` changed: same Lambda and Theta)."""
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
    preds: dict[str, Predictor] = {
        str(N): inst.lsa if N == inst.N else train_lsa(inst.setting.replace(N=N))
        for N in sizes.N_values
    }
    est = mc_risk(preds, named_shift("none", L), M, sizes.N_n, inst.key(Tag.RISK_VS_N))
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


# ----------------------------------------------------------------------------------------------
# Garg et al.'s catalogue


@eqx.filter_jit
def _prefix_sq_errors(
    pred: Predictor,
    X: Array,
    y: Array,
    x_q: Array,
    y_q: Array,
    Ms: tuple[int, ...],
) -> Float[Array, "B K"]:
    """Squared errors of one predictor on the prefixes of lengths `Ms` of the prompts, one
    length after the other (`montecarlo.one_at_a_time`: side-by-side batched SVDs can deadlock
    XLA's CPU runtime); `(B, len(Ms))`."""
    idx = jnp.arange(X.shape[1])

    def err_at(m: int) -> Callable[..., Array]:
        keep = (idx < m).astype(_F64)
        return lambda X, y, x_q, y_q: (pred._predict(X, y, x_q, keep) - y_q) ** 2

    return one_at_a_time([err_at(m) for m in Ms], X, y, x_q, y_q).T


def _garg_columns(name: str, dist: TestDistribution, Ms: tuple[int, ...], d: int) -> list[int]:
    """The prefix lengths evaluated for one evaluation: all of `Ms` when the query is independent
    of the prompt; else those below `d` (and, but for the orthogonal query, the largest)."""
    if dist.query.independent:
        return list(Ms)
    lengths = [m for m in Ms if m < d]
    if name != "orthogonal_train_test":
        lengths.append(max(Ms))
    return sorted(set(lengths))


def _garg_errors(
    key: PRNGKeyArray,
    B: int,
    name: str,
    dist: TestDistribution,
    preds: Sequence[Predictor],
    Ms: tuple[int, ...],
) -> Array:
    """`(B, len(preds) * len(lengths))` squared errors (predictor-major) of one Garg evaluation
    on `B` prompts of length `max(Ms)` and their prefixes (`_garg_columns`).

    A prefix of a prompt is a prompt, and a query independent of the prompt stays valid. When the
    query looks at the prompt (`orthogonal_train_test`, `overlapping_train_test`), it is redrawn
    from the query law for each prefix length (both evaluations are noiseless, so the target is
    `<w, x_q>`); the orthogonal one is drawn at length `d - 1` and padded.
    """
    d, M_max = dist.d, max(Ms)
    k_prompt, k_query = jax.random.split(key)
    if dist.query.independent:
        P = dist._sample(k_prompt, B, M_max)
        return jnp.concatenate([_prefix_sq_errors(p, P.X, P.y, P.x_q, P.y_q, Ms) for p in preds], 1)
    assert float(np.asarray(dist.noise_std)) == 0.0 and not dist.noisy_target
    P = dist._sample(k_prompt, B, M_max if name != "orthogonal_train_test" else d - 1)
    if P.X.shape[1] < M_max:  # pad (the padding is never inside a kept prefix)
        pad = M_max - P.X.shape[1]
        P = P._replace(
            X=jnp.pad(P.X, ((0, 0), (0, pad), (0, 0))), y=jnp.pad(P.y, ((0, 0), (0, pad)))
        )
    cols: list[list[Array]] = [[] for _ in preds]
    for m in _garg_columns(name, dist, Ms, d):
        x_q = dist.query.sample(jax.random.fold_in(k_query, m), P.X[:, :m], dist.covariates)
        y_q = jnp.einsum("nd,nd->n", x_q, P.w)
        for i, p in enumerate(preds):
            cols[i].append(_prefix_sq_errors(p, P.X, P.y, x_q, y_q, (m,)))
    return jnp.concatenate([c for col in cols for c in col], axis=1)


def garg_tables(inst: ShiftInstance, sizes: Sizes) -> tuple[pd.DataFrame, int]:
    """Risk (divided by d, as in Garg et al.'s plots) of the LSA trained on Garg's law
    `x ~ N(0, I_d)`, `w ~ N(0, I_d)` (by `gradient_flow`, d and N of the setting) and of OLS, for
    every evaluation of `garg_catalogue` (theory.md §12), against the number of in-context
    examples M (`_garg_errors`).

    The prompts are drawn outside `jit` (`mc_means(..., jit=False)`), so their per-shape
    operations are compiled once for all evaluations; the predictions are jitted per predictor.
    """
    setting = inst.setting
    d = setting.d
    lsa_iso = train_lsa(setting.replace(eigenvalues=(1.0,) * d, trace=None, rotate=False))
    preds, names = (lsa_iso, OLS()), ("LSA", "OLS")
    Ms = tuple(sorted(set(sizes.garg_M)))
    catalogue = garg_catalogue(d, inst.key(Tag.GARG_BASES))
    rows = []
    for i, (name, dist) in enumerate(catalogue.items()):
        lengths = _garg_columns(name, dist, Ms, d)
        key = jax.random.fold_in(inst.key(Tag.GARG), i)
        n = sizes.garg_n
        est = mc_means(_garg_errors, key, n, name, dist, preds, Ms, batch_size=n, jit=False)
        for j, e in enumerate(est):
            rows.append(
                {
                    "evaluation": name,
                    "predictor": names[j // len(lengths)],
                    "M": lengths[j % len(lengths)],
                    "mean": e.mean / d,
                    "se": e.se / d,
                    "n": e.n,
                    "d": d,
                }
            )
    return pd.DataFrame(rows), d
