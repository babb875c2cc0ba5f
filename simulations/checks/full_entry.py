"""`lsa check full-entry`: the exact population loss over all `2 (d+1)^2` entries
(`lsa.full_loss`), the full-entry population flow (`lsa.full_flow`), and the landscape beyond
Assumption 3.3 (a finding beyond ZFB; `docs/landscape.md`, `simulations.checks.landscape`).

Rows (theory.md §14 rows 4–6, 9, 14, and the landscape):

- fe1 (row 4): `full_population_loss = theory.reduced_loss` (`l~ + tr Lambda / 2`) on `a = b = 0`
  at random `(u, U)` with random irrelevant entries, to round-off; its gradient in `(u, U)`
  equals `theory.reduced_loss_grad`. Mutant `"gamma_N+1"`: the reduced side built with N + 1.
- fe2 (row 5): the gradient in `a`, `b` and the entries the prediction ignores is exactly 0
  there. Mutant `"transposed_blocks"`: "a = b = 0" set in the last *columns* (a transposed
  block convention), which leaves the true `a`, `b` random.
- fe3 (row 6): Monte Carlo through the literal LSA map (`lsa.embed`, `lsa.predict`) on random
  dense matrices: `E (y_hat - <w, x_q>)^2` against `2 full_population_loss` (rho = N) and
  `full_population_risk` at a test length `M != N`, `|z| <= 4`. The z-scores that a dropped
  query term and `rho = N` at test would give are recorded. Mutant `"no_query_term"`.
- fe4 (row 9): L-BFGS-B with the exact gradient from random dense restarts (`restarts`, more,
  up to 5x, only while none has reached min L: some end at the spurious minimum): no restart ends
  below `theory.min_loss` (on the optimiser's end points), and the restarts that reach
  it (relative 1e-9) have, after a Newton polish, `a = b = 0` and `u U = Gamma^{-1}` (1e-8); the
  polished points' `L - min L` is round-off and only recorded. The one allowance: the loss's
  float64 resolution, 4 ulp of tr Lambda (an optimiser on the minimum reads -1 ulp).
  Mutant `"min_loss_N-1"`: min L built with N - 1 (higher): the minima found fall below it.
- fe5 (row 14): `full_population_flow` from Assumption 3.3 equals the reduced flow
  `lsa.gradient_flow` at common times (`(u, U)`, relative to `||(u*, U*)||`, tolerance 1e-7 for
  solver tolerances 1e-10), with `a`, `b` and the ignored entries exactly 0 at every saved time.
  Mutant `"gamma_N+1"`: the reduced flow trained with N + 1.
- fl1 (finding): every limit point of the full-entry flow found here (dense trajectories at the
  setting, the basin study) is a certified local minimum of the population loss
  (`landscape.certify_point`: gradient <= 1e-10 after a Newton polish, no negative Hessian
  eigenvalue on the prediction's entries, zero eigenspace = span of the symmetry generators) and
  is either global (min L) or the spurious minimum. Mutant `"all_entries"`: the certificate on
  all entries (the ignored entries add zero eigenvalues that no symmetry explains).
- fl2 (finding): the spurious limit points equal the closed form (`landscape.spurious_closed_form`:
  the rank-one point `u = U = 0`, `a b^T = v v^T / gamma_max` when stable, else the dressed point;
  `a, b` along Lambda's top eigenvector, `U` commuting with Lambda): invariant tensor
  `(W_PV[d] (x) W_KQ[:, :d])` and loss within 1e-8. Mutant `"bottom_eigenvector"`: the closed
  form on the bottom eigenvector (there is no such critical point).
- fl3 (finding): basin fractions by start structure and scale; passes when every start is
  classified (global or spurious) and every Assumption 3.3 start with sigma < sigma_max reaches
  min L (Theorem 4.1). Mutant `"spurious_N+1"`: the spurious value computed with N + 1
  (the spurious limit points are then unclassified).

Keys: `setting.mc_key(tag)` with the tags `TAGS`; numpy seeds are drawn from those keys.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.optimize import minimize

import lsa
import theory
from lsa.flow import FlowResult
from lsa.full_flow import full_population_flow
from lsa.full_loss import (
    full_loss_grad_theta,
    full_loss_terms,
    full_loss_theta,
    full_loss_value_and_grad,
    full_population_loss,
    full_population_risk,
    pack_params,
    prediction_indices,
)

from ..icl.montecarlo import mc_means
from ..plots.landscape import plot_basins, plot_dense_trajectories
from .base import CheckResult, rel_error
from .full_entry_landscape import (
    N_SAVE,
    check_basins,
    check_certificates,
    check_closed_form,
    dense_trajectories,
    landscape_instances,
)
from .landscape import (
    Instance,
    basin_table,
    certify_point,
    spurious_closed_form,
)

__all__ = [
    "NORMAL",
    "QUICK",
    "TAGS",
    "FullEntrySizes",
    "check_closed_form",
    "check_full_flow",
    "check_mc",
    "check_minimum",
    "check_reduced_agreement",
    "check_zero_gradient",
    "landscape_instances",
    "run_suite",
]

#: Monte Carlo / random-draw tags (`setting.mc_key(tag)`).
TAGS = {"fe1": 40, "fe3": 41, "fe4": 42, "trajectories": 43, "basins": 44}


@dataclasses.dataclass(frozen=True)
class FullEntrySizes:
    """Sizes of the group: random points of fe1/fe2, Monte Carlo prompts of fe3 (per length)
    and its batch, the test length factor (`M = round(M_factor N)`), restarts of fe4, dense
    trajectories at the setting, starts per basin cell, the scales (fractions of sigma_max), the
    dimension of the basin study (None: the setting's) and whether it adds Lambda = I."""

    n_points: int = 6
    mc_prompts: int = 400_000
    mc_batch: int = 20_000
    M_factor: float = 1.5
    restarts: int = 6
    n_traj: int = 8
    n_starts: int = 8
    scales: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.1, 10.0, 5))
    basin_d: int | None = 3
    basin_iso: bool = True
    z_max: float = 4.0


