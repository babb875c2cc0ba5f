"""Benchmark of the reduced population gradient flow: lsa-flow against two baselines, each at
the loosest (fastest) tolerances that still meet the target error.

What is compared
----------------
The reduced flow of ZFB Lemma 5.2 in `(U, u)`, started from the paper's initialisation
(`paper_init`, `sigma = 0.5 sigma_max`) on `Lambda = spread_covariance(d, kappa=100)` (geometric
eigenvalues, trace d, Haar-rotated eigenbasis) with `N = 20`. Its limit is
`u U -> Gamma^{-1}`, `Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I`. Every method must reach a
relative error `||u U - Gamma^{-1}||_F / ||Gamma^{-1}||_F <= 1e-8` (`--target`), computed here
from `Lambda` directly (independent of lsa's internals). Three solvers:

(i)   lsa-flow, `gradient_flow(..., method=EigenMethod(rtol, atol_factor, pcoeff, icoeff))`:
      Lambda's eigenbasis, closed-form off-diagonals (state d + 2), integrated in
      `s = int u^2 dt`, Kvaerno5 with an O(d) bordered-diagonal Newton solve, ended by
      lsa-flow's own stopping rule (`FlowOptions(eps)`).
(ii)  scipy `solve_ivp(method="BDF")` on the full `d^2 + 1` state `(V = Q^T U Q, u)` in Lambda's
      eigenbasis, where the vector field is elementwise, given the analytic sparse (arrowhead:
      diagonal plus the u row and column) Jacobian as a csc matrix. This is the strongest
      baseline listed in the solver notes. Its timed call includes `np.linalg.eigh` and the
      rotation back, as lsa-flow's does. (A subclass of scipy's BDF that only counts accepted
      steps is passed as the method, because `solve_ivp` does not report them.)
(iii) diffrax Tsit5 on the plain reduced ODE in the original coordinates
      (`gradient_flow(..., method=DirectMethod(rtol))`, `t_end = T_ref`). Tsit5 is explicit and
      stability-limited on kappa = 100 (1e5-2e6 steps), so it is run only for d up to
      `--tsit5-max-d`; larger sizes are *estimated* (printed as such) from a short probe run's
      per-step time and a step count extrapolated from the measured sizes by the stiffness
      integral `max_ij c_ij * int_0^T u^2 dt` (`c_ij = gamma_i lambda_i lambda_j`). Tsit5 is not
      tuned (it is stability-limited: its step count hardly depends on rtol).

Tolerance search (both (i) and (ii), same run, same Lambda)
-----------------------------------------------------------
Each method's grid is run once on Lambda, and every setting whose endpoint error meets the
target is a candidate.
- lsa-flow: the full grid `rtol x atol_factor x eps x PI` (`--lsa-rtols`, `--lsa-atol-factors`,
  `--lsa-eps`, `--lsa-pi`; default 1e-6..1e-11 x {1, 1e-1, 1e-2, 1e-3} x {1e-8, 3e-9, 1e-9} x
  step-size controller coefficients (pcoeff, icoeff) in {(0.3, 0.3), (0.2, 0.4), (0, 1)}), all after
  compilation (tolerances are traced: the grid compiles nothing). The full grid is needed because
  lsa-flow's time is not monotone in rtol: loose rtol makes Kvaerno5 reject many steps. Every
  lsa-flow call here has the step budget `--lsa-max-steps` (50000; `max_steps` is static, so
  one budget keeps one compiled solve), so that a churning setting cannot stall the search.
- scipy BDF: `atol = rtol * atol_factor * sigma^2` (the state's scale at the start, where the
  flow sits on the small-sigma plateau; lsa-flow's convention), rtol from `--bdf-rtols`
  (default 1e-5..1e-11), atol factors `--bdf-atol-factors` (default 1, 1e-1, 1e-2, 1e-3, 1e-4).
  For each atol factor rtol is tightened from the loosest value until the target is met: tighter
  settings of the same row only cost more steps.
The fastest `--finalists` candidates of each method (by their single search run) are re-timed,
`--repeats` runs each, interleaved; in order of that median time the first that also meets the
target on a second Lambda (key `seed + 1`) is chosen, so that the choice is not a knife edge of
one Lambda. The chosen lsa-flow and BDF settings are then timed once more, interleaved
(`--final-repeats` rounds, default 5), and "run s" is the median: the ratio is taken from runs
made side by side. The ratio of the minima is printed too: on a shared machine load only adds
time, and it hit the two methods differently (d = 200, two runs minutes apart under load 7-10:
lsa-flow 0.28 s and 0.48 s, BDF 3.9 s and 3.0 s).

Interval. lsa-flow ends by its own stopping rule. scipy has none, so (ii) and (iii) integrate
`[0, T_ref]`, `T_ref` the end time of lsa-flow at its default tolerances (eps 1e-10): there the
exact flow is ~1e-10 from its limit, so the error a baseline shows is its own. This is generous
to BDF (it is given the end time, and the horizon costs it almost nothing: 135 steps at
T = 607 and at T = 800, d = 200, rtol 1e-5), and a shorter horizon (the tuned lsa-flow's end
time) left a truncation error of ~3e-9 that would hide BDF's own. Tsit5 runs with the stopping
rule made inert (`eps = 1e-13`) so that it integrates the same interval.

Timing
------
"compile s" is the first call of lsa-flow at this d (made at its default tolerances) minus the
median of its next `--repeats` calls; the tuned row shows the same value (the grid compiles
nothing). scipy compiles nothing ("—"). Tsit5 is timed with `--tsit5-repeats` (default 1) full
runs after the first, because one run takes up to minutes, and its compile time is taken from a
short probe run (`--tsit5-probe-steps`, first minus second call): on a shared machine the noise
of a full run exceeds the compilation. lsa-flow is also timed at its default tolerances (rtol
1e-11, eps 1e-10; row "default tol"), and on the second Lambda (row "new Λ", default
tolerances, its first call): a solver that caches its compiled solve per (d, options) runs it at
the "run s" cost; a "compile s" of seconds on that row means it recompiled. Then lsa-flow alone
at d = 1000 (`--big-d`), at the setting chosen for the largest d of `--sizes`, total wall of the
`gradient_flow` call (eigendecomposition included) after compilation.

Targets (from the issue): at d = 200 lsa-flow at least 10x faster than (ii), both tuned; at
d = 1000 lsa-flow in at most 5 s including the eigendecomposition, at relative error <= 1e-8.

BLAS threads: by default BLAS is limited to one thread (`--blas-threads 1`, via threadpoolctl).
On a small shared machine OpenBLAS's spinning worker threads made a 200 x 200 `eigh` take
0.55 s instead of 4 ms when another job was running; one thread gives stable numbers for all
methods alike. `--blas-threads 0` leaves BLAS as it is.

Usage: `python benchmarks/reduced_flow.py [--quick] [--json PATH] [--N 20] [--sizes 10 50 200]`
(`--quick`: d = 10 only, small grids, Tsit5 estimated; a smoke run of about a minute.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

# `import lsa` may stop switching the process to float64; the benchmark needs it, so it says so.
jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from scipy.integrate import BDF, solve_ivp  # noqa: E402

import lsa  # noqa: E402
import lsa.flow  # noqa: E402
from lsa.flow import (  # noqa: E402
    DirectMethod,
    EigenMethod,
    FlowError,
    FlowOptions,
    gradient_flow,
)

# Stopping tolerance for the baselines run through `gradient_flow`: small enough that the
# stopping rule never fires before `t_end = T` (the state is ~1e-10 from the limit there).
BASELINE_EPS = 1e-13


# ----------------------------------------------------------------------------------------
# Problem and error metric
# ----------------------------------------------------------------------------------------


def setting(d: int, kappa: float, N: int, seed: int) -> tuple[np.ndarray, lsa.Init]:
    """`Lambda = spread_covariance(d, kappa)` and the paper's start with sigma = 0.5 sigma_max."""
    k_lam, k_theta = jax.random.split(jax.random.PRNGKey(seed))
    Lam = np.asarray(lsa.spread_covariance(d, kappa, k_lam))
    init = lsa.paper_init(Lam, N, sigma_fraction=0.5, key=k_theta)
    return Lam, init


