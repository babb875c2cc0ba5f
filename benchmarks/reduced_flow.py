"""Benchmark of the reduced population gradient flow: lsa-flow against two baselines.

What is compared
----------------
The reduced flow of ZFB Lemma 5.2 in `(U, u)`, started from the paper's initialisation
(`paper_init`, `sigma = 0.5 sigma_max`) on `Lambda = spread_covariance(d, kappa=100)` (geometric
eigenvalues, trace d, Haar-rotated eigenbasis) with `N = 20`. Its limit is
`u U -> Gamma^{-1}`, `Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I`. Every method must reach a
relative error `||u U - Gamma^{-1}||_F / ||Gamma^{-1}||_F <= 1e-8`, computed here from `Lambda`
directly (independent of lsa's internals). Three solvers:

(i)   lsa-flow, `gradient_flow(..., method=EigenMethod(rtol))`: Lambda's eigenbasis, closed-form
      off-diagonals (state d + 2), Kvaerno5 with an O(d) bordered-diagonal Newton solve, ended
      by lsa-flow's own stopping rule (`FlowOptions(eps)`). Its end time `T` is the interval
      the baselines integrate.
(ii)  scipy `solve_ivp(method="BDF")` on the full `d^2 + 1` state `(V = Q^T U Q, u)` in Lambda's
      eigenbasis, where the vector field is elementwise, given the analytic sparse (arrowhead:
      diagonal plus the u row and column) Jacobian as a csc matrix. This is the strongest
      baseline listed in the solver notes. Its timed call includes `np.linalg.eigh` and the
      rotation back, as lsa-flow's does. (A subclass of scipy's BDF that only counts accepted
      steps is passed as the method, because `solve_ivp` does not report them.)
(iii) diffrax Tsit5 on the plain reduced ODE in the original coordinates
      (`gradient_flow(..., method=DirectMethod(rtol))`, `t_end = T`). Tsit5 is explicit and
      stability-limited on kappa = 100 (1e5-2e6 steps), so it is run only for d up to
      `--tsit5-max-d`; larger sizes are *estimated* (printed as such) from a short probe run's
      per-step time and a step count extrapolated from the measured sizes by the stiffness
      integral `max_ij c_ij * int_0^T u^2 dt` (`c_ij = gamma_i lambda_i lambda_j`).

Both baselines are run with lsa-flow's stopping rule made inert (`eps = 1e-13` for Tsit5; scipy
has none) so that all three integrate the same interval `[0, T]`. With lsa-flow's own rule the
Tsit5 solve stops early and can miss 1e-8 (seen: 1.06e-8 at d = 50).

Timing
------
"compile s" = first call minus the median of the next `--repeats` calls ("run s", the wall time
after compilation). Tsit5 is timed with `--tsit5-repeats` (default 1) full runs after the first,
because one run takes up to minutes, and its compile time is taken from a short probe run
(`--tsit5-probe-steps`, first minus second call): on a shared machine the noise of a full run
exceeds the compilation. For scipy "compile s" is only the first-call overhead (no compilation;
~0, possibly slightly negative). The scipy tolerance search runs before the timed calls.
lsa-flow is also run at its default tolerances (rtol 1e-11, eps 1e-10; row "default tol") on
the same Lambda, and timed on a second Lambda of the same d (other key): a solver that caches its
compiled solve per (d, options) runs it at the "run s" cost; a "compile s" of seconds on that row
means it recompiled. Then lsa-flow alone at d = 1000 (`--big-d`), total wall of the
`gradient_flow` call (eigendecomposition included) after compilation.

Targets (from the issue): at d = 200 lsa-flow at least 10x faster than (ii); at d = 1000 lsa-flow
in at most 5 s including the eigendecomposition, at relative error <= 1e-8.

BLAS threads: by default BLAS is limited to one thread (`--blas-threads 1`, via threadpoolctl).
On a small shared machine OpenBLAS's spinning worker threads made a 200 x 200 `eigh` take
0.55 s instead of 4 ms when another job was running; one thread gives stable numbers for all
methods alike. `--blas-threads 0` leaves BLAS as it is.

Usage: `python benchmarks/reduced_flow.py [--quick] [--json PATH] [--N 20] ...`
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import scipy
import scipy.sparse as sp
from scipy.integrate import BDF, solve_ivp

import lsa
import lsa.flow
from lsa.flow import DirectMethod, EigenMethod, FlowError, FlowOptions, gradient_flow

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


def run_lsa(Lam, N, init, args, defaults: bool = False) -> Callable[[], Any]:
    """lsa-flow with the benchmark's tolerances, or with its own defaults (`defaults=True`)."""
    method = EigenMethod() if defaults else EigenMethod(rtol=args.lsa_rtol)
    options = FlowOptions() if defaults else FlowOptions(eps=args.lsa_eps)
    return lambda: gradient_flow(Lam, N, init, method=method, options=options)