NORMAL = FullEntrySizes()
QUICK = FullEntrySizes(
    n_points=3,
    mc_prompts=100_000,
    restarts=3,
    n_traj=4,
    n_starts=2,
    scales=(0.1, 1.0, 10.0),
    basin_d=None,  # the setting's d: no second compilation of the full-entry flow
    basin_iso=False,
)


def _seed(key: jax.Array) -> int:
    """A numpy seed drawn from a JAX key (recorded in the details)."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _random_reduced(key: jax.Array, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Full matrices with random `(u, U)`, `a = b = 0`, and random ignored entries."""
    k1, k2 = jax.random.split(key)
    Wp = np.array(jax.random.normal(k1, (d + 1, d + 1), jnp.float64))
    Wk = np.array(jax.random.normal(k2, (d + 1, d + 1), jnp.float64)) / math.sqrt(d)
    Wp[-1, :-1] = 0.0  # a
    Wk[-1, :-1] = 0.0  # b
    return Wp, Wk


# ----------------------------------------------------------------------------------------------
# fe1, fe2: the full loss on a = b = 0


def check_reduced_agreement(
    Lambda: np.ndarray, N: int, key: jax.Array, n_points: int, *, mutant: str | None = None
) -> CheckResult:
    """fe1 (module docstring)."""
    d = Lambda.shape[0]
    N_red = N + 1 if mutant == "gamma_N+1" else N
    err_L, err_g = 0.0, 0.0
    for j in range(n_points):
        Wp, Wk = _random_reduced(jax.random.fold_in(key, j), d)
        u, U = float(Wp[-1, -1]), Wk[:-1, :-1]
        L_full, (gp, gk) = full_loss_value_and_grad(Wp, Wk, Lambda, N)
        L_red = theory.reduced_loss(U, u, Lambda, N_red)
        dU, du = theory.reduced_loss_grad(U, u, Lambda, N_red)
        err_L = max(err_L, abs(float(L_full) - L_red) / abs(L_red))
        g_full = np.concatenate([[float(gp[-1, -1])], np.asarray(gk[:-1, :-1]).ravel()])
        g_red = np.concatenate([[du], np.asarray(dU).ravel()])
        err_g = max(err_g, float(np.linalg.norm(g_full - g_red) / np.linalg.norm(g_red)))
        err_L = max(err_L, abs(float(full_population_loss(Wp, Wk, Lambda, N)) - L_red) / L_red)
    err = max(err_L, err_g)
    return CheckResult(
        "fe1",
        "full loss = reduced loss l~ + tr(Lambda)/2 on a = b = 0 (random u, U, ignored entries), "
        "and its (u, U) gradient = the reduced gradient",
        "theory.md §4.3, §14 row 4",
        0.0,
        err,
        err,
        1e-12,
        "rel",
        bool(err <= 1e-12),
        {"loss_rel_err": err_L, "grad_rel_err": err_g, "points": n_points, "mutant": mutant},
    )