def gamma_inverse(Lam: np.ndarray, N: int) -> np.ndarray:
    d = Lam.shape[0]
    G = (1.0 + 1.0 / N) * Lam + np.trace(Lam) / N * np.eye(d)
    return np.linalg.inv(G)


def rel_error(Lam: np.ndarray, N: int, product: np.ndarray) -> float:
    """`||u U - Gamma^{-1}||_F / ||Gamma^{-1}||_F`, from Lambda directly."""
    Gi = gamma_inverse(Lam, N)
    return float(np.linalg.norm(product - Gi) / np.linalg.norm(Gi))


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """First call (with compilation), then `repeats` more; compile = first - median(rest)."""
    first, out = timed(fn)
    runs = []
    for _ in range(repeats):
        t, out = timed(fn)
        runs.append(t)
    run = statistics.median(runs) if runs else first
    return {"first_s": first, "runs_s": runs, "run_s": run, "compile_s": first - run, "out": out}


# ----------------------------------------------------------------------------------------
# (ii) scipy BDF in Lambda's eigenbasis with the analytic arrowhead Jacobian
# ----------------------------------------------------------------------------------------


class EigenbasisODE:
    """The reduced flow on `y = (vec V, u)`, `V = Q^T U Q`, row-major, with its Jacobian.

    `dV_ij = -u^2 c_ij V_ij + u lambda_i^2 [i = j]`, `c_ij = gamma_i lambda_i lambda_j`;
    `du = -u sum_ij c_ij V_ij^2 + sum_i lambda_i^2 V_ii`. The Jacobian is an arrowhead: the
    diagonal `-u^2 c`, and a u column equal to the u row (a gradient flow),
    `g = -2 u c V + lambda^2 [i = j]`, with corner `-sum c V^2`.
    """

    def __init__(self, lam: np.ndarray, N: int):
        d = lam.shape[0]
        gam = (1.0 + 1.0 / N) * lam + lam.sum() / N
        self.d = d
        self.c = (gam[:, None] * lam[:, None] * lam[None, :]).ravel()
        self.lam2 = lam**2
        self.diag = np.arange(d) * (d + 1)
        n = d * d + 1
        self.n = n
        m = n - 1
        # CSC pattern: column k < m holds rows (k, m); column m holds rows 0..m.
        self.indptr = np.concatenate([np.arange(0, 2 * m + 1, 2), [2 * m + n]])
        self.indices = np.concatenate(
            [np.stack([np.arange(m), np.full(m, m)], 1).ravel(), np.arange(n)]
        )
        self.nnz = 2 * m + n

    def f(self, t: float, y: np.ndarray) -> np.ndarray:
        v, u = y[:-1], y[-1]
        cv = self.c * v
        out = np.empty_like(y)
        out[:-1] = -(u * u) * cv
        out[self.diag] += u * self.lam2
        out[-1] = -u * np.dot(cv, v) + np.dot(self.lam2, v[self.diag])
        return out

    def jac(self, t: float, y: np.ndarray) -> sp.csc_matrix:
        v, u = y[:-1], y[-1]
        m = self.n - 1
        cv = self.c * v
        g = -2.0 * u * cv
        g[self.diag] += self.lam2
        data = np.empty(self.nnz)
        data[0 : 2 * m : 2] = -(u * u) * self.c
        data[1 : 2 * m : 2] = g
        data[2 * m : 2 * m + m] = g
        data[-1] = -np.dot(cv, v)
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))


def scipy_bdf(
    Lam: np.ndarray, N: int, init: lsa.Init, T: float, rtol: float, atol: float
) -> dict[str, Any]:
    """Solve on [0, T] with scipy BDF; returns the end product `u U` and solver counters."""
    lam, Q = np.linalg.eigh(Lam)
    ode = EigenbasisODE(lam, N)
    U0 = np.asarray(init.U)
    y0 = np.concatenate([(Q.T @ U0 @ Q).ravel(), [float(init.u)]])
    counter = [0]

    class CountingBDF(BDF):
        """scipy's BDF unchanged; counts accepted steps (solve_ivp does not report them)."""

        def _step_impl(self):
            ok, msg = super()._step_impl()
            counter[0] += bool(ok)
            return ok, msg

    sol = solve_ivp(
        ode.f, (0.0, T), y0, method=CountingBDF, jac=ode.jac, rtol=rtol, atol=atol, t_eval=[T]
    )
    if sol.status != 0:
        raise RuntimeError(f"scipy BDF failed: {sol.message}")
    y = sol.y[:, -1]
    V = y[:-1].reshape(ode.d, ode.d)
    product = y[-1] * (Q @ V @ Q.T)
    return {
        "product": product,
        "steps": counter[0],
        "nfev": sol.nfev,
        "njev": sol.njev,
        "nlu": sol.nlu,
        "t_final": float(sol.t[-1]),
    }


