"""Checks d1-d6 and the depth/noise transitions of deep LSA stacks (docs/deep.md §4-§5; issue 10
parts 3-4): the linear versions of Akyürek et al. (ICLR 2023) Figures 2-3.

Checks (each with a mutant that must fail, recorded in the details):

- d1: the masked sparse stack at step sizes a equals L steps of GD with those steps, per prompt,
  through the full map (`lsa.deep.deep_predict`) and through the Gram route of the predictor,
  against an independent numpy loop, to 1e-12 (Ahn et al. Lemma 1). Mutant: the unmasked
  ("zfb") stack, which is not GD for L >= 2.
- d2: the Gram route of `lsa.deep_empirical` (value and gradient of the empirical loss) equals
  autodiff of the literal map to 1e-12 relative, random full weights, both conventions, L = 1..3.
  Mutant: the "zfb" readout on "ahn" statistics (the query term dropped).
- d3: the scalar-family gradient flow (`lsa.deep_flow.scalar_family_flow`) reaches
  `theory.deep.optimal_step_sizes` up to a permutation, to 1e-8, at d = 8, n = 40, L = 1..4.
  Mutant: the optimum for N + 1.
- d4: Monte Carlo risk of the trained (optimal) stack through `mc_risk` on full prompts against
  `theory.deep.step_sizes_risk`, |z| <= 4, L = 1..4. Mutant: the closed form at N + 1.
- d5: the spectral formula of the SPD (used for the transition tables) against `mc_spd` of the
  wrapped stack and `Ridge(1)` on full prompts, |z| <= 4 (two independent estimates).

Transitions (measurements, "finding" rows; not pass criteria). For isotropic x, w ~ N(0, tau^2 I)
and label noise sigma^2, every predictor here is spectral, `y_hat = x_q^T phi(S) h` with
`S = X^T X / N`, `h = X^T y / N`: the stack with steps a has `phi = (1 - q(s)) / s`,
`q(s) = prod_l (1 - a_l s)`; Ridge(lambda) (sum of squares) `1 / (s + lambda / N)`; OLS `1 / s`;
GD(alpha) one step `2 alpha N`. With `E[h h^T | S] = tau^2 S^2 + (sigma^2 / N) S` and an isotropic
query,

    SPD(phi_1, phi_2) = ILWD = E sum_k (phi_1 - phi_2)(s_k)^2 (tau^2 s_k^2 + sigma^2 s_k / N),
    risk(phi) = E sum_k [tau^2 (1 - s_k phi(s_k))^2 + sigma^2 s_k phi(s_k)^2 / N]   (clean target),

averaged over the Wishart eigenvalues s_k by `mc_means` (the one engine; d5 checks the formula
against full prompts). The trained stacks: for isotropic noiseless data the scalar-family optimum
`optimal_step_sizes` is the exact trained limit of the scalar flow (d3); with label noise the
scalar-family optimum minimises `tau^2 sum c_i c_j m_{i+j} + (sigma^2/N) sum_{i,j>=1} c_i c_j
m_{i+j-1}` over the coefficients c of q (c_0 = 1): a linear solve in the exact moments
(`theory.deep.noisy_optimal_step_sizes`; L = 1 gives N / (N + d + 1 + sigma^2/tau^2), the
noisy-training minimiser of theory.md §8.6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array

import lsa
from lsa.deep import deep_predict, scalar_steps, sparse_weights
from lsa.deep_empirical import (
    deep_empirical_value_and_grad,
    deep_literal_loss,
    deep_stats,
)
from lsa.deep_flow import scalar_family_flow
from lsa.flow import FlowResult
from theory.deep import (
    noisy_optimal_step_sizes,
    optimal_looped_step,
    optimal_step_sizes,
    step_sizes_risk,
)

from ..icl.deep_predictor import scalar_stack
from ..icl.montecarlo import mc_means, mc_risk, mc_spd, two_sample_z
from ..icl.predictors import Ridge
from ..icl.prompt_law import TestDistribution
from ..plots.deep import plot_noise_heatmap, plot_spd_depth
from .base import CheckResult
from .deep_flows import run_flow_checks

__all__ = ["NOISES", "run_suite", "spectral_values"]

#: Label-noise levels (sigma / tau)^2 of Akyürek et al. Figure 2.
NOISES = (0.0, 1 / 16, 1 / 9, 1 / 4, 4 / 9)
D, N_CTX, DEPTHS = 8, 40, (1, 2, 3, 4)
LAMBDAS = np.geomspace(1e-3, 1e2, 51)


def _coeffs(a: tuple) -> np.ndarray:
    """Coefficients p_0..p_{L-1} of (1 - prod_l (1 - a_l s)) / s."""
    c = np.zeros(len(a) + 1)
    c[0] = 1.0
    for al in a:
        c[1:] = c[1:] - al * c[:-1]
    return -c[1:]


def spectral_values(
    key: Array, B: int, steps: tuple, lambdas: tuple, noise_list: tuple, gd_alpha: float
) -> Array:
    """Per-prompt conditional SPDs and risks given the Wishart eigenvalues (module docstring),
    for `mc_means`. Columns, for each noise nu (index i) and each stack `steps[i][l]`: SPD to
    Ridge(lambda) for every lambda, to OLS, to GD(gd_alpha), the stack's risk; then per noise the
    risks of OLS and of Ridge(lambda) for every lambda. Vectorised over stacks and lambdas (one
    small compiled kernel)."""
    X = jax.random.normal(key, (B, N_CTX, D), jnp.float64)
    s = jnp.linalg.eigvalsh(jnp.einsum("bni,bnj->bij", X, X) / N_CTX)[..., None]  # (B, d, 1)
    flat = [(i, a) for i, row in enumerate(steps) for a in row]
    Lmax = max(len(a) for _, a in flat)
    P = np.zeros((Lmax, len(flat)))
    for k, (_, a) in enumerate(flat):
        P[: len(a), k] = _coeffs(a)
    nus = np.array([noise_list[i] for i, _ in flat])
    ph = sum(P[j] * s**j for j in range(Lmax))  # (B, d, S)
    wgt = s**2 + nus * s / N_CTX  # (B, d, S)
    lam = jnp.asarray(lambdas)
    refs = jnp.concatenate(
        [1 / (s + lam / N_CTX), 1 / s, jnp.full_like(s, 2 * gd_alpha * N_CTX)], axis=-1
    )  # (B, d, R)
    spd = jnp.sum((ph[..., :, None] - refs[..., None, :]) ** 2 * wgt[..., None], axis=1)
    risk = jnp.sum((1 - s * ph) ** 2 + nus * s * ph**2 / N_CTX, axis=1)  # (B, S)
    per_stack = jnp.concatenate([spd, risk[..., None]], axis=-1)  # (B, S, R + 1)
    nu_all = jnp.asarray(noise_list)[None, None, :]  # (1, 1, V)
    ref_risk = []
    for phi in [1 / s] + [1 / (s + lm / N_CTX) for lm in lambdas]:
        ref_risk.append(jnp.sum((1 - s * phi) ** 2 + nu_all * s * phi**2 / N_CTX, axis=1))
    ref_risk_arr = jnp.stack(ref_risk, axis=-1)  # (B, V, 1 + n_lam)
    cols = []
    k = 0
    for i, row in enumerate(steps):
        cols.append(per_stack[:, k : k + len(row)].reshape(B, -1))
        cols.append(ref_risk_arr[:, i])
        k += len(row)
    return jnp.concatenate(cols, axis=-1)


def _best_lambda(lams: np.ndarray, spd: np.ndarray) -> float:
    """argmin over the grid, refined by a parabola through the three points around it (log lam)."""
    i = int(np.argmin(spd))
    if 0 < i < len(lams) - 1:
        x = np.log(lams[i - 1 : i + 2])
        y = spd[i - 1 : i + 2]
        A = np.polyfit(x, y, 2)
        if A[0] > 0:
            return float(np.exp(-A[1] / (2 * A[0])))
    return float(lams[i])


# ----------------------------------------------------------------------------------------------
# checks


def _gd_numpy(X: np.ndarray, y: np.ndarray, a: np.ndarray) -> np.ndarray:
    B, n, d = X.shape
    w = np.zeros((B, d))
    for al in a:
        for b in range(B):
            w[b] = w[b] - al * X[b].T @ (X[b] @ w[b] - y[b]) / n
    return w


def check_gd_identity(key: Array) -> CheckResult:
    """d1 (module docstring)."""
    errs, mut = [], []
    for L in DEPTHS:
        P = lsa.PromptDistribution(np.eye(D)).sample(jax.random.fold_in(key, L), 64, N_CTX)
        a = optimal_step_sizes(D, N_CTX, L)
        ref = np.einsum("bd,bd->b", _gd_numpy(np.asarray(P.X), np.asarray(P.y), a), P.x_q)
        Wp, Wk = sparse_weights(scalar_steps(a, D))
        E = lsa.embed(P.X, P.y, P.x_q)
        lit = np.asarray(deep_predict(E, Wp, Wk, "ahn"))
        gram = np.asarray(scalar_stack(a, D)(P.X, P.y, P.x_q))
        scale = np.max(np.abs(ref))
        errs.append(max(np.max(np.abs(lit - ref)), np.max(np.abs(gram - ref))) / scale)
        mut.append(float(np.max(np.abs(np.asarray(deep_predict(E, Wp, Wk, "zfb")) + ref)) / scale))
    err = float(max(errs))
    return CheckResult(
        "d1", "masked sparse stack = L steps of GD per prompt (full map and Gram route), L = 1..4",
        "Ahn et al. 2023 Lemma 1", 0.0, err, err, 1e-12, "rel", err <= 1e-12,
        {"per_L": errs, "mutant_zfb_error": mut, "mutant_fails_L>=2": bool(min(mut[1:]) > 1e-6)},
    )  # fmt: skip


_literal_vg = jax.jit(jax.value_and_grad(deep_literal_loss, argnums=(0, 1)), static_argnums=6)


def check_gram_route(key: Array) -> CheckResult:
    """d2 (module docstring)."""
    errs, mut = [], []
    for conv in ("zfb", "ahn"):
        for L in (1, 2, 3):
            k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 10 * L + (conv == "ahn")), 3)
            P = lsa.PromptDistribution(np.eye(D)).sample(k1, 512, N_CTX)
            Wp = 0.1 * jax.random.normal(k2, (L, D + 1, D + 1))
            Wk = 0.1 * jax.random.normal(k3, (L, D + 1, D + 1))
            st = deep_stats(P.X, P.y, P.x_q, P.y_q, conv)
            v, g = deep_empirical_value_and_grad(Wp, Wk, st)
            v2, g2 = _literal_vg(Wp, Wk, P.X, P.y, P.x_q, P.y_q, conv)
            e = abs(float(v - v2)) / abs(float(v2))
            for x, z in zip(g, g2, strict=True):
                e = max(e, float(jnp.max(jnp.abs(x - z)) / jnp.max(jnp.abs(z))))
            errs.append(e)
            if conv == "zfb":
                wrong = deep_stats(P.X, P.y, P.x_q, P.y_q, "ahn")
                vw, _ = deep_empirical_value_and_grad(Wp, Wk, wrong)
                mut.append(abs(float(vw - v2)) / abs(float(v2)))
    err = float(max(errs))
    return CheckResult(
        "d2", "Gram route = literal map: empirical loss and gradient, both conventions, L = 1..3",
        "docs/deep.md §4 (DERIVED)", 0.0, err, err, 1e-12, "rel", err <= 1e-12,
        {"per_case": errs, "mutant_query_term_dropped": mut},
    )  # fmt: skip


def check_scalar_flow(rng: np.random.Generator) -> tuple[CheckResult, list[dict[str, Any]]]:
    """d3 (module docstring)."""
    rows = []
    for L in DEPTHS:
        a0 = np.sort(rng.uniform(0.05, 0.6, L))
        res = scalar_family_flow(a0, D, N_CTX)
        a_star = optimal_step_sizes(D, N_CTX, L)
        err = float(np.max(np.abs(np.sort(res.a) - a_star)))
        mut = float(np.max(np.abs(np.sort(res.a) - optimal_step_sizes(D, N_CTX + 1, L))))
        rows.append({"L": L, "a0": a0.tolist(), "a_flow": np.sort(res.a).tolist(),
                     "a_star": a_star.tolist(), "error": err, "mutant_N+1_error": mut,
                     "steps": res.stats["num_steps"], "t_end": float(res.ts[-1])})  # fmt: skip
    err = max(r["error"] for r in rows)
    return CheckResult(
        "d3", "scalar-family flow reaches optimal_step_sizes (up to a permutation), L = 1..4",
        "issue 10 §3; theory.deep (DERIVED)", 0.0, err, err, 1e-8, "abs", err <= 1e-8,
        {"rows": rows, "mutant_min_error": min(r["mutant_N+1_error"] for r in rows)},
    ), rows  # fmt: skip


def check_mc_risk(key: Array, n_mc: int) -> tuple[list[CheckResult], list[dict[str, Any]]]:
    """d4 (module docstring)."""
    dist = TestDistribution.from_prompt_distribution(lsa.PromptDistribution(np.eye(D)))
    preds = {f"L{L}": scalar_stack(optimal_step_sizes(D, N_CTX, L), D) for L in DEPTHS}
    est = mc_risk(preds, dist, N_CTX, n_mc, jax.random.fold_in(key, 4), batch_size=10_000)
    out, rows = [], []
    for L in DEPTHS:
        e = est[f"L{L}"]
        a = optimal_step_sizes(D, N_CTX, L)
        cf = step_sizes_risk(a, D, N_CTX)
        z = e.z(cf)
        zm = e.z(step_sizes_risk(a, D, N_CTX + 1))
        rows.append({"L": L, "mc": e.mean, "se": e.se, "closed_form": cf, "z": z, "z_mutant": zm})
        out.append(CheckResult(
            f"d4.L{L}", f"MC risk of the trained {L}-layer stack (full prompts) = step_sizes_risk",
            "theory.deep.step_sizes_risk (DERIVED)", cf, e.mean, z, 4.0, "z", abs(z) <= 4,
            {"se": e.se, "z_if_N+1": zm, "n": e.n},
        ))  # fmt: skip
    return out, rows


def check_spectral_spd(key: Array, n_mc: int) -> CheckResult:
    """d5 (module docstring): the L = 3 stack against Ridge(1), noiseless."""
    L, lam = 3, 1.0
    a = optimal_step_sizes(D, N_CTX, L)
    dist = TestDistribution.from_prompt_distribution(lsa.PromptDistribution(np.eye(D)))
    full = mc_spd(scalar_stack(a, D), Ridge(lam), dist, N_CTX, n_mc, jax.random.fold_in(key, 5),
                  batch_size=10_000)  # fmt: skip
    (spec,) = mc_means(_spd_one, jax.random.fold_in(key, 6), n_mc, tuple(a.tolist()), lam,
                       batch_size=10_000)  # fmt: skip
    z = two_sample_z(full, spec)
    return CheckResult(
        "d5", "spectral SPD formula = mc_spd on full prompts (L = 3 stack vs Ridge(1))",
        "AKY eq. 15; module docstring (DERIVED)", spec.mean, full.mean, z, 4.0, "z", abs(z) <= 4,
        {"se_full": full.se, "se_spectral": spec.se},
    )  # fmt: skip


def _spd_one(key: Array, B: int, a: tuple, lam: float) -> Array:
    return spectral_values(key, B, ((a,),), (lam,), (0.0,), 1.0)[:, 0]


# ----------------------------------------------------------------------------------------------
# transitions


def transitions(key: Array, n_mc: int) -> dict[str, pd.DataFrame]:
    """The SPD/risk tables of the depth and noise transitions (module docstring)."""
    steps = tuple(
        tuple(tuple(noisy_optimal_step_sizes(D, N_CTX, L, nu).tolist()) for L in DEPTHS)
        for nu in NOISES
    )
    lams = tuple(LAMBDAS.tolist()) + tuple(nu for nu in NOISES if nu > 0)
    alpha = 1.0 / (2 * (N_CTX + D + 1))  # Akyürek's GD(alpha) = the one-layer optimum
    est = mc_means(spectral_values, key, n_mc, steps, lams, NOISES, alpha, batch_size=5_000)
    mean = np.array([e.mean for e in est]) / D
    se = np.array([e.se for e in est]) / D
    nl = len(lams)
    per_stack = nl + 3
    block = len(DEPTHS) * per_stack + 1 + nl
    spd_rows, fit_rows, risk_rows, heat_rows = [], [], [], []
    for i, nu in enumerate(NOISES):
        base = i * block
        ols_risk = mean[base + len(DEPTHS) * per_stack]
        ridge_risk = mean[base + len(DEPTHS) * per_stack + 1 : base + block]
        for j, L in enumerate(DEPTHS):
            o = base + j * per_stack
            spd_r = mean[o : o + nl]
            grid = spd_r[: len(LAMBDAS)]
            best = _best_lambda(LAMBDAS, grid)
            fit_rows.append({"noise": nu, "L": L, "steps": list(steps[i][j]),
                             "best_lambda": best, "bayes_lambda": nu,
                             "spd_at_best": float(np.min(grid)),
                             "spd_ols": mean[o + nl], "spd_gd": mean[o + nl + 1]})  # fmt: skip
            risk_rows.append({"noise": nu, "L": L, "risk_stack": mean[o + nl + 2],
                              "se": se[o + nl + 2], "risk_ols": ols_risk,
                              "risk_bayes_ridge": float(ridge_risk[len(LAMBDAS) + i - 1])
                              if nu > 0 else ols_risk})  # fmt: skip
            if nu == 0:
                for ref, k in (("GD(α=1/2(n+d+1))", o + nl + 1), ("Ridge(λ=1)", None),
                               ("OLS", o + nl)):  # fmt: skip
                    if k is None:
                        kk = o + int(np.argmin(np.abs(np.asarray(LAMBDAS) - 1.0)))
                        spd_rows.append({"L": L, "reference": ref, "spd": mean[kk], "se": se[kk],
                                         "lambda": float(LAMBDAS[kk - o])})  # fmt: skip
                    else:
                        spd_rows.append({"L": L, "reference": ref, "spd": mean[k], "se": se[k]})
            for i2, nu2 in enumerate(NOISES):  # Bayes ridge of every noise level
                k = o + (len(LAMBDAS) + i2 - 1 if nu2 > 0 else nl)  # nu2 = 0: OLS
                heat_rows.append({"L": L, "noise": nu, "bayes_noise": nu2, "spd": mean[k],
                                  "se": se[k]})  # fmt: skip
    # L-step GD with the best constant step (the looped optimum), noiseless
    for r in risk_rows:
        if r["noise"] == 0:
            a_loop = optimal_looped_step(D, N_CTX, r["L"])
            r["risk_gd_L_steps"] = step_sizes_risk([a_loop] * r["L"], D, N_CTX) / D
            r["risk_stack_closed_form"] = step_sizes_risk(
                optimal_step_sizes(D, N_CTX, r["L"]), D, N_CTX) / D  # fmt: skip
    return {
        "spd_depth": pd.DataFrame(spd_rows),
        "ridge_fit": pd.DataFrame(fit_rows),
        "risk_depth": pd.DataFrame(risk_rows),
        "noise_heatmap": pd.DataFrame(heat_rows),
    }


def run_suite(
    setting: lsa.Setting,
    out: Path,
    quick: bool = False,
    log: Callable[[str], None] = print,
    *,
    flow: FlowResult | None = None,
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Checks d1-d5 and the transition tables and figures (module docstring) at d = 8, n = 40;
    tables in `out/deep/*.csv`, figures `deep_spd_depth.png`, `deep_noise_heatmap.png`. The
    setting's seed fixes the keys; its d and N are not used (the transitions are at Akyürek's
    d = 8, n = 40). `flow` is accepted for the suite interface."""
    lsa.require_x64("the deep-stack checks (simulations.checks.deep)")
    t0 = time.perf_counter()
    out = Path(out)
    tab_dir = out / "deep"
    tab_dir.mkdir(parents=True, exist_ok=True)
    key = jax.random.PRNGKey(int(getattr(setting, "seed", 0)))
    rng = np.random.default_rng(int(getattr(setting, "seed", 0)))
    n_mc = 20_000 if quick else 200_000
    n_tr = 10_000 if quick else 100_000
    timings: dict[str, float] = {}
    checks = [check_gd_identity(jax.random.fold_in(key, 1))]
    checks.append(check_gram_route(jax.random.fold_in(key, 2)))
    timings["d1_d2"] = time.perf_counter() - t0
    c3, rows3 = check_scalar_flow(rng)
    checks.append(c3)
    pd.DataFrame(rows3).to_csv(tab_dir / "scalar_flow.csv", index=False)
    timings["d3"] = time.perf_counter() - t0 - sum(timings.values())
    c4, rows4 = check_mc_risk(key, n_mc)
    checks += c4
    pd.DataFrame(rows4).to_csv(tab_dir / "mc_risk.csv", index=False)
    checks.append(check_spectral_spd(key, n_mc // 4))
    timings["d4_d5"] = time.perf_counter() - t0 - sum(timings.values())
    tabs = transitions(jax.random.fold_in(key, 7), n_tr)
    for name, tab in tabs.items():
        tab.to_csv(tab_dir / f"{name}.csv", index=False)
    timings["transitions"] = time.perf_counter() - t0 - sum(timings.values())
    fits = tabs["ridge_fit"]
    for _, r in fits[fits["noise"] == 0].iterrows():
        checks.append(CheckResult(
            f"t.L{int(r['L'])}", f"best-fit ridge lambda of the {int(r['L'])}-layer stack "
            "(noiseless; a measurement)", "AKY Fig. 3 (linear analogue)", float("nan"),
            float(r["best_lambda"]), float("nan"), float("nan"), "finding", True,
            {"spd_at_best": r["spd_at_best"], "spd_ols": r["spd_ols"], "spd_gd": r["spd_gd"]},
        ))  # fmt: skip
    c_flows, f_flows, t_flows = run_flow_checks(
        jax.random.fold_in(key, 8), rng, out, tab_dir, quick
    )
    checks += c_flows
    timings["d6_d9_c1_c3"] = time.perf_counter() - t0 - sum(timings.values())
    figs = [
        *f_flows,
        plot_spd_depth(pd.read_csv(tab_dir / "spd_depth.csv"),
                       pd.read_csv(tab_dir / "ridge_fit.csv").query("noise == 0"),
                       out / "deep_spd_depth.png"),
        plot_noise_heatmap(pd.read_csv(tab_dir / "noise_heatmap.csv"),
                           out / "deep_noise_heatmap.png"),
    ]  # fmt: skip
    seconds = time.perf_counter() - t0
    n_pass = sum(c.passed for c in checks)
    log(f"  deep d1-d9, c1-c3 + transitions: {n_pass}/{len(checks)} passed, {seconds:.1f} s")
    return (
        checks,
        figs,
        {
            "checks": [c.row() for c in checks],
            "seconds": seconds,
            "timings": timings,
            "n_mc": n_mc,
            "n_transitions": n_tr,
            "ridge_fit": fits.to_dict(orient="records"),
            "risk_depth": tabs["risk_depth"].to_dict(orient="records"),
            "flows_and_constructions": t_flows,
        },
    )
