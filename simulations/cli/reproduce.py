"""`lsa reproduce`: train the LSA by gradient flow and check it against the theory.

Runs every check of `simulations.checks` on the default setting (anisotropic, non-diagonal
Lambda, d = 5, N = 20, eigenvalues spread 10x), prints a table, and writes to the output folder:
the tables (CSV), the figures (PNG, made from the tables), `report.md` and `results.json`.
Exits with status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..checks.core import CheckResult, Setting, run_core_checks
from ..plots import figures as plots
from ..provenance import provenance, write_json

EXTRA_SUITES: list[str] = ["simulations.checks.shift"]


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """The options that define a `Setting` and the output folder (`lsa reproduce`, `lsa shift`)."""
    p.add_argument(
        "--out", type=Path, default=Path("figures"), help="output folder (default ./figures)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of Lambda, Theta and all sampling")
    p.add_argument("--d", type=int, default=5, help="input dimension (default 5)")
    p.add_argument("--N", type=int, default=20, help="training prompt length (default 20)")
    p.add_argument("--spread", type=float, default=10.0, help="eigenvalue spread of Lambda")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run every check against the theory and write figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_arguments(p)
    p.add_argument("--mc-prompts", type=int, default=200_000, help="Monte Carlo prompts per row")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller Monte Carlo and empirical-flow sizes (smoke run)",
    )
    p.add_argument("--only-core", action="store_true", help="skip the distribution-shift suite")
    p.set_defaults(func=run)


def _trajectory_table(data: dict[str, Any]) -> pd.DataFrame:
    res = data["flow"]
    Ginv = data["Gamma_inv"]
    dist = [
        np.linalg.norm(res.u[i] * res.U_at(i) - Ginv) / np.linalg.norm(Ginv)
        for i in range(len(res.ts))
    ]
    return pd.DataFrame({**res.as_dict(), "dist_uU_Ginv": dist})


def format_table(checks: list[CheckResult]) -> str:
    lines = [f"{'id':<4} {'verdict':<7} {'statement':<66} {'error':>11} {'tol':>9}"]
    for c in checks:
        err = f"z={c.error:+.2f}" if c.kind == "z" else f"{c.error:.2e}"
        tol = f"|z|<={c.tolerance:g}" if c.kind == "z" else f"{c.tolerance:.1e}"
        verdict = "PASS" if c.passed else "FAIL"
        lines.append(f"{c.id:<4} {verdict:<7} {c.statement[:66]:<66} {err:>11} {tol:>9}")
    return "\n".join(lines)


def markdown_report(
    checks: list[CheckResult], setting: Setting, figures: list[Path], seconds: float
) -> str:
    n_pass = sum(c.passed for c in checks)
    out = [
        "# lsa-flow reproduction report",
        "",
        f"{n_pass}/{len(checks)} checks passed in {seconds:.1f} s.",
        "",
        f"Setting: d = {setting.d}, N = {setting.N}, Lambda = rotated spectrum "
        f"{np.round(setting.spectrum(), 4).tolist()} (seed {setting.seed}), "
        f"sigma = {setting.sigma_fraction} sigma_max, M in {list(setting.M_values)}, "
        f"{setting.mc_prompts} Monte Carlo prompts per row.",
        "",
        "| id | statement | reference | predicted | simulated | error | tolerance | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        err = f"z = {c.error:+.2f}" if c.kind == "z" else f"{c.error:.3g}"
        tol = f"abs(z) <= {c.tolerance:g}" if c.kind == "z" else f"{c.tolerance:.3g}"
        out.append(
            f"| {c.id} | {c.statement} | {c.reference} | {c.predicted:.10g} | "
            f"{c.simulated:.10g} | {err} | {tol} | {'PASS' if c.passed else 'FAIL'} |"
        )
    out += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {
        "d": args.d,
        "N": args.N,
        "spread": args.spread,
        "seed": args.seed,
        "mc_prompts": args.mc_prompts,
    }
    if args.quick:
        kw.update(mc_prompts=min(args.mc_prompts, 40_000), B_values=(1_000, 10_000))
    setting = Setting(**kw)
    print(f"lsa reproduce: d = {setting.d}, N = {setting.N}, seed = {setting.seed} -> {out}/")
    checks, data = run_core_checks(setting)
    title = (
        f"d={setting.d}, N={setting.N}, κ(Λ)={setting.spread:g}, σ={setting.sigma_fraction}σ_max"
    )
    meta = {"min_loss": data["min_loss"], "mu": data["mu"], "N": setting.N, "title": title}

    traj = _trajectory_table(data)
    traj.to_csv(out / "trajectory.csv", index=False)
    curve = pd.DataFrame(data["risk_curve"])
    curve.to_csv(out / "risk_curve.csv", index=False)
    mc = pd.DataFrame(data["risk_table"])
    mc.to_csv(out / "risk_mc.csv", index=False)
    emp = pd.DataFrame(data["empirical_table"])
    emp.to_csv(out / "empirical.csv", index=False)
    # Figures are drawn from the saved tables, so they can be restyled without recomputing.
    figures = [
        plots.plot_loss(pd.read_csv(out / "trajectory.csv"), meta, out / "loss_vs_time.png"),
        plots.plot_distance(
            pd.read_csv(out / "trajectory.csv"), meta, out / "distance_vs_time.png"
        ),
        plots.plot_balance(pd.read_csv(out / "trajectory.csv"), meta, out / "balance.png"),
        plots.plot_risk_vs_M(
            pd.read_csv(out / "risk_curve.csv"),
            pd.read_csv(out / "risk_mc.csv"),
            meta,
            out / "risk_vs_M.png",
        ),
        plots.plot_empirical(pd.read_csv(out / "empirical.csv"), meta, out / "empirical_vs_B.png"),
    ]
    extra: dict[str, Any] = {}
    if not args.only_core:
        for name in EXTRA_SUITES:
            try:
                module = __import__(name, fromlist=["run_suite"])
            except ModuleNotFoundError as exc:
                if exc.name == name:
                    continue
                raise
            c2, figs2, tables2 = module.run_suite(setting, out, quick=args.quick)
            checks += c2
            figures += figs2
            extra[name] = tables2

    seconds = time.perf_counter() - t_start
    print(format_table(checks))
    n_fail = sum(not c.passed for c in checks)
    (out / "report.md").write_text(markdown_report(checks, setting, figures, seconds))
    write_json(
        out / "results.json",
        {
            "setting": dataclasses.asdict(setting),
            "Lambda": data["Lambda"],
            "checks": [c.row() for c in checks],
            "flow": {
                "stats": data["flow"].stats,
                "t_final": data["flow"].t_final,
                "W_PV": data["flow"].W_PV,
                "W_KQ": data["flow"].W_KQ,
            },
            "risk_mc": data["risk_table"],
            "empirical": data["empirical_table"],
            "extra": extra,
            "seconds": seconds,
            "provenance": provenance(),
        },
    )
    print(
        f"{len(checks) - n_fail}/{len(checks)} checks passed in {seconds:.1f} s; "
        f"wrote {len(figures)} figures, report.md and results.json to {out}/"
    )
    return 1 if n_fail else 0