def check_baseline(N: int, seed: int) -> float:
    """Self-test of (ii) at d = 4: vector field against the literal Lemma 5.2 formula, Jacobian
    against central differences. Returns the worst relative deviation (raises if > 1e-6)."""
    rng = np.random.default_rng(seed)
    d = 4
    A = rng.standard_normal((d, d))
    Lam = A @ A.T + d * np.eye(d)
    U = rng.standard_normal((d, d))
    u = 0.7
    G = (1.0 + 1.0 / N) * Lam + np.trace(Lam) / N * np.eye(d)
    GLUL = G @ Lam @ U @ Lam
    dU = -(u**2) * GLUL + u * Lam @ Lam
    du = -np.trace(u * GLUL @ U.T - Lam @ Lam @ U.T)
    lam, Q = np.linalg.eigh(Lam)
    ode = EigenbasisODE(lam, N)
    y = np.concatenate([(Q.T @ U @ Q).ravel(), [u]])
    f = ode.f(0.0, y)
    want = np.concatenate([(Q.T @ dU @ Q).ravel(), [du]])
    dev_f = float(np.max(np.abs(f - want)) / np.max(np.abs(want)))
    J = ode.jac(0.0, y).toarray()
    h = 1e-6
    Jfd = np.stack(
        [(ode.f(0.0, y + h * e) - ode.f(0.0, y - h * e)) / (2 * h) for e in np.eye(y.size)], 1
    )
    dev_j = float(np.max(np.abs(J - Jfd)) / np.max(np.abs(Jfd)))
    worst = max(dev_f, dev_j)
    if not worst < 1e-6:
        raise AssertionError(f"scipy baseline self-test failed: field {dev_f:.2e}, jac {dev_j:.2e}")
    return worst


# ----------------------------------------------------------------------------------------
# Rows of the table
# ----------------------------------------------------------------------------------------


def row(d: int, method: str, **kw: Any) -> dict[str, Any]:
    base = {
        "d": d,
        "method": method,
        "compile_s": math.nan,
        "run_s": math.nan,
        "first_s": math.nan,
        "steps": None,
        "rejected": None,
        "rel_error": math.nan,
        "ratio": math.nan,
        "status": "ok",
        "note": "",
    }
    base.update(kw)
    return base


def lsa_setting(
    rtol: float,
    atol_factor: float,
    eps: float,
    pcoeff: float | None = None,
    icoeff: float | None = None,
) -> dict[str, float]:
    """An lsa-flow setting; the PI controller coefficients default to `EigenMethod()`'s."""
    e = EigenMethod()
    return {
        "rtol": rtol, "atol_factor": atol_factor, "eps": eps,
        "pcoeff": e.pcoeff if pcoeff is None else pcoeff,
        "icoeff": e.icoeff if icoeff is None else icoeff,
    }  # fmt: skip


def run_lsa(
    Lam, N, init, args: argparse.Namespace, setting_: dict[str, float] | None = None
) -> Callable[[], Any]:
    """lsa-flow at `setting_` (rtol, atol_factor, eps), or at its own defaults (None); every
    call with the step budget `--lsa-max-steps`."""
    if setting_ is None:
        method, options = EigenMethod(), FlowOptions()
    else:
        method = EigenMethod(
            rtol=setting_["rtol"],
            atol_factor=setting_["atol_factor"],
            pcoeff=setting_["pcoeff"],
            icoeff=setting_["icoeff"],
        )
        options = FlowOptions(eps=setting_["eps"])
    options = dataclasses.replace(options, max_steps=args.lsa_max_steps)
    return lambda: gradient_flow(Lam, N, init, method=method, options=options)


def run_bdf(Lam, N, init, T: float, setting_: dict[str, float]) -> Callable[[], Any]:
    return lambda: scipy_bdf(Lam, N, init, T, setting_["rtol"], setting_["atol"])


def lsa_note(s: dict[str, float]) -> str:
    return (
        f"rtol={s['rtol']:.0e} atol_factor={s['atol_factor']:g} eps={s['eps']:.0e} "
        f"PI=({s['pcoeff']:g},{s['icoeff']:g})"
    )


def bdf_note(s: dict[str, float]) -> str:
    return f"rtol={s['rtol']:.0e} atol={s['atol']:.1e} (= rtol·{s['atol_factor']:g}·σ²)"


def lsa_row(d: int, label: str, m: dict[str, Any], Lam: np.ndarray, N: int) -> dict[str, Any]:
    res = m["out"]
    return row(
        d,
        label,
        compile_s=m["compile_s"],
        run_s=m["run_s"],
        first_s=m["first_s"],
        runs_s=m["runs_s"],
        steps=res.stats["num_accepted_steps"],
        rejected=res.stats["num_rejected_steps"],
        rel_error=rel_error(Lam, N, res.product),
        t_final=res.t_final,
        stop_reason=res.stop_reason,
        solve_wall_s=res.stats["wall_seconds"],
    )


def stiffness_integral(res: Any, Lam: np.ndarray, N: int) -> float:
    """`max_ij c_ij * int_0^T u(t)^2 dt` from lsa-flow's saved trajectory (trapezoid)."""
    lam = np.linalg.eigvalsh(Lam)
    gam = (1.0 + 1.0 / N) * lam + lam.sum() / N
    c_max = float(np.max(gam * lam) * np.max(lam))
    return c_max * float(np.trapezoid(res.u**2, res.ts))


# ----------------------------------------------------------------------------------------
# Tolerance search
# ----------------------------------------------------------------------------------------


def search_lsa(Lam, N, init, args) -> list[dict[str, Any]]:
    """Every (rtol, atol_factor, eps) of the grid, one timed run each (after compilation).

    Every lsa-flow call of the benchmark has the step budget `--lsa-max-steps` (one budget, so
    one compiled solve: `max_steps` is static): a setting that churns past it cannot be the
    fastest, and would otherwise run to the default 200000 steps.
    """
    tries = []
    for (pc, ic), eps, af, rtol in itertools.product(
        args.lsa_pi, args.lsa_eps, args.lsa_atol_factors, args.lsa_rtols
    ):
        s = lsa_setting(rtol, af, eps, pc, ic)
        try:
            t, res = timed(run_lsa(Lam, N, init, args, s))
        except FlowError as exc:
            tries.append(
                {**s, "search_s": math.nan, "rel_error": math.nan, "failed": str(exc)[:120]}
            )
            continue
        tries.append(
            {
                **s,
                "search_s": t,
                "rel_error": rel_error(Lam, N, res.product),
                "steps": res.stats["num_accepted_steps"],
                "rejected": res.stats["num_rejected_steps"],
                "t_final": res.t_final,
            }
        )
    return tries


