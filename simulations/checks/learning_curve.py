"""Check g1: the whole trajectory of the reduced flow against the closed-form isotropic learning
curve (`theory.learning_curve`, docs/learning_curve.md).

For `Lambda = lam I` and the balanced start `U(0) = sigma I / sqrt(d)`, `u(0) = sigma`, the ODE of
ZFB Lemma 5.2 reduces to a logistic equation in `z = ||U||_F^2 / d`. The diffrax solve
(`lsa.gradient_flow`, the same solver as every other check) must follow the exact `u(t)`,
`U(t)` and `L(t)` at **every saved time**, not only at the end point: a stronger test of the
dynamics (the time scale, the plateau of the small start, the escape) than checks a–c.

Three instances at the setting's `d` (so the compiled solve is shared): the setting's `N` and
`sigma_fraction` at `lam = 1`; a far smaller scale `lam = 0.03` with `N = 1` and a tiny start
(`1e-3 sigma_max`: a long plateau); a large scale `lam = 40`, `N = 4 N` and a start near the
bound (`0.9 sigma_max`). Tolerance `1e-7` relative, uniformly in time (the solver's rtol is
`1e-11`; the global error of an exponential escape from the plateau grows like
`rtol * ln(1 / sigma)` and measures ~1e-9). Mutant (`mutant="gamma_N+1"`): a flow trained with
`N + 1` instead of `N` (a Gamma built with the wrong length) leaves the curve by ~1/N.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd

import lsa
from lsa.flow import FlowResult
from theory.learning_curve import isotropic_escape_time, isotropic_learning_curve

from ..plots.figures import STYLE, _save, _subplots
from .base import CheckResult

__all__ = ["TOLERANCE", "check_learning_curve", "instances", "run_suite"]

#: Relative tolerance on u(t), U(t) and L(t) at every saved time.
TOLERANCE = 1e-7


def instances(setting: lsa.Setting) -> list[dict[str, Any]]:
    """The three isotropic instances `(d, N, lam, sigma_fraction)` at the setting's `d`; the
    fractions stay below `sqrt(d / 2)`, where the start would sit above the limit."""
    d, N = setting.d, setting.N
    frac = setting.resolved_sigma_fraction
    if frac is None:  # an explicit sigma: its fraction of the setting's sigma_max
        frac = float(setting.sigma or 0.0) / setting.sigma_max()
    return [
        {"d": d, "N": N, "lam": 1.0, "sigma_fraction": min(frac, 0.9)},
        {"d": d, "N": 1, "lam": 0.03, "sigma_fraction": 1e-3},
        # a start below the limit (z0 / K = 2 f^2 / d < 1), so the escape time exists
        {"d": d, "N": 4 * N, "lam": 40.0, "sigma_fraction": 0.9 if d >= 2 else 0.5},
    ]


def _sigma_max(d: int, N: int, lam: float) -> float:
    return float(np.sqrt(2.0 / (np.sqrt(d) * lam * (N + 1 + d) / N)))


def solve_instance(inst: dict[str, Any], *, mutant: str | None = None) -> dict[str, Any]:
    """Solve one instance with `lsa.gradient_flow` and compare it with the closed form at every
    saved time. Returns the errors, the escape times and the trajectory table."""
    d, N, lam = inst["d"], inst["N"], inst["lam"]
    sigma = inst["sigma_fraction"] * _sigma_max(d, N, lam)
    init = lsa.Init(u=jnp.asarray(sigma), U=sigma * jnp.eye(d) / np.sqrt(d))
    N_train = N + 1 if mutant == "gamma_N+1" else N
    t0 = time.perf_counter()
    res = lsa.gradient_flow(lam * np.eye(d), N_train, init)
    wall = time.perf_counter() - t0
    cf = isotropic_learning_curve(res.ts, d, N, lam, sigma)
    err_u = np.abs(res.u - cf["u"]) / cf["u"]
    err_U = np.array(
        [
            np.linalg.norm(res.U_at(i) - cf["m"][i] * np.eye(d)) / (cf["m"][i] * np.sqrt(d))
            for i in range(len(res.ts))
        ]
    )
    # the loss relative to its scale d * lam (L(0) ~ d lam / 2)
    err_L = np.abs(res.loss - cf["loss"]) / (d * lam)
    # escape time: when u U first reaches half of Gamma^{-1}, interpolated on the saved grid
    frac = res.u * np.array([res.U_at(i)[0, 0] for i in range(len(res.ts))])
    frac = frac * lam * (N + 1 + d) / N
    i = int(np.argmax(frac >= 0.5))
    t_half = float(np.interp(0.5, frac[i - 1 : i + 1], res.ts[i - 1 : i + 1])) if i > 0 else 0.0
    return {
        **inst,
        "sigma": sigma,
        "n_saved": len(res.ts),
        "max_rel_err_u": float(err_u.max()),
        "max_rel_err_U": float(err_U.max()),
        "max_rel_err_loss": float(err_L.max()),
        "t_half_closed_form": isotropic_escape_time(d, N, lam, sigma),
        "t_half_flow_interp": t_half,
        "num_steps": int(res.stats.get("num_steps", -1)),
        "seconds": wall,
        "table": pd.DataFrame(
            {
                "t": res.ts,
                "u_flow": res.u,
                "u_closed": cf["u"],
                "uU_over_Ginv_flow": frac,
                "uU_over_Ginv_closed": cf["uU"] * lam * (N + 1 + d) / N,
                "loss_flow": res.loss,
                "loss_closed": cf["loss"],
            }
        ),
    }


def check_learning_curve(
    setting: lsa.Setting, *, mutant: str | None = None
) -> tuple[CheckResult, list[dict[str, Any]]]:
    """g1: `max_t` relative error of u, U and L against the closed form, over the instances."""
    rows = [solve_instance(inst, mutant=mutant) for inst in instances(setting)]
    worst = max(max(r["max_rel_err_u"], r["max_rel_err_U"], r["max_rel_err_loss"]) for r in rows)
    details = {
        "instances": [{k: v for k, v in r.items() if k != "table"} for r in rows],
        "mutant": mutant,
    }
    return (
        CheckResult(
            "g1",
            "isotropic flow = closed-form logistic learning curve at every saved time "
            "(u, U, L; 3 scales lam = 1, 0.03, 40)",
            "theory.md §4.2 (DERIVED: theory/learning_curve.py)",
            0.0,
            worst,
            worst,
            TOLERANCE,
            "rel",
            bool(worst <= TOLERANCE),
            details,
        ),
        rows,
    )


def plot_learning_curves(tables: list[pd.DataFrame], labels: list[str], path: Path) -> Path:
    """`u U / Gamma^{-1}` and the loss against time: the closed form (lines) and the diffrax
    solve (markers), one colour per instance; time in units of each instance's escape time."""
    with matplotlib.rc_context(STYLE):
        fig, (ax1, ax2) = _subplots(1, 2, figsize=(10, 3.8))
        for k, (tab, lab) in enumerate(zip(tables, labels, strict=True)):
            t = tab["t"].to_numpy()
            m = t > 0
            th = float(tab.attrs.get("t_half", 1.0))
            c = f"C{k}"
            ax1.semilogx(t[m] / th, tab["uU_over_Ginv_closed"][m], color=c, lw=1.5, label=lab)
            ax1.semilogx(t[m][::6] / th, tab["uU_over_Ginv_flow"][m][::6], "o", color=c, ms=3)
            lo = tab["loss_closed"].to_numpy()
            scale = lo[0]
            ax2.semilogx(t[m] / th, lo[m] / scale, color=c, lw=1.5)
            ax2.semilogx(t[m][::6] / th, tab["loss_flow"][m][::6] / scale, "o", color=c, ms=3)
        ax1.set_xlabel(r"$t / t_{1/2}$ (closed-form escape time)")
        ax1.set_ylabel(r"$uU$ / $\Gamma^{-1}$")
        ax1.legend(frameon=False, fontsize=8)
        ax2.set_xlabel(r"$t / t_{1/2}$")
        ax2.set_ylabel("L(t) / L(0)")
        fig.suptitle("Isotropic Λ = λI: closed-form learning curve (lines) and diffrax (dots)")
        return _save(fig, path, rect=(0, 0, 1, 0.94))


