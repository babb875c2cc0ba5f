"""The shift suite's entry points: `run_suite` (checks s1–s20 and the four figures, used by
`lsa reproduce` as an extra suite and by `lsa shift`) and `single_shift_report`
(`lsa shift --shift NAME`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import lsa
import theory
from lsa.flow import FlowResult

from ...icl.distributions import named_shift
from ...icl.montecarlo import mc_risk
from ...icl.predictors import OLS
from ...plots import figures as plots
from ..base import CheckResult
from .instance import NORMAL, QUICK, ShiftInstance, Sizes, Tag, as_setting, make_instance
from .preconditioner import check_optimal_G
from .risks import check_ols, check_shift_risks
from .spd import check_spd_ilwd
from .tables import covariate_scale_tables, garg_tables, risk_vs_M_tables, risk_vs_N_tables
from .theorem42 import check_theorem42

__all__ = ["run_suite", "single_shift_report"]

Timer = Callable[[str, Callable[[], Any]], Any]


def _run_checks(inst: ShiftInstance, sizes: Sizes, timed: Timer) -> list[CheckResult]:
    checks: list[CheckResult] = []
    checks += timed("s1-s9 shift risks", lambda: check_shift_risks(inst, sizes))
    checks += timed("s10-s12 OLS", lambda: check_ols(inst, sizes))
    checks += timed("s13-s15 optimal G (theory vs theory)", lambda: check_optimal_G(inst))
    checks += timed("s16-s19 SPD/ILWD", lambda: check_spd_ilwd(inst, sizes))
    checks += timed("s20 Theorem 4.2", lambda: check_theorem42(inst, sizes))
    return checks


def _write_tables(inst: ShiftInstance, sizes: Sizes, tab_dir: Path, timed: Timer) -> dict[str, Any]:
    """Compute the figure tables, save them as `tab_dir/*.csv`; returns them as records."""
    th, mc = timed("fig risk vs M", lambda: risk_vs_M_tables(inst, sizes))
    th.to_csv(tab_dir / "risk_vs_M_theory.csv", index=False)
    mc.to_csv(tab_dir / "risk_vs_M_mc.csv", index=False)
    cs_th, cs_mc, M_cs = timed("fig covariate scale", lambda: covariate_scale_tables(inst, sizes))
    cs_th.to_csv(tab_dir / "covariate_scale_theory.csv", index=False)
    cs_mc.to_csv(tab_dir / "covariate_scale_mc.csv", index=False)
    rn_th, rn_mc = timed("fig risk vs N", lambda: risk_vs_N_tables(inst, sizes))
    rn_th.to_csv(tab_dir / "risk_vs_N_theory.csv", index=False)
    rn_mc.to_csv(tab_dir / "risk_vs_N_mc.csv", index=False)
    garg, d_garg = timed("fig Garg panels", lambda: garg_tables(inst, sizes))
    garg.to_csv(tab_dir / "garg.csv", index=False)
    return {
        "risk_vs_M_mc": mc.to_dict("records"),
        "covariate_scale_mc": cs_mc.to_dict("records"),
        "risk_vs_N_mc": rn_mc.to_dict("records"),
        "garg": garg.to_dict("records"),
        "_M_cs": M_cs,
        "_d_garg": d_garg,
    }


def _draw_figures(
    inst: ShiftInstance, sizes: Sizes, out: Path, M_cs: int, d_garg: int
) -> list[Path]:
    """The four figures, drawn from the saved tables (restyle without recomputing)."""
    tab_dir = out / "shift"
    lam = inst.setting.spectrum_values()
    kappa = float(lam.max() / lam.min())
    title = f"d={inst.d}, N={inst.N}, κ(Λ)={kappa:g}, trained LSA (gradient flow)"
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
            {"title": f"d={inst.d}, κ(Λ)={kappa:g}, M={sizes.M_large}"},
            out / "risk_vs_N.png",
        ),
        plots.plot_garg_panels(
            pd.read_csv(tab_dir / "garg.csv"),
            {"title": f"Garg et al. evaluations, d={d_garg}, LSA trained on N(0, I), N={inst.N}"},
            out / "garg_panels.png",
        ),
    ]


def run_suite(
    setting: lsa.Setting,
    out: Path,
    quick: bool = False,
    log: Callable[[str], None] = print,
    *,
    flow: FlowResult | None = None,
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Run the distribution-shift checks s1–s20 and draw the shift figures (issue items 5–6).

    **Arguments:**

    - `setting`: the `lsa.Setting` (Lambda, N, sigma, seed and solver options; the Monte Carlo
      keys are `setting.mc_key(tag)`, see `instance.Tag`);
    - `out`: output folder; tables go to `out/shift/*.csv`, figures to `out/*.png`;
    - `quick`: about 1/5 of the Monte Carlo sizes and fewer figure points (`QUICK`, smoke run);
    - `log`: progress printer;
    - `flow`: the setting's solved flow (`lsa.flow.gradient_flow` on `setting.build()`), when
      the caller already has it (`lsa reproduce` shares the core suite's solve); else solved here.

    **Returns:** `(checks, figure paths, tables)`; `tables` holds the check rows, the figure
    tables as lists of records, the instance, the sizes and the timings of each part.
    """
    lsa.require_x64("the shift suite (simulations.checks.shift)")
    setting = as_setting(setting)
    out = Path(out)
    tab_dir = out / "shift"
    tab_dir.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if quick else NORMAL
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        res = fn()
        timings[name] = time.perf_counter() - t0
        log(f"  shift {name}: {timings[name]:.2f} s")
        return res

    inst = timed("train", lambda: make_instance(setting, flow=flow))
    checks = _run_checks(inst, sizes, timed)
    pd.DataFrame([c.row() for c in checks]).to_csv(tab_dir / "checks.csv", index=False)
    tables = _write_tables(inst, sizes, tab_dir, timed)
    M_cs, d_garg = tables.pop("_M_cs"), tables.pop("_d_garg")
    figs = timed("figures", lambda: _draw_figures(inst, sizes, out, M_cs, d_garg))
    timings["total"] = time.perf_counter() - t_all
    tables = {"checks": [c.row() for c in checks]} | tables
    tables["instance"] = {
        "Sigma_w": inst.Sigma_w,
        "Omega_q": inst.Omega_q,
        "Omega_x": inst.Omega_x,
        "noise_std": inst.noise_std,
        "M_a": inst.M_a,
        "M_b": inst.M_b,
        "W_PV": np.asarray(inst.lsa.W_PV),
        "W_KQ": np.asarray(inst.lsa.W_KQ),
    }
    tables["sizes"] = dataclasses.asdict(sizes)
    tables["timings"] = timings
    log(f"  shift suite: {len(checks)} checks, {timings['total']:.1f} s")
    return checks, figs, tables