def search_bdf(Lam, N, init, T: float, sigma: float, args) -> list[dict[str, Any]]:
    """For each atol factor, rtol from the loosest until the target is met (one run each)."""
    tries = []
    for af in args.bdf_atol_factors:
        for rtol in sorted(args.bdf_rtols, reverse=True):
            s = {"rtol": rtol, "atol_factor": af, "atol": rtol * af * sigma**2}
            try:
                t, out = timed(run_bdf(Lam, N, init, T, s))
            except RuntimeError as exc:
                tries.append(
                    {**s, "search_s": math.nan, "rel_error": math.nan, "failed": str(exc)[:120]}
                )
                continue
            err = rel_error(Lam, N, out["product"])
            tries.append(
                {**s, "search_s": t, "rel_error": err, "steps": out["steps"], "nlu": out["nlu"]}
            )
            if err <= args.target:
                break
    return tries


def choose(
    label: str,
    tries: list[dict[str, Any]],
    make: Callable[[dict[str, Any]], Callable[[], Any]],
    check: Callable[[dict[str, Any]], float],
    args: argparse.Namespace,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The fastest candidate that meets the target on Lambda and on the second Lambda.

    Candidates: settings whose search run met the target. The `--finalists` fastest by the
    search run are re-timed (`--repeats` runs each, interleaved); in order of median time the
    first whose error on the second Lambda (`check`) also meets the target wins. Returns
    `(chosen or None, finalists)`; with no candidate on the second Lambda the fastest on
    Lambda is returned with `second_ok = False`.
    """
    for t in tries:
        t["meets_target"] = bool(t["rel_error"] <= args.target)  # False for NaN
    ok = [t for t in tries if t["meets_target"]]
    if not ok:
        return None, []
    finalists = sorted(ok, key=lambda t: t["search_s"])[: args.finalists]
    fns = [make(f) for f in finalists]
    runs: list[list[float]] = [[] for _ in finalists]
    for _ in range(max(args.repeats, 1)):
        for i, fn in enumerate(fns):
            runs[i].append(timed(fn)[0])
    for f, r in zip(finalists, runs, strict=True):
        f["finalist_runs_s"] = r
        f["finalist_s"] = statistics.median(r)
    finalists.sort(key=lambda t: t["finalist_s"])
    for f in finalists:
        try:
            f["second_error"] = check(f)
        except (FlowError, RuntimeError):
            f["second_error"] = math.nan
        f["second_ok"] = bool(f["second_error"] <= args.target)
        say(
            f"  {label} finalist {f['finalist_s']:.3f} s, error {f['rel_error']:.1e}, "
            f"second Λ {f['second_error']:.1e}"
        )
        if f["second_ok"]:
            return f, finalists
    return finalists[0], finalists


def tuned_row(
    d: int,
    label: str,
    chosen: dict[str, Any] | None,
    tries: list[dict[str, Any]],
    note: str,
    args: argparse.Namespace,
    **kw: Any,
) -> dict[str, Any]:
    n_ok = sum(t["meets_target"] for t in tries)
    if chosen is None:
        return row(
            d,
            label,
            status="no setting met the target",
            note=f"none of {len(tries)} settings met {args.target:g}",
            tolerance_tries=tries,
        )
    status = "ok" if chosen["second_ok"] else "misses target on second Λ"
    return row(
        d,
        label,
        tuned={
            k: chosen[k]
            for k in ("rtol", "atol_factor", "eps", "pcoeff", "icoeff", "atol")
            if k in chosen
        },
        second_error=chosen["second_error"],
        tolerance_tries=tries,
        n_tried=len(tries),
        n_met=n_ok,
        note=f"{note}; {n_ok}/{len(tries)} settings met the target; second Λ "
        f"{chosen['second_error']:.1e}",
        status=status,
        **kw,
    )


# ----------------------------------------------------------------------------------------
# One size
# ----------------------------------------------------------------------------------------


def bench_size(
    d: int, args: argparse.Namespace, calib: list[float], chosen_lsa: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    N = args.N
    Lam, init = setting(d, args.kappa, N, args.seed)
    Lam2, init2 = setting(d, args.kappa, N, args.seed + 1)
    sigma, sigma2 = float(init.u), float(init2.u)

    # lsa-flow at its defaults: the first call of this d (compile time) and T_ref.
    say(f"d = {d}: lsa-flow, default tolerances (first call compiles) ...")
    m_ref = measure(run_lsa(Lam, N, init, args), args.repeats)
    ref = m_ref["out"]
    T_ref = ref.t_final
    compile_s = m_ref["compile_s"]
    r_dflt = lsa_row(d, "lsa-flow, default tol", m_ref, Lam, N)
    e, o = EigenMethod(), FlowOptions()
    r_dflt["note"] = (
        f"EigenMethod(rtol={e.rtol:g}, atol_factor={e.atol_factor:g}, "
        f"PI=({e.pcoeff:g},{e.icoeff:g})), FlowOptions(eps={o.eps:g}); "
        f"its end time T_ref = {T_ref:.1f} is the baselines' interval"
    )

    say(f"d = {d}: lsa-flow, second Λ (other key), default tolerances ...")
    m2 = measure(run_lsa(Lam2, N, init2, args), 1)
    T_ref2 = m2["out"].t_final
    r2 = lsa_row(d, "lsa-flow, new Λ", m2, Lam2, N)
    recompiled = m2["compile_s"] > 0.5 * max(compile_s, 1e-9)
    r2["recompiled"] = bool(recompiled)
    r2["note"] = "default tol; first call " + ("RECOMPILED" if recompiled else "did not recompile")

    n_lsa = len(args.lsa_rtols) * len(args.lsa_atol_factors) * len(args.lsa_eps) * len(args.lsa_pi)
    say(f"d = {d}: lsa-flow tolerance search ({n_lsa} settings) ...")
    lsa_tries = search_lsa(Lam, N, init, args)

    def lsa_check(s: dict[str, Any]) -> float:
        return rel_error(Lam2, N, run_lsa(Lam2, N, init2, args, s)().product)

    c_lsa, _ = choose(
        "lsa-flow", lsa_tries, lambda s: run_lsa(Lam, N, init, args, s), lsa_check, args
    )

    say(f"d = {d}: scipy BDF tolerance search on [0, T_ref = {T_ref:.1f}] ...")
    bdf_tries = search_bdf(Lam, N, init, T_ref, sigma, args)

    def bdf_check(s: dict[str, Any]) -> float:
        s2 = {**s, "atol": s["rtol"] * s["atol_factor"] * sigma2**2}
        return rel_error(Lam2, N, run_bdf(Lam2, N, init2, T_ref2, s2)()["product"])

    c_bdf, _ = choose(
        "scipy BDF", bdf_tries, lambda s: run_bdf(Lam, N, init, T_ref, s), bdf_check, args
    )

    # Final timing of the two chosen settings, interleaved so that load drift hits both.
    say(f"d = {d}: final timing, lsa-flow and scipy BDF interleaved ...")
    finals: dict[str, list[float]] = {"lsa": [], "bdf": []}
    outs: dict[str, Any] = {}
    fns = {}
    if c_lsa is not None:
        fns["lsa"] = run_lsa(Lam, N, init, args, c_lsa)
    if c_bdf is not None:
        fns["bdf"] = run_bdf(Lam, N, init, T_ref, c_bdf)
    for _ in range(args.final_repeats):
        for k, fn in fns.items():
            t, outs[k] = timed(fn)
            finals[k].append(t)

    rows = []
    if c_lsa is not None:
        res = outs["lsa"]
        chosen_lsa[d] = c_lsa
        r_lsa = tuned_row(
            d,
            "lsa-flow",
            c_lsa,
            lsa_tries,
            lsa_note(c_lsa),
            args,
            compile_s=compile_s,
            run_s=statistics.median(finals["lsa"]),
            min_s=min(finals["lsa"]),
            runs_s=finals["lsa"],
            steps=res.stats["num_accepted_steps"],
            rejected=res.stats["num_rejected_steps"],
            rel_error=rel_error(Lam, N, res.product),
            t_final=res.t_final,
            stop_reason=res.stop_reason,
        )
    else:
        r_lsa = tuned_row(d, "lsa-flow", None, lsa_tries, "", args)
    rows += [r_lsa, r2, r_dflt]
    if c_bdf is not None:
        out = outs["bdf"]
        rows.append(
            tuned_row(
                d,
                "scipy BDF",
                c_bdf,
                bdf_tries,
                bdf_note(c_bdf),
                args,
                run_s=statistics.median(finals["bdf"]),
                min_s=min(finals["bdf"]),
                runs_s=finals["bdf"],
                steps=out["steps"],
                rel_error=rel_error(Lam, N, out["product"]),
                nfev=out["nfev"],
                njev=out["njev"],
                nlu=out["nlu"],
                t_final=out["t_final"],
            )
        )
    else:
        rows.append(tuned_row(d, "scipy BDF", None, bdf_tries, "", args))

    rows.append(tsit5_row(d, Lam, N, init, ref, T_ref, args, calib))
    for r in rows:
        r["ratio"] = r.get("est_run_s", r["run_s"]) / r_lsa["run_s"]
    return rows


def tsit5_row(d, Lam, N, init, ref, T, args, calib: list[float]) -> dict[str, Any]:
    """diffrax Tsit5 on [0, T], run for d <= --tsit5-max-d, estimated above."""
    S = stiffness_integral(ref, Lam, N)
    direct = DirectMethod(rtol=args.tsit5_rtol)
    # A short probe (max_steps = k, stopped by FlowError) gives the compile time (first minus
    # second call; compilation does not depend on max_steps) and the time of one step. A full
    # run's noise on a shared machine (seconds on a minute) would swamp the compile time.
    # Auto probe length: 2000 steps up to d = 50, fewer above (a step costs ~d^3), so that the
    # probe stays a few seconds and its compile-time difference is not swamped by noise.
    k = args.tsit5_probe_steps or min(2000, max(100, int(2000 * (50 / d) ** 2)))
    say(f"d = {d}: diffrax Tsit5 {k}-step probe ...")
    probe_opts = FlowOptions(eps=BASELINE_EPS, t_end=T, max_steps=k)
    probe_hit_max = []

    def probe() -> None:
        try:
            gradient_flow(Lam, N, init, method=direct, options=probe_opts)
        except FlowError as exc:
            probe_hit_max.append("max_steps" in str(exc))

    mp = measure(probe, 1)
    per_step = mp["run_s"] / k
    probe_note = "" if all(probe_hit_max) and probe_hit_max else " (probe ended early!)"
    if d > args.tsit5_max_d:
        c = statistics.median(calib) if calib else 3.0
        est_steps = S / c
        est = est_steps * per_step
        how = "calibrated on measured d" if calib else "uncalibrated, stability constant 3"
        return row(
            d,
            "diffrax Tsit5",
            status="skipped",
            compile_s=mp["compile_s"],
            est_run_s=est,
            est_steps=est_steps,
            per_step_s=per_step,
            stiffness_integral=S,
            note=(
                f"skipped (d > --tsit5-max-d); est. {est:.0f} s from {est_steps:.2e} steps "
                f"({how}) × {per_step * 1e3:.2f} ms/step (from a {k}-step probe{probe_note})"
            ),
        )
    say(f"d = {d}: diffrax Tsit5 on [0, T_ref] (may take minutes) ...")
    opts = FlowOptions(eps=BASELINE_EPS, t_end=T, max_steps=args.tsit5_max_steps)
    try:
        mt = measure(
            lambda: gradient_flow(Lam, N, init, method=direct, options=opts),
            args.tsit5_repeats,
        )
    except FlowError as exc:
        return row(d, "diffrax Tsit5", status="failed", note=str(exc)[:200])
    res = mt["out"]
    err = rel_error(Lam, N, res.product)
    n_all = res.stats["num_steps"]
    calib.append(S / n_all)
    return row(
        d,
        "diffrax Tsit5",
        compile_s=mp["compile_s"],
        run_s=mt["run_s"],
        first_s=mt["first_s"],
        runs_s=mt["runs_s"],
        steps=res.stats["num_accepted_steps"],
        rejected=res.stats["num_rejected_steps"],
        rel_error=err,
        t_final=res.t_final,
        stop_reason=res.stop_reason,
        rtol=args.tsit5_rtol,
        atol=res.stats["atol"],
        per_step_s=mt["run_s"] / n_all,
        probe_per_step_s=per_step,
        stiffness_integral=S,
        note=(
            f"rtol={args.tsit5_rtol:.0e} atol={res.stats['atol']:.1e} (not tuned); "
            f"{args.tsit5_repeats} timed run(s) after a first full call of "
            f"{mt['first_s']:.1f} s; compile from a {k}-step probe{probe_note}"
        ),
        status="ok" if err <= args.target else "error above target",
    )


def bench_big(
    d: int, args: argparse.Namespace, chosen_lsa: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    N = args.N
    Lam, init = setting(d, args.kappa, N, args.seed)
    if chosen_lsa:
        d_from = max(chosen_lsa)
        s = chosen_lsa[d_from]
        where = f"setting chosen at d = {d_from}"
    else:
        s = lsa_setting(
            args.lsa_rtols[-1], EigenMethod().atol_factor, min(args.lsa_eps), *args.lsa_pi[0]
        )
        where = "no tuned size: tightest grid rtol, smallest eps"
    s = lsa_setting(s["rtol"], s["atol_factor"], s["eps"], s["pcoeff"], s["icoeff"])
    say(f"d = {d}: lsa-flow alone ({lsa_note(s)}) ...")
    m = measure(run_lsa(Lam, N, init, args, s), args.repeats)
    r = lsa_row(d, "lsa-flow", m, Lam, N)
    eig_s = statistics.median(timed(lambda: np.linalg.eigh(Lam))[0] for _ in range(3))
    r["eigh_s"] = eig_s
    r["ratio"] = 1.0
    r["tuned"] = s
    r["note"] = f"{lsa_note(s)} ({where}); run includes eigh ({eig_s:.2f} s alone)"
    say(f"d = {d}: lsa-flow alone, default tolerances ...")
    md = measure(run_lsa(Lam, N, init, args), args.repeats)
    rd = lsa_row(d, "lsa-flow, default tol", md, Lam, N)
    e, o = EigenMethod(), FlowOptions()
    rd["note"] = f"EigenMethod(rtol={e.rtol:g}), FlowOptions(eps={o.eps:g})"
    rd["ratio"] = rd["run_s"] / r["run_s"]
    return [r, rd]


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_s(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["d", "method", "compile s", "run s", "steps (rej)", "rel. error", "vs lsa-flow"]
    lines = []
    for r in rows:
        if r["status"] == "skipped":
            run = f"~{r['est_run_s']:.0f} (est.)"
            steps = f"~{r['est_steps']:.2e} (est.)"
            ratio = f"~{r['ratio']:.0f}× (est.)"
            comp = fmt_s(r["compile_s"])
        else:
            run, comp = fmt_s(r["run_s"]), fmt_s(r["compile_s"])
            steps = "—" if r["steps"] is None else str(r["steps"])
            if r["rejected"] is not None:
                steps += f" ({r['rejected']})"
            ratio = "—" if not math.isfinite(r["ratio"]) else f"{r['ratio']:.2f}×"
        err = "—" if not math.isfinite(r["rel_error"]) else f"{r['rel_error']:.2e}"
        lines.append([str(r["d"]), r["method"], comp, run, steps, err, ratio])
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]
    sep = "  "
    print(sep.join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(sep.join("-" * w for w in widths))
    for r, line in zip(rows, lines, strict=True):
        print(sep.join(x.ljust(w) for x, w in zip(line, widths, strict=True)))
        if r["note"]:
            print(" " * (widths[0] + len(sep)) + "  ↳ " + r["note"])


def fmt_e(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.1e}"


def fmt_grid(xs: list[float]) -> str:
    return "{" + ", ".join(f"{x:g}" for x in xs) + "}"


def print_tuning(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The chosen settings per d, then each search grid (error, one-run time; ✓ meets)."""
    tuned = [r for r in rows if "tolerance_tries" in r]
    print(
        f"Tuned tolerances (fastest setting with error <= {args.target:g} on Λ and on a second "
        "Λ; run s: median of the interleaved final runs):"
    )
    head = ["d", "method", "chosen", "error", "error Λ₂", "run s", "met/tried", "finalists: s"]
    lines = []
    for r in tuned:
        fin = [t for t in r["tolerance_tries"] if "finalist_s" in t]
        fin.sort(key=lambda t: t["finalist_s"])
        short = ", ".join(
            f"{t['rtol']:.0e}/{t['atol_factor']:g}"
            + (f"/{t['eps']:.0e}/PI({t['pcoeff']:g},{t['icoeff']:g})" if "eps" in t else "")
            + f": {t['finalist_s']:.3f}"
            + ("" if t.get("second_ok", True) else " (✗ Λ₂)")
            for t in fin
        )
        s = r.get("tuned")
        chosen = "—" if s is None else (lsa_note(s) if "eps" in s else bdf_note(s))
        lines.append(
            [
                str(r["d"]),
                r["method"],
                chosen,
                fmt_e(r["rel_error"]),
                fmt_e(r.get("second_error", math.nan)),
                fmt_s(r["run_s"]),
                f"{r.get('n_met', 0)}/{len(r['tolerance_tries'])}",
                short,
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)))
    print("  (finalists: rtol/atol_factor[/eps/PI(pcoeff,icoeff)]: median s of the re-timed runs)")
    print()
    print("Search grids (per cell: rel. error, time of the one search run; ✓ meets the target):")
    for r in tuned:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for t in r["tolerance_tries"]:
            key = (
                (t["atol_factor"], t["eps"], t["pcoeff"], t["icoeff"])
                if "eps" in t
                else (t["atol_factor"],)
            )
            groups.setdefault(key, []).append(t)
        for key, ts in groups.items():
            head_ = f"atol_factor {key[0]:g}" + (
                f", eps {key[1]:.0e}, PI ({key[2]:g}, {key[3]:g})" if len(key) > 1 else ""
            )
            cells = " | ".join(
                f"{t['rtol']:.0e} "
                + (
                    "failed"
                    if not math.isfinite(t["rel_error"])
                    else f"{t['rel_error']:.1e}{' ✓' if t['meets_target'] else ''} "
                    f"{t['search_s']:.2f}s"
                )
                for t in ts
            )
            print(f"  d={r['d']} {r['method']}, {head_}: {cells}")


