"""`lsa shift`: the distribution-shift checks and figures on their own (theory.md §8, §11.3, §12).

Trains the LSA layer by gradient flow on the anisotropic, non-diagonal Lambda of `lsa reproduce`
and compares every closed-form shift risk (task, query and covariate shift, covariate scaling,
label noise; OLS baselines; the optimal preconditioner; SPD/ILWD; Theorem 4.2) with Monte Carlo
on the full LSA map at the trained weights (z-scores). Prints a table and writes to the output
folder: the figures `shift_risk_vs_M.png`, `covariate_scale.png`, `risk_vs_N.png`,
`garg_panels.png` (drawn from the tables in `shift/*.csv`), `shift_report.md` and
`shift_results.json`. Exits with status 1 if any check fails.

`lsa shift --shift NAME` instead evaluates one named shift (`none`, `task`, `task-sphere`,
`noisy`, `query`, `query-rademacher`, `covariate`, `scale-x`, `scale-y`) and prints the risk of
the trained LSA and of OLS by theory and by Monte Carlo.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

import lsa

from ..checks.base import CheckResult
from ..provenance import provenance, write_json
from .reproduce import add_setting_arguments, format_table, setting_from_args


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "shift",
        help="distribution-shift checks and figures (task, query, covariate shift; baselines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_arguments(p)
    p.add_argument(
        "--quick", action="store_true", help="about 1/5 of the Monte Carlo sizes (smoke run)"
    )
    p.add_argument(
        "--shift",
        metavar="NAME",
        default=None,
        help="evaluate one named shift only: theory and Monte Carlo risk of the LSA and OLS",
    )
    p.add_argument(
        "--M",
        type=int,
        nargs="+",
        default=[10, 40],
        help="test prompt lengths for --shift (default 10 40)",
    )
    p.add_argument(
        "--n", type=int, default=100_000, help="Monte Carlo prompts per length for --shift"
    )
    p.add_argument("--c", type=float, default=2.0, help="scale factor of scale-x / scale-y")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.d < 2:
        raise ValueError(f"--d must be >= 2 (Garg's half-subspace evaluation); got {args.d}.")


def markdown_report(
    checks: list[CheckResult], setting: lsa.Setting, figures: list[Path], tables: dict[str, Any]
) -> str:
    """`shift_report.md`: the checks with their z-scores, standard errors and the z-scores of
    the convention errors they would catch, and the figures."""
    n_pass = sum(c.passed for c in checks)
    t = tables["timings"]
    out = [
        "# lsa-flow distribution-shift report",
        "",
        f"{n_pass}/{len(checks)} checks passed in {t['total']:.1f} s.",
        "",
        f"Setting: d = {setting.d}, N = {setting.N}, Lambda = rotated spectrum "
        f"{np.round(setting.spectrum_values(), 4).tolist()} (seed {setting.seed}); the LSA is "
        "trained by gradient flow (`lsa.flow.gradient_flow`) and every Monte Carlo row applies "
        "the full map at the trained weights. z = (MC mean - closed form) / SE.",
        "",
        "| id | statement | reference | closed form | Monte Carlo | SE | z | power "
        "(z of a wrong closed form) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        if c.kind == "z":
            err = f"{c.error:+.2f}"
            se = f"{c.details.get('se', float('nan')):.2g}"
            power = ", ".join(
                f"{k[5:]}: {v:+.0f}" for k, v in c.details.items() if k.startswith("z_if_")
            )
        else:
            err, se, power = f"rel {c.error:.1e} (tol {c.tolerance:.0e})", "", ""
        out.append(
            f"| {c.id} | {c.statement} | {c.reference} | {c.predicted:.6g} | {c.simulated:.6g} "
            f"| {se} | {err} | {power} | {'PASS' if c.passed else 'FAIL'} |"
        )
    out += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())]
    out += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    setting = setting_from_args(args)
    if args.shift is not None:
        return _run_single(args, setting)
    from ..checks.shift import run_suite  # heavy imports only when needed

    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"lsa shift: d = {setting.d}, N = {setting.N}, seed = {setting.seed}"
        f"{' (quick)' if args.quick else ''} -> {out}/"
    )
    checks, figures, tables = run_suite(setting, out, quick=args.quick)
    seconds = time.perf_counter() - t_start
    print(format_table(checks))
    n_fail = sum(not c.passed for c in checks)
    (out / "shift_report.md").write_text(markdown_report(checks, setting, figures, tables))
    write_json(
        out / "shift_results.json",
        {
            "setting": setting.model_dump(mode="json"),
            "Lambda": setting.Lambda(),
            "quick": args.quick,
            "checks": [c.row() for c in checks],
            "tables": tables,
            "seconds": seconds,
            "provenance": provenance(),
        },
    )
    print(
        f"{len(checks) - n_fail}/{len(checks)} checks passed in {seconds:.1f} s; wrote "
        f"{len(figures)} figures, shift_report.md and shift_results.json to {out}/"
    )
    return 1 if n_fail else 0


def _run_single(args: argparse.Namespace, setting: lsa.Setting) -> int:
    from ..checks.shift import single_shift_report
    from ..icl.distributions import SHIFT_NAMES

    if args.shift not in SHIFT_NAMES:
        raise ValueError(f"unknown shift {args.shift!r}; valid names are {', '.join(SHIFT_NAMES)}.")
    if args.n < 2 or any(m < 1 for m in args.M):
        raise ValueError("--n must be >= 2 and every --M >= 1.")
    n = max(2, args.n // 5) if args.quick else args.n
    df = single_shift_report(setting, args.shift, tuple(args.M), n, c=args.c)
    print(
        f"lsa shift --shift {args.shift}: d = {setting.d}, N = {setting.N}, seed = "
        f"{setting.seed}, {n} prompts per M (theory: theory.shift_risk for the LSA; "
        "theory.ols_risk for OLS)"
    )
    print(df.to_string(index=False, float_format=lambda x: f"{x:.6g}"))
    return 0