def run_suite(
    setting: lsa.Setting,
    out: Path,
    quick: bool = False,
    log: Callable[[str], None] = print,
    *,
    flow: FlowResult | None = None,
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Check g1 and its figure `learning_curve.png` (tables in `out/learning_curve/*.csv`).
    `quick` and `flow` are accepted for the suite interface and not needed (three cheap
    solves)."""
    lsa.require_x64("the learning-curve check (simulations.checks.learning_curve)")
    t0 = time.perf_counter()
    out = Path(out)
    tab_dir = out / "learning_curve"
    tab_dir.mkdir(parents=True, exist_ok=True)
    check, rows = check_learning_curve(setting)
    tables, labels = [], []
    for k, r in enumerate(rows):
        path = tab_dir / f"instance_{k}.csv"
        r["table"].to_csv(path, index=False)
        tab = pd.read_csv(path)
        tab.attrs["t_half"] = r["t_half_closed_form"]
        tables.append(tab)
        labels.append(
            f"λ={r['lam']:g}, N={r['N']}, σ={r['sigma_fraction']:g}σ_max "
            f"(t½={r['t_half_closed_form']:.3g})"
        )
    fig = plot_learning_curves(tables, labels, out / "learning_curve.png")
    seconds = time.perf_counter() - t0
    log(f"  learning curve g1: max rel. error {check.error:.2e}, {seconds:.1f} s")
    return [check], [fig], {"checks": [check.row()], "seconds": seconds, **check.details}