# ----------------------------------------------------------------------------------------------
# one named shift (`lsa shift --shift NAME`)


def _shift_params(inst: ShiftInstance, name: str, c: float) -> dict[str, Any]:
    """The parameters of `named_shift(name, ...)` in the instance of the checks."""
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
    return all_params.get(name, {})


def _ols_theory(args: dict[str, Any], M: int, d: int) -> float:
    """OLS's risk: `theory.ols_risk` for M >= d + 2 (plus s^2 for a noisy target), 0 without
    noise once M >= d, else NaN (no closed form here)."""
    s2 = args["s2"]
    if M >= d + 2:
        ols = theory.ols_risk(s2, args["Omega"], args["Lambda_x"], M)
        return ols + (s2 if args["noisy_target"] else 0.0)
    if M >= d and s2 == 0.0:
        return 0.0
    return float("nan")


def single_shift_report(
    setting: lsa.Setting, name: str, Ms: tuple[int, ...], n: int, c: float = 2.0
) -> pd.DataFrame:
    """Theory and Monte Carlo risk of the trained LSA and of OLS for one named shift
    (`simulations.icl.distributions.named_shift`) at the test lengths `Ms`.

    The matrices of the shift are those of the checks (`make_instance`); `scale-x`/`scale-y`
    use `c`, `noisy` uses `noise_std = 0.7`. Theory is `theory.shift_risk` for the LSA and, where
    it applies, `theory.ols_risk` (M >= d + 2; 0 without noise once M >= d) for OLS.
    """
    lsa.require_x64("the shift report (simulations.checks.shift)")
    inst = make_instance(as_setting(setting))
    dist = named_shift(name, inst.Lambda, **_shift_params(inst, name, c))  # ValueError if unknown
    args = dist.shift_risk_args()
    rows = []
    for i, M in enumerate(Ms):
        est = mc_risk({"LSA": inst.lsa, "OLS": OLS()}, dist, M, n, inst.key(Tag.SINGLE_SHIFT + i))
        lsa_th = theory.shift_risk(inst.Ginv, **args, M=M)
        for pname, th in (("LSA", lsa_th), ("OLS", _ols_theory(args, M, inst.d))):
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