def verdicts(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by = {(r["d"], r["method"]): r for r in rows}
    lsa200, bdf200 = by.get((200, "lsa-flow")), by.get((200, "scipy BDF"))
    if lsa200 and bdf200:
        speedup = bdf200["run_s"] / lsa200["run_s"]
        both_met = all(r["status"] == "ok" for r in (lsa200, bdf200))
        ok = speedup >= 10 and both_met and lsa200["rel_error"] <= args.target
        out["d200_speedup_vs_bdf"] = {
            "pass": ok,
            "speedup": speedup,
            "lsa_run_s": lsa200["run_s"],
            "bdf_run_s": bdf200["run_s"],
            "lsa_tuned": lsa200.get("tuned"),
            "bdf_tuned": bdf200.get("tuned"),
            "lsa_s_for_10x": bdf200["run_s"] / 10,
            "speedup_of_minima": bdf200.get("min_s", math.nan) / lsa200.get("min_s", math.nan),
            "lsa_runs_s": lsa200.get("runs_s"),
            "bdf_runs_s": bdf200.get("runs_s"),
        }
        print(
            f"Target 1 (d = 200, >= 10× faster than scipy BDF, both at their tuned tolerances): "
            f"{'PASS' if ok else 'FAIL'} — {speedup:.1f}× ({bdf200['run_s']:.3f} s / "
            f"{lsa200['run_s']:.3f} s, medians of {len(lsa200.get('runs_s') or [])} interleaved "
            f"runs; ratio of the minima {out['d200_speedup_vs_bdf']['speedup_of_minima']:.1f}×); "
            f"10× needs lsa-flow <= {bdf200['run_s'] / 10:.3f} s"
        )
        if lsa200.get("tuned") and bdf200.get("tuned"):
            print(f"  lsa-flow {lsa_note(lsa200['tuned'])}; scipy BDF {bdf_note(bdf200['tuned'])}")
        if not both_met:
            print(f"  status: lsa-flow {lsa200['status']}, scipy BDF {bdf200['status']}")
        dflt = by.get((200, "lsa-flow, default tol"))
        if dflt:
            print(
                f"  with lsa-flow's default tolerances: {bdf200['run_s'] / dflt['run_s']:.1f}× "
                f"({dflt['run_s']:.3f} s, error {dflt['rel_error']:.1e})"
            )
    else:
        print("Target 1 (d = 200 vs scipy BDF): not run")
    big = by.get((args.big_d, "lsa-flow")) if args.big_d else None
    if big and args.big_d not in args.sizes:
        ok = big["run_s"] <= 5.0 and big["rel_error"] <= args.target
        out["big_d_time"] = {
            "pass": ok,
            "d": args.big_d,
            "run_s": big["run_s"],
            "compile_s": big["compile_s"],
            "rel_error": big["rel_error"],
        }
        print(
            f"Target 2 (d = {args.big_d} in <= 5 s incl. eigh, error <= {args.target:g}): "
            f"{'PASS' if ok else 'FAIL'} — {big['run_s']:.2f} s after compilation "
            f"(compile {big['compile_s']:.1f} s extra on the first call), "
            f"error {big['rel_error']:.2e}"
        )
        dflt = by.get((args.big_d, "lsa-flow, default tol"))
        if dflt:
            print(
                f"  with lsa-flow's default tolerances: {dflt['run_s']:.2f} s, "
                f"error {dflt['rel_error']:.1e}"
            )
    else:
        print("Target 2 (large d, lsa-flow alone): not run" + (" (--quick)" if args.quick else ""))
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    above = [r for r in rows if math.isfinite(r["rel_error"]) and r["rel_error"] > args.target]
    print(
        f"Accuracy (every run <= {args.target:g}): "
        + (
            "all met"
            if not above and not bad
            else "; ".join(
                f"d={r['d']} {r['method']}: {r['status']} {r['rel_error']:.2e}" for r in above + bad
            )
        )
    )
    recomp = [r for r in rows if r.get("recompiled")]
    reused = [r for r in rows if r.get("recompiled") is False]
    if recomp:
        print(
            "Compile cache: lsa-flow RECOMPILED for a new Λ of the same d at "
            + ", ".join(f"d={r['d']} (+{r['compile_s']:.1f} s)" for r in recomp)
        )
    if reused:
        print(
            "Compile cache: lsa-flow reused its compiled solve for a new Λ of the same d at "
            + ", ".join(f"d={r['d']} (first call {r['first_s']:.2f} s)" for r in reused)
        )
    out["recompiled_new_lambda_at_d"] = [r["d"] for r in recomp]
    return out


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


GRIDS = {
    # option: (full run, --quick)
    "lsa_rtols": ([1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11], [1e-8, 1e-9, 1e-10]),
    "lsa_atol_factors": ([1.0, 1e-1, 1e-2, 1e-3], [1e-2]),
    "lsa_eps": ([1e-8, 3e-9, 1e-9], [3e-9]),
    "bdf_rtols": ([1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11], [1e-5, 1e-6, 1e-7, 1e-8]),
    "bdf_atol_factors": ([1.0, 1e-1, 1e-2, 1e-3, 1e-4], [1.0, 1e-2]),
}


#: lsa-flow's step-size controller coefficients (pcoeff, icoeff) searched: (full run, --quick)
LSA_PI = ([(0.3, 0.3), (0.2, 0.4), (0.0, 1.0)], [(0.3, 0.3)])


def _pi_pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PCOEFF,ICOEFF, got {text!r}") from None
    return a, b


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 2)[0] + " " + __doc__.split("\n", 2)[1]
    )
    p.add_argument("--N", type=int, default=20, help="training prompt length (default 20)")
    p.add_argument("--kappa", type=float, default=100.0, help="condition number of Lambda")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 10 50 200")
    p.add_argument("--big-d", type=int, default=None, help="lsa-flow-only size (0: skip; 1000)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (about a minute): d = 10, small grids, 2 repeats, Tsit5 estimated",
    )
    p.add_argument("--seed", type=int, default=0, help="key of Lambda; seed + 1: second Lambda")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; quick 2)")
    p.add_argument(
        "--finalists", type=int, default=None, help="candidates re-timed (default 3; quick 2)"
    )
    p.add_argument(
        "--final-repeats",
        type=int,
        default=None,
        help="interleaved rounds timing the chosen lsa-flow and BDF settings (default 5; quick 2)",
    )
    p.add_argument("--target", type=float, default=1e-8, help="required relative error")
    p.add_argument(
        "--lsa-max-steps",
        type=int,
        default=50_000,
        help="step budget of every lsa-flow call (one budget: one compiled solve per d)",
    )
    for name, (full, _) in GRIDS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            nargs="+",
            default=None,
            help="search grid (default " + " ".join(f"{x:g}" for x in full) + ")",
        )
    p.add_argument(
        "--lsa-pi",
        type=_pi_pair,
        nargs="+",
        default=None,
        help="step-size controller coefficients PCOEFF,ICOEFF of lsa-flow to search (default "
        + " ".join(f"{a:g},{b:g}" for a, b in LSA_PI[0])
        + "; (0,1) is the plain integral controller)",
    )
    p.add_argument("--tsit5-rtol", type=float, default=1e-10)
    p.add_argument(
        "--tsit5-max-d",
        type=int,
        default=None,
        help="run Tsit5 only up to this d, estimate above (default 50; 0 with --quick)",
    )
    p.add_argument("--tsit5-max-steps", type=int, default=3_000_000)
    p.add_argument("--tsit5-repeats", type=int, default=1)
    p.add_argument(
        "--tsit5-probe-steps",
        type=int,
        default=0,
        help="steps of the Tsit5 probe run (compile and per-step time); 0: auto, 2000 up to "
        "d = 50, ~2000 (50/d)^2 above",
    )
    p.add_argument("--blas-threads", type=int, default=1, help="limit BLAS threads (0: leave)")
    p.add_argument("--json", type=Path, default=None, help="save results and provenance here")
    args = p.parse_args(argv)
    q = args.quick
    if args.lsa_pi is None:
        args.lsa_pi = LSA_PI[1] if q else LSA_PI[0]
    for name, (full, quick) in GRIDS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    defaults = {
        "sizes": ([10], [10, 50, 200]),
        "big_d": (0, 1000),
        "repeats": (2, 3),
        "finalists": (2, 3),
        "final_repeats": (2, 5),
        "tsit5_max_d": (0, 50),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if min(args.repeats, args.finalists, args.final_repeats) < 1:
        p.error("--repeats, --finalists and --final-repeats must be >= 1")
    return args


def code_fingerprint() -> dict[str, str]:
    """The code this process imported: sha256 of lsa/flow.py and the git state of lsa/.

    Taken at start, because the provenance written at the end can describe a later checkout.
    """
    path = Path(lsa.flow.__file__)
    out = {"lsa_flow_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    try:
        git = ["git", "-C", str(path.parent)]
        rev = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        out["git"] = rev.stdout.strip() or "unknown"
        out["lsa_dirty"] = "yes" if dirty.stdout.strip() else "no"
    except (OSError, subprocess.SubprocessError):
        out["git"] = "unknown"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = code_fingerprint()
    limiter: Any = contextlib.nullcontext()
    blas_note = "BLAS threads unchanged"
    if args.blas_threads > 0:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            blas_note = "threadpoolctl not installed: BLAS threads unchanged"
        else:
            limiter = threadpool_limits(limits=args.blas_threads, user_api="blas")
            blas_note = f"BLAS limited to {args.blas_threads} thread(s)"
    print(
        f"Reduced-flow benchmark: kappa = {args.kappa:g}, N = {args.N}, sigma = 0.5 sigma_max, "
        f"target relative error {args.target:g}; {blas_note}"
    )
    print(
        "Tolerance search (fastest setting meeting the target on Λ and on a second Λ): "
        f"lsa-flow EigenMethod(rtol ∈ {fmt_grid(args.lsa_rtols)}, atol_factor ∈ "
        f"{fmt_grid(args.lsa_atol_factors)}), FlowOptions(eps ∈ {fmt_grid(args.lsa_eps)}); "
        f"scipy BDF rtol ∈ {fmt_grid(args.bdf_rtols)}, atol = rtol·f·σ², f ∈ "
        f"{fmt_grid(args.bdf_atol_factors)} (per f, loosest rtol first, up to the first that "
        f"meets); {args.finalists} finalists × {args.repeats} runs. Tsit5 (not tuned): "
        f"DirectMethod(rtol={args.tsit5_rtol:g}), atol factor 1e-2, run for "
        f"d <= {args.tsit5_max_d}"
    )
    print(
        f"code at start: git {code['git']} (lsa/ modified: {code.get('lsa_dirty', '?')}), "
        f"lsa/flow.py sha256 {code['lsa_flow_sha256']}"
    )
    dev = check_baseline(args.N, args.seed)
    print(f"scipy baseline self-test (field vs Lemma 5.2, Jacobian vs differences): {dev:.1e}")
    rows: list[dict[str, Any]] = []
    calib: list[float] = []
    chosen_lsa: dict[int, dict[str, Any]] = {}
    with limiter:
        for d in args.sizes:
            rows += bench_size(d, args, calib, chosen_lsa)
        if args.big_d and args.big_d not in args.sizes:
            rows += bench_big(args.big_d, args, chosen_lsa)
    print()
    print_table(rows)
    print(
        "compile s = first call minus the median of the timed calls (lsa-flow: the first call "
        "of this d, at default tolerances; Tsit5: of a short probe); scipy compiles nothing. "
        "lsa-flow and scipy BDF rows: tuned tolerances, run s = median of interleaved runs."
    )
    print()
    print_tuning(rows, args)
    print()
    print(
        "Run-time ratios vs lsa-flow, both at tuned tolerances (after compilation; median of the "
        "interleaved runs, in brackets the ratio of their minima):"
    )
    by = {(r["d"], r["method"]): r for r in rows}
    for d in args.sizes:
        parts = []
        for r in rows:
            if r["d"] != d or r["method"] not in ("scipy BDF", "diffrax Tsit5"):
                continue
            part = f"{r['method']} {r['ratio']:.1f}×"
            if r["status"] == "skipped":
                part += " (est.)"
            lsa_min = by[(d, "lsa-flow")].get("min_s", math.nan)
            if "min_s" in r:
                part += f" [{r['min_s'] / lsa_min:.1f}×]"
            parts.append(part)
        print(f"  d = {d}: " + ", ".join(parts))
    print()
    targets = verdicts(rows, args)
    if args.json:
        from simulations.provenance import provenance, write_json

        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {
            "benchmark": "reduced_flow",
            "settings": settings,
            "blas": blas_note,
            "scipy_version": scipy.__version__,
            "rows": rows,
            "targets": targets,
            "code_at_start": code,
            "provenance": provenance(),
        }
        write_json(args.json, payload)
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
