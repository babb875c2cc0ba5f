"""`lsa reproduce`: train the LSA by gradient flow and check it against the theory.

Runs the core checks a-f (`simulations.checks.core`) and the distribution-shift checks
(`simulations.checks.shift`) on the default setting (anisotropic, non-diagonal Lambda, d = 5,
N = 20, condition number kappa = 10, sigma = 0.5 sigma_max, seed 0), prints a table, and writes
to the output folder: the tables (CSV), the figures (PNG, made from the tables), `report.md` and
`results.json`. Exits with status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import lsa

from ..checks import core
from ..checks.base import CheckResult
from ..plots import figures as plots
from ..provenance import provenance, write_json

#: The suites run after the core checks, by module name; each module exposes
#: `run_suite(setting, out, quick=..., log=..., flow=...) -> (checks, figure paths, tables)`;
#: `flow` is the core suite's solve of the same setting, shared.
SUITES: tuple[str, ...] = ("simulations.checks.shift", "simulations.checks.learning_curve")


class _Renamed(argparse.Action):
    """A hidden option that was renamed: refused with the new name."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kw: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        parser.error(f"option {self.option_strings[0]} was renamed to {self.new}; use {self.new}.")


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """The options that define an `lsa.Setting` and the output folder (`lsa reproduce`,
    `lsa shift`)."""
    p.add_argument(
        "--out", type=Path, default=Path("figures"), help="output folder (default ./figures)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of Lambda, Theta and all sampling")
    p.add_argument("--d", type=int, default=5, help="input dimension (default 5)")
    p.add_argument("--N", type=int, default=20, help="training prompt length (default 20)")
    p.add_argument(
        "--kappa", type=float, default=10.0, help="condition number of Lambda (default 10)"
    )
    p.add_argument("--spread", action=_Renamed, new="--kappa")


def setting_from_args(args: argparse.Namespace) -> lsa.Setting:
    """The `lsa.Setting` of the setting options (invalid values raise `SettingError`)."""
    return lsa.Setting(d=args.d, N=args.N, kappa=args.kappa, seed=args.seed)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run every check against the theory and write figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_arguments(p)
    p.add_argument(
        "--mc-prompts", type=int, default=None, help="Monte Carlo prompts of check e (200000)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller Monte Carlo and empirical-flow sizes (smoke run)",
    )
    p.add_argument(
        "--only-core",
        action="store_true",
        help="skip the extra suites (distribution shift, learning curve)",
    )
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
    checks: list[CheckResult],
    setting: lsa.Setting,
    sizes: core.CoreSizes,
    figures: list[Path],
    seconds: float,
) -> str:
    n_pass = sum(c.passed for c in checks)
    out = [
        "# lsa-flow reproduction report",
        "",
        f"{n_pass}/{len(checks)} checks passed in {seconds:.1f} s.",
        "",
        f"Setting: d = {setting.d}, N = {setting.N}, Lambda = rotated spectrum "
        f"{np.round(setting.spectrum_values(), 4).tolist()} (seed {setting.seed}), "
        f"sigma = {setting.resolved_sigma_fraction} sigma_max, M in {list(sizes.M_values)}, "
        f"{sizes.mc_prompts} Monte Carlo prompts per row.",
        "",
    ]
    out += markdown_checks_table(checks)
    out += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(out) + "\n"


def markdown_checks_table(checks: list[CheckResult]) -> list[str]:
    """The checks as markdown table lines (the reports of `lsa reproduce` and `lsa check`)."""
    out = [
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
    return out


def write_core_outputs(data: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    """The core tables (CSV) and the figures drawn from them (so a figure can be restyled
    without recomputing)."""
    _trajectory_table(data).to_csv(out / "trajectory.csv", index=False)
    pd.DataFrame(data["risk_curve"]).to_csv(out / "risk_curve.csv", index=False)
    pd.DataFrame(data["risk_table"]).to_csv(out / "risk_mc.csv", index=False)
    pd.DataFrame(data["empirical_table"]).to_csv(out / "empirical.csv", index=False)
    traj = pd.read_csv(out / "trajectory.csv")
    return [
        plots.plot_loss(traj, meta, out / "loss_vs_time.png"),
        plots.plot_distance(traj, meta, out / "distance_vs_time.png"),
        plots.plot_balance(traj, meta, out / "balance.png"),
        plots.plot_risk_vs_M(
            pd.read_csv(out / "risk_curve.csv"),
            pd.read_csv(out / "risk_mc.csv"),
            meta,
            out / "risk_vs_M.png",
        ),
        plots.plot_empirical(pd.read_csv(out / "empirical.csv"), meta, out / "empirical_vs_B.png"),
    ]


def reproduce(
    setting: lsa.Setting,
    out: Path,
    sizes: core.CoreSizes = core.CoreSizes(),  # noqa: B008  (immutable)
    *,
    quick: bool = False,
    suites: tuple[str, ...] = SUITES,
    log: Callable[[str], None] = print,
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Run the core checks and then each suite of `suites` (module names) on one setting;
    write the tables and figures to `out`. Returns `(checks, figures, results)`."""
    lsa.require_x64("lsa reproduce")
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    checks, data = core.run_core_checks(setting, sizes, log=log)
    title = (
        f"d={setting.d}, N={setting.N}, κ(Λ)={setting.kappa:g}, "
        f"σ={setting.resolved_sigma_fraction}σ_max"
    )
    meta = {"min_loss": data["min_loss"], "mu": data["mu"], "N": setting.N, "title": title}
    figures = write_core_outputs(data, meta, out)
    extra: dict[str, Any] = {}
    for name in suites:
        module = importlib.import_module(name)
        c2, figs2, tables2 = module.run_suite(setting, out, quick=quick, log=log, flow=data["flow"])
        checks += c2
        figures += figs2
        extra[name] = tables2
    seconds = time.perf_counter() - t_start
    results = {
        "setting": setting.model_dump(mode="json"),
        "sizes": dataclasses.asdict(sizes),
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
    }
    (out / "report.md").write_text(markdown_report(checks, setting, sizes, figures, seconds))
    write_json(out / "results.json", results)
    return checks, figures, results


def run(args: argparse.Namespace) -> int:
    setting = setting_from_args(args)
    sizes = core.QUICK if args.quick else core.CoreSizes()
    if args.mc_prompts is not None:
        sizes = dataclasses.replace(sizes, mc_prompts=args.mc_prompts)
    out: Path = args.out
    print(f"lsa reproduce: d = {setting.d}, N = {setting.N}, seed = {setting.seed} -> {out}/")
    checks, figures, results = reproduce(
        setting, out, sizes, quick=args.quick, suites=() if args.only_core else SUITES
    )
    print(format_table(checks))
    n_fail = sum(not c.passed for c in checks)
    print(
        f"{len(checks) - n_fail}/{len(checks)} checks passed in {results['seconds']:.1f} s; "
        f"wrote {len(figures)} figures, report.md and results.json to {out}/"
    )
    return 1 if n_fail else 0