def check_zero_gradient(
    Lambda: np.ndarray, N: int, key: jax.Array, n_points: int, *, mutant: str | None = None
) -> CheckResult:
    """fe2 (module docstring)."""
    d = Lambda.shape[0]
    idx = prediction_indices(d)
    D2 = (d + 1) ** 2
    keep = np.asarray([idx[d], *idx[d + 1 : d + 1 + d * d]])  # u and U
    others = np.setdiff1d(np.arange(2 * D2), keep)
    worst = 0.0
    for j in range(n_points):
        Wp, Wk = _random_reduced(jax.random.fold_in(key, j), d)
        if mutant == "transposed_blocks":  # a = b = 0 written into the last columns instead
            Wp[-1, :-1] = np.asarray(jax.random.normal(jax.random.fold_in(key, 100 + j), (d,)))
            Wk[-1, :-1] = np.asarray(jax.random.normal(jax.random.fold_in(key, 200 + j), (d,)))
            Wp[:-1, -1] = 0.0
            Wk[:-1, -1] = 0.0
        g = np.asarray(full_loss_grad_theta(pack_params(Wp, Wk), Lambda, N))
        worst = max(worst, float(np.max(np.abs(g[others]))))
    return CheckResult(
        "fe2",
        "gradient of the full loss in a, b and the ignored entries is exactly 0 on a = b = 0",
        "ZFB §3.2 / Lemma 5.2; theory.md §14 row 5",
        0.0,
        worst,
        worst,
        0.0,
        "abs",
        bool(worst == 0.0),
        {"points": n_points, "entries_checked": int(others.size), "mutant": mutant},
    )


# ----------------------------------------------------------------------------------------------
# fe3: Monte Carlo through the literal map


def _sq_errors(key: jax.Array, B: int, W_PV: Any, W_KQ: Any, chol: Any, n: int) -> jax.Array:
    """Squared errors `(y_hat - <w, x_q>)^2` of `B` prompts of length `n` from the training law,
    through the literal map: `E` built by `lsa.embed`, `y_hat = lsa.predict(E, ...)`."""
    d = chol.shape[0]
    kw, kx, kq = jax.random.split(key, 3)
    w = jax.random.normal(kw, (B, d), jnp.float64)
    X = jax.random.normal(kx, (B, n, d), jnp.float64) @ chol.T
    x_q = jax.random.normal(kq, (B, d), jnp.float64) @ chol.T
    y = jnp.einsum("bnd,bd->bn", X, w)
    y_hat = lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ)
    return (y_hat - jnp.sum(w * x_q, axis=-1)) ** 2