def default_tol_row(d, Lam, N, init, args, r_lsa) -> dict[str, Any]:
    """lsa-flow at its default tolerances (rtol 1e-11, eps 1e-10), same Lambda: for comparison
    with the looser benchmark setting; tolerances are traced, so this should not recompile."""
    say(f"d = {d}: lsa-flow, default tolerances ...")
    m = measure(run_lsa(Lam, N, init, args, defaults=True), args.repeats)
    r = lsa_row(d, "lsa-flow, default tol", m, Lam, N)
    e, o = EigenMethod(), FlowOptions()
    r["note"] = f"EigenMethod(rtol={e.rtol:g}), FlowOptions(eps={o.eps:g})"
    r["ratio"] = r["run_s"] / r_lsa["run_s"]
    return r


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


def bench_size(d: int, args: argparse.Namespace, calib: list[float]) -> list[dict[str, Any]]:
    N, rows = args.N, []
    Lam, init = setting(d, args.kappa, N, args.seed)
    sigma = float(init.u)
    say(f"d = {d}: lsa-flow ...")
    m = measure(run_lsa(Lam, N, init, args), args.repeats)
    lsa_res = m["out"]
    T = lsa_res.t_final
    r_lsa = lsa_row(d, "lsa-flow", m, Lam, N)
    rows.append(r_lsa)

    say(f"d = {d}: lsa-flow, second Lambda (other key) ...")
    Lam2, init2 = setting(d, args.kappa, N, args.seed + 1)
    m2 = measure(run_lsa(Lam2, N, init2, args), 1)
    r2 = lsa_row(d, "lsa-flow, new Λ", m2, Lam2, N)
    recompiled = m2["compile_s"] > 0.5 * max(r_lsa["compile_s"], 1e-9)
    r2["recompiled"] = bool(recompiled)
    r2["note"] = "first call RECOMPILED" if recompiled else "no recompilation"
    rows.append(r2)
    rows.append(default_tol_row(d, Lam, N, init, args, r_lsa))

    say(f"d = {d}: scipy BDF on [0, T = {T:.1f}] ...")
    rtol = args.bdf_rtol
    tries = []
    for _ in range(3):  # tighten until the endpoint error meets the target
        atol = rtol * args.bdf_atol_factor * sigma**2
        probe = scipy_bdf(Lam, N, init, T, rtol, atol)
        err = rel_error(Lam, N, probe["product"])
        tries.append({"rtol": rtol, "atol": atol, "rel_error": err})
        if err <= args.target:
            break
        rtol /= 10
    ms = measure(lambda: scipy_bdf(Lam, N, init, T, rtol, atol), args.repeats)
    out = ms["out"]
    err = rel_error(Lam, N, out["product"])
    note = f"rtol={rtol:.0e} atol={atol:.1e}"
    if len(tries) > 1:
        note += f" (tightened after {len(tries) - 1} tr{'y' if len(tries) == 2 else 'ies'})"
    rows.append(
        row(
            d,
            "scipy BDF",
            compile_s=ms["compile_s"],
            run_s=ms["run_s"],
            first_s=ms["first_s"],
            runs_s=ms["runs_s"],
            steps=out["steps"],
            rel_error=err,
            nfev=out["nfev"],
            njev=out["njev"],
            nlu=out["nlu"],
            rtol=rtol,
            atol=atol,
            tolerance_tries=tries,
            note=note,
            status="ok" if err <= args.target else "error above target",
        )
    )

    S = stiffness_integral(lsa_res, Lam, N)
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
    if d <= args.tsit5_max_d:
        say(f"d = {d}: diffrax Tsit5 on [0, T] (may take minutes) ...")
        opts = FlowOptions(eps=BASELINE_EPS, t_end=T, max_steps=args.tsit5_max_steps)
        try:
            mt = measure(
                lambda: gradient_flow(Lam, N, init, method=direct, options=opts),
                args.tsit5_repeats,
            )
        except FlowError as exc:
            rows.append(row(d, "diffrax Tsit5", status="failed", note=str(exc)[:200]))
        else:
            res = mt["out"]
            err = rel_error(Lam, N, res.product)
            n_all = res.stats["num_steps"]
            calib.append(S / n_all)
            rows.append(
                row(
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
                        f"rtol={args.tsit5_rtol:.0e} atol={res.stats['atol']:.1e}; "
                        f"{args.tsit5_repeats} timed run(s) after a first full call of "
                        f"{mt['first_s']:.1f} s; compile from a {k}-step probe{probe_note}"
                    ),
                    status="ok" if err <= args.target else "error above target",
                )
            )
    else:
        c = statistics.median(calib) if calib else 3.0
        est_steps = S / c
        est = est_steps * per_step
        how = "calibrated on measured d" if calib else "uncalibrated, stability constant 3"
        rows.append(
            row(
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
        )
    for r in rows:
        r["ratio"] = (r.get("est_run_s", r["run_s"])) / r_lsa["run_s"]
    return rows


def bench_big(d: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    N = args.N
    Lam, init = setting(d, args.kappa, N, args.seed)
    say(f"d = {d}: lsa-flow alone ...")
    m = measure(run_lsa(Lam, N, init, args), args.repeats)
    r = lsa_row(d, "lsa-flow", m, Lam, N)
    eig_s = statistics.median(timed(lambda: np.linalg.eigh(Lam))[0] for _ in range(3))
    r["eigh_s"] = eig_s
    r["ratio"] = 1.0
    r["note"] = f"run includes eigh ({eig_s:.2f} s alone) and validation"
    return [r, default_tol_row(d, Lam, N, init, args, r)]


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


def verdicts(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by = {(r["d"], r["method"]): r for r in rows}
    lsa200, bdf200 = by.get((200, "lsa-flow")), by.get((200, "scipy BDF"))
    if lsa200 and bdf200:
        speedup = bdf200["run_s"] / lsa200["run_s"]
        ok = speedup >= 10 and lsa200["rel_error"] <= args.target
        out["d200_speedup_vs_bdf"] = {
            "pass": ok,
            "speedup": speedup,
            "lsa_run_s": lsa200["run_s"],
            "bdf_run_s": bdf200["run_s"],
        }
        print(
            f"Target 1 (d = 200, >= 10× faster than scipy BDF): {'PASS' if ok else 'FAIL'} — "
            f"{speedup:.1f}× ({bdf200['run_s']:.3f} s / {lsa200['run_s']:.3f} s)"
        )
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--N", type=int, default=20, help="training prompt length (default 20)")
    p.add_argument("--kappa", type=float, default=100.0, help="condition number of Lambda")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--big-d", type=int, default=1000, help="lsa-flow-only size (0: skip)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: d in {10, 50}, no big d, Tsit5 at d = 10"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the first call")
    p.add_argument("--target", type=float, default=1e-8, help="required relative error")
    p.add_argument("--lsa-rtol", type=float, default=1e-9, help="EigenMethod rtol")
    p.add_argument("--lsa-eps", type=float, default=1e-9, help="FlowOptions eps for lsa-flow")
    p.add_argument("--bdf-rtol", type=float, default=1e-10, help="scipy BDF rtol (first try)")
    p.add_argument(
        "--bdf-atol-factor",
        type=float,
        default=1e-2,
        help="scipy BDF atol = rtol * factor * sigma^2",
    )
    p.add_argument("--tsit5-rtol", type=float, default=1e-10)
    p.add_argument(
        "--tsit5-max-d",
        type=int,
        default=None,
        help="run Tsit5 only up to this d, estimate above (default 50; 10 with --quick)",
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
    if args.quick:
        args.sizes, args.big_d = [10, 50], 0
    if args.tsit5_max_d is None:
        args.tsit5_max_d = 10 if args.quick else 50
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
        f"lsa-flow: EigenMethod(rtol={args.lsa_rtol:g}), FlowOptions(eps={args.lsa_eps:g}); "
        f"scipy BDF: rtol={args.bdf_rtol:g} (tightened ×0.1 if needed), "
        f"atol=rtol·{args.bdf_atol_factor:g}·sigma²; Tsit5: DirectMethod(rtol="
        f"{args.tsit5_rtol:g}), atol factor 1e-2, run for d <= {args.tsit5_max_d}"
    )
    print(
        f"code at start: git {code['git']} (lsa/ modified: {code.get('lsa_dirty', '?')}), "
        f"lsa/flow.py sha256 {code['lsa_flow_sha256']}"
    )
    dev = check_baseline(args.N, args.seed)
    print(f"scipy baseline self-test (field vs Lemma 5.2, Jacobian vs differences): {dev:.1e}")
    rows: list[dict[str, Any]] = []
    calib: list[float] = []
    with limiter:
        for d in args.sizes:
            rows += bench_size(d, args, calib)
        if args.big_d and args.big_d not in args.sizes:
            rows += bench_big(args.big_d, args)
    print()
    print_table(rows)
    print(
        "compile s = first call minus the median of the timed calls (Tsit5: of a short probe); "
        "scipy compiles nothing, so its value (and any negative one) is timing noise."
    )
    print()
    print("Run-time ratios vs lsa-flow (after compilation):")
    for d in args.sizes:
        parts = [
            f"{r['method']} {r['ratio']:.1f}×" + (" (est.)" if r["status"] == "skipped" else "")
            for r in rows
            if r["d"] == d and r["method"] in ("scipy BDF", "diffrax Tsit5")
        ]
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