def check_mc(
    Lambda: np.ndarray,
    N: int,
    key: jax.Array,
    sizes: FullEntrySizes,
    *,
    mutant: str | None = None,
) -> list[CheckResult]:
    """fe3 at rho = N and at the test length M (module docstring)."""
    d = Lambda.shape[0]
    M = round(sizes.M_factor * N)
    kw = jax.random.fold_in(key, 0)
    k1, k2 = jax.random.split(kw)
    # a generic dense point (every entry nonzero) where the a-terms dominate the error, so that
    # the query column's own term (the 1/rho term in a) is resolved by the Monte Carlo:
    # a scaled up by 3, u and b scaled down by 3
    Wp = np.asarray(jax.random.normal(k1, (d + 1, d + 1), jnp.float64)) / math.sqrt(d + 1)
    Wk = np.asarray(jax.random.normal(k2, (d + 1, d + 1), jnp.float64)) / math.sqrt(d + 1)
    Wp[-1, :-1] *= 3.0
    Wp[-1, -1] /= 3.0
    Wk[-1, :-1] /= 3.0
    chol = jnp.asarray(np.linalg.cholesky(Lambda))
    rows = []
    for j, (n, cid) in enumerate(((N, "fe3a"), (M, "fe3b"))):
        t0 = time.perf_counter()
        (est,) = mc_means(
            _sq_errors,
            jax.random.fold_in(key, 1 + j),
            sizes.mc_prompts,
            jnp.asarray(Wp),
            jnp.asarray(Wk),
            chol,
            n,
            batch_size=sizes.mc_batch,
        )
        terms = full_loss_terms(Wp, Wk, Lambda, n)
        exact = (
            2.0 * float(full_population_loss(Wp, Wk, Lambda, N))
            if n == N
            else float(full_population_risk(Wp, Wk, Lambda, n))
        )
        no_query = float(terms.total - terms.R2 - 2.0 * (terms.PR + terms.QR))
        predicted = no_query if mutant == "no_query_term" else exact
        z = est.z(predicted)
        details = {
            "n": n,
            "rho": n,
            "mc_mean": est.mean,
            "mc_se": est.se,
            "n_prompts": est.n,
            "z_dropped_query_term": est.z(no_query),
            "seconds": time.perf_counter() - t0,
            "mutant": mutant,
        }
        if n != N:
            details["z_rho_N_at_test"] = est.z(float(full_loss_terms(Wp, Wk, Lambda, n, N).total))
        label = (
            "rho = N (2 x full_population_loss)" if n == N else f"M = {n} (full_population_risk)"
        )
        rows.append(
            CheckResult(
                cid,
                f"exact full loss = MC through the literal LSA map on dense W, {label}",
                "theory.md §5, §14 row 6",
                predicted,
                est.mean,
                z,
                sizes.z_max,
                "z",
                bool(abs(z) <= sizes.z_max),
                details,
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------
# fe4: minimisation over all entries


def check_minimum(
    Lambda: np.ndarray, N: int, key: jax.Array, restarts: int, *, mutant: str | None = None
) -> tuple[CheckResult, list[dict[str, Any]]]:
    """fe4 (module docstring). Returns the row and one record per restart."""
    d = Lambda.shape[0]
    D = d + 1
    idx = prediction_indices(d)
    min_L = theory.min_loss(Lambda, N - 1 if mutant == "min_loss_N-1" else N)
    Ginv = np.linalg.inv(theory.gamma(Lambda, N))
    seed = _seed(key)
    rng = np.random.default_rng(seed)
    theta = np.zeros(2 * D * D)
    recs: list[dict[str, Any]] = []

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        th = theta.copy()
        th[idx] = z
        return float(full_loss_theta(th, Lambda, N)), np.asarray(
            full_loss_grad_theta(th, Lambda, N)
        )[idx]

    for j in range(5 * restarts):
        # `restarts` restarts; more (up to 5x) only while none has reached min L, since dense
        # starts also end at the spurious minimum (fl1-fl3)
        if j >= restarts and any(abs(r["loss_polished"] - min_L) <= 1e-9 * min_L for r in recs):
            break
        z0 = rng.normal(size=idx.size) / math.sqrt(D)
        res = minimize(
            fun,
            z0,
            jac=True,
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20_000},
        )
        th = theta.copy()
        th[idx] = res.x
        Wp, Wk = th[: D * D].reshape(D, D), th[D * D :].reshape(D, D)
        cert = certify_point(Wp, Wk, Lambda, N)
        Pp, Pk = cert["W_PV"], cert["W_KQ"]
        recs.append(
            {
                "restart": j,
                "loss_bfgs": float(res.fun),
                "loss_polished": cert["loss"],
                "grad_polished": cert["grad_norm"],
                "a_norm": cert["a_norm"],
                "b_norm": cert["b_norm"],
                "uU_vs_Ginv": rel_error(Pp[-1, -1] * Pk[:-1, :-1], Ginv),
                "is_minimum": cert["is_minimum"],
            }
        )
    # the inequality on the optimiser's own end points; the Newton-polished points sit at the
    # minimum itself, where L - min L is round-off (recorded, not tested as an inequality)
    lowest = min(r["loss_bfgs"] for r in recs)
    at_min = [r for r in recs if abs(r["loss_polished"] - min_L) <= 1e-9 * min_L]
    ab = max((max(r["a_norm"], r["b_norm"]) for r in at_min), default=float("inf"))
    uU = max((r["uU_vs_Ginv"] for r in at_min), default=float("inf"))
    # float64 resolution of the loss: its terms are of size tr(Lambda), so an optimiser that
    # lands exactly on the minimum reads L - min L = -1 ulp(tr Lambda) (measured at d = 2 and 5);
    # the allowance is 4 ulp, far below any modelling error (the mutant's gap is ~1e-2)
    roundoff = 4.0 * float(np.spacing(np.trace(Lambda)))
    ok = lowest >= min_L - roundoff and bool(at_min) and ab <= 1e-8 and uU <= 1e-8
    return (
        CheckResult(
            "fe4",
            "minimum over all entries (L-BFGS-B, random restarts) never below min L; the minima "
            "found have a = b = 0 and u U = Gamma^-1",
            "theory.md §5 (minimiser set), §14 row 9",
            min_L,
            lowest,
            lowest - min_L,
            -roundoff,
            "ineq",
            bool(ok),
            {
                "restarts": len(recs),
                "roundoff_allowance": roundoff,
                "numpy_seed": seed,
                "reached_min_L": len(at_min),
                "polished_minus_min_L": [r["loss_polished"] - min_L for r in at_min],
                "max_ab_at_min": ab,
                "max_uU_vs_Ginv_at_min": uU,
                "other_end_losses": sorted(
                    {round(r["loss_polished"], 10) for r in recs if r not in at_min}
                ),
                "mutant": mutant,
            },
        ),
        recs,
    )


# ----------------------------------------------------------------------------------------------
# fe5: the full-entry flow from Assumption 3.3


def check_full_flow(
    setting: lsa.Setting, flow: FlowResult | None = None, *, mutant: str | None = None
) -> CheckResult:
    """fe5 (module docstring)."""
    prob = setting.build()
    Lambda, N = prob.Lambda, setting.N
    if flow is None or mutant == "gamma_N+1":
        method, options = setting.method_and_options()
        N_red = N + 1 if mutant == "gamma_N+1" else N
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lsa.TheoremCoverageWarning)
            flow = lsa.gradient_flow(Lambda, N_red, prob.init, method=method, options=options)
    Wp0, Wk0 = (np.asarray(w) for w in prob.init.weights())
    ts = np.asarray(flow.ts)
    if ts.size > N_SAVE:  # a fixed save-grid size: the full flow compiles once per d for it
        ts = ts[np.unique(np.round(np.linspace(0, ts.size - 1, N_SAVE)).astype(int))]
    t0 = time.perf_counter()
    full = full_population_flow(Lambda, N, Wp0, Wk0, t_end=float(ts[-1]), ts=ts, rtol=1e-10)
    seconds = time.perf_counter() - t0
    d = Lambda.shape[0]
    scale = math.hypot(float(flow.u[-1]), float(np.linalg.norm(flow.U_at(len(ts) - 1))))
    # common times (the full flow returns its times through its unit scaling: match to 1e-12)
    t_red = np.asarray(flow.ts)
    pairs = []
    for i_full, t in enumerate(full.ts):
        i_red = int(np.argmin(np.abs(t_red - t)))
        if abs(t_red[i_red] - t) <= 1e-12 * max(abs(t), 1e-300):
            pairs.append((i_red, i_full))
    common = [np.asarray([full.ts[i] for _, i in pairs])]
    err = 0.0
    for i_red, i_full in pairs:
        du = float(full.W_PV_traj[i_full, -1, -1]) - float(flow.u[i_red])
        dU = full.W_KQ_traj[i_full, :-1, :-1] - flow.U_at(int(i_red))
        err = max(err, math.hypot(du, float(np.linalg.norm(dU))) / scale)
    theta = np.stack(
        [np.asarray(pack_params(p, k)) for p, k in zip(full.W_PV_traj, full.W_KQ_traj, strict=True)]
    )
    uU = np.asarray([d * (d + 1) + d, *prediction_indices(d)[d + 1 : d + 1 + d * d]])
    zero = np.setdiff1d(np.arange(theta.shape[1]), uU)
    exact = float(np.max(np.abs(theta[:, zero])))
    ok = err <= 1e-7 and exact == 0.0 and common[0].size >= 10
    return CheckResult(
        "fe5",
        "full-entry population flow from Assumption 3.3 = reduced flow (u, U) at common times; "
        "a, b and the ignored entries exactly 0",
        "theory.md §5, §14 row 14",
        0.0,
        err,
        err,
        1e-7,
        "rel",
        bool(ok),
        {
            "common_times": int(common[0].size),
            "t_last_common": float(common[0][-1]) if common[0].size else float("nan"),
            "max_abs_a_b_ignored": exact,
            "full_flow_stop": full.stop_reason,
            "full_flow_steps": full.stats["num_steps"],
            "full_flow_seconds": seconds,
            "rtol_full": 1e-10,
            "mutant": mutant,
        },
    )


# ----------------------------------------------------------------------------------------------
# the suite


def run_suite(
    setting: lsa.Setting,
    out: Path,
    quick: bool = False,
    log: Callable[[str], None] = print,
    *,
    flow: FlowResult | None = None,
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Checks fe1–fe5 and fl1–fl3 and the two landscape figures.

    **Arguments:** `setting` (Lambda, N, sigma, seed; the keys are `setting.mc_key(TAGS[...])`),
    `out` (tables to `out/full_entry/*.csv`, figures to `out/landscape_*.png`), `quick`
    (`QUICK` sizes), `log`, `flow` (the setting's reduced flow, if the caller has it; fe5 uses
    it, else solves it).

    **Returns:** `(checks, figure paths, tables)`; `tables` holds the rows, the basin table,
    every limit point with its certificate, the closed forms, the sizes, keys and timings.
    """
    lsa.require_x64("the full-entry group (simulations.checks.full_entry)")
    sizes = QUICK if quick else NORMAL
    out = Path(out)
    tab_dir = out / "full_entry"
    tab_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        res = fn()
        timings[name] = time.perf_counter() - t0
        log(f"  full-entry {name}: {timings[name]:.1f} s")
        return res

    prob = setting.build()
    Lambda, N = prob.Lambda, setting.N
    key = setting.mc_key
    checks: list[CheckResult] = []
    checks.append(
        timed("fe1", lambda: check_reduced_agreement(Lambda, N, key(TAGS["fe1"]), sizes.n_points))
    )
    checks.append(
        timed("fe2", lambda: check_zero_gradient(Lambda, N, key(TAGS["fe1"]), sizes.n_points))
    )
    checks += timed("fe3", lambda: check_mc(Lambda, N, key(TAGS["fe3"]), sizes))
    fe4, restarts = timed("fe4", lambda: check_minimum(Lambda, N, key(TAGS["fe4"]), sizes.restarts))
    checks.append(fe4)
    checks.append(timed("fe5", lambda: check_full_flow(setting, flow)))

    # the landscape: dense trajectories at the setting, then the basin study
    inst0 = Instance(f"d{setting.d}-setting", Lambda, N)
    basin_d = setting.d if sizes.basin_d is None else sizes.basin_d
    extra = landscape_instances(setting, basin_d)[: 2 if sizes.basin_iso else 1]
    instances = [inst0] + [i for i in extra if i.name != inst0.name]
    closed = timed(
        "closed forms", lambda: {i.name: spurious_closed_form(i.Lambda, i.N) for i in instances}
    )
    traj, traj_pts = timed(
        "dense trajectories",
        lambda: dense_trajectories(
            inst0, closed[inst0.name], key(TAGS["trajectories"]), sizes.n_traj
        ),
    )
    basin_insts = [i for i in instances if i.name != inst0.name or basin_d == setting.d]
    rows, pts = timed(
        "basins",
        lambda: basin_table(
            basin_insts,
            closed,
            sizes.scales,
            sizes.n_starts,
            key(TAGS["basins"]),
            log=log,
            n_save=N_SAVE,
        ),
    )
    points = traj_pts + pts
    checks.append(check_certificates(points, entries_mutant=None))
    checks.append(check_closed_form(points, closed, instances))
    checks.append(check_basins(rows, sizes))

    # tables and figures (drawn from the saved CSVs)
    traj.to_csv(tab_dir / "dense_trajectories.csv", index=False)
    levels = pd.DataFrame(
        [
            {
                "min_loss": inst0.min_loss,
                "spurious_loss": closed[inst0.name]["loss"],
                "title": f"full-entry population flow from {sizes.n_traj} dense starts "
                f"(entries N(0, 1/(d+1))), d={setting.d}, N={N}",
            }
        ]
    )
    levels.to_csv(tab_dir / "levels.csv", index=False)
    pd.DataFrame(rows).to_csv(tab_dir / "basins.csv", index=False)
    pd.DataFrame(points).to_csv(tab_dir / "limit_points.csv", index=False)
    pd.DataFrame(restarts).to_csv(tab_dir / "fe4_restarts.csv", index=False)
    pd.DataFrame([c.row() for c in checks]).to_csv(tab_dir / "checks.csv", index=False)
    figs = [
        plot_dense_trajectories(
            pd.read_csv(tab_dir / "dense_trajectories.csv"),
            pd.read_csv(tab_dir / "levels.csv"),
            out / "landscape_trajectories.png",
        ),
        plot_basins(
            pd.read_csv(tab_dir / "basins.csv"),
            {
                "title": f"Basins of the full-entry population flow, N={N} "
                f"({sizes.n_starts} starts per point; finding beyond ZFB)"
            },
            out / "landscape_basins.png",
        ),
    ]
    timings["total"] = time.perf_counter() - t_all
    log(f"  full-entry group: {len(checks)} checks, {timings['total']:.1f} s")
    tables: dict[str, Any] = {
        "checks": [c.row() for c in checks],
        "basins": rows,
        "limit_points": points,
        "fe4_restarts": restarts,
        "closed_form": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("W_PV", "W_KQ")}
            for k, v in closed.items()
        },
        "sizes": dataclasses.asdict(sizes),
        "tags": TAGS,
        "timings": timings,
    }
    return checks, figs, tables
