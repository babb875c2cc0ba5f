"""`lsa check GROUP [GROUP ...]`: run check groups that do not fit in `lsa reproduce`'s time
budget (or one of its suites on its own), on the setting given by the options.

Groups:

- `random-covariance` (rc*): ZFB Theorem 4.5, training on random covariances Λ_τ = diag(λ_i),
  λ_i iid Exp(1): the coefficients α, β, ω, the flow's limit g I, the Monte Carlo risk with a
  fresh Λ_τ per prompt, the empirical flow, the three "1/3" statements, ZFB Figure 1's axes;
- `full-entry` (fe*, fl*): the exact population loss over all 2(d+1)² entries, the full-entry
  population flow from Assumption 3.3 and from dense starts, and the landscape beyond
  Assumption 3.3 (spurious limit points, their certificates and basin fractions) — a finding
  beyond the paper;
- `learning-curve` (g1) and `shift` (s1–s20): the suites `lsa reproduce` also runs.

Each group writes its tables under `OUT/<group>/`, its figures to `OUT/`, and
`OUT/check_<group>_report.md` and `OUT/check_<group>_results.json` (every number, the setting,
seeds and package versions). Exits with status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from ..checks.base import CheckResult
from ..provenance import provenance, write_json
from .reproduce import (
    add_setting_arguments,
    format_table,
    markdown_checks_table,
    setting_from_args,
)

#: Group name -> module exposing `run_suite(setting, out, quick=..., log=..., flow=...)`.
GROUPS: dict[str, str] = {
    "random-covariance": "simulations.checks.random_covariance",
    "full-entry": "simulations.checks.full_entry",
    "learning-curve": "simulations.checks.learning_curve",
    "shift": "simulations.checks.shift",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="run check groups beyond `lsa reproduce` (random covariances, full-entry landscape)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "groups",
        nargs="+",
        metavar="GROUP",
        help=f"one or more of: {', '.join(GROUPS)}, or all",
    )
    add_setting_arguments(p)
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    p.set_defaults(func=run)


def _groups(names: list[str]) -> list[str]:
    if "all" in names:
        return list(GROUPS)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ValueError(
            f"unknown check group {', '.join(map(repr, unknown))}; valid groups are "
            f"{', '.join(GROUPS)} (or all)."
        )
    return list(dict.fromkeys(names))


def markdown_report(
    group: str, checks: list[CheckResult], figures: list[Path], seconds: float, setting: Any
) -> str:
    n_pass = sum(c.passed for c in checks)
    out = [
        f"# lsa check {group}",
        "",
        f"{n_pass}/{len(checks)} checks passed in {seconds:.1f} s. Setting: "
        f"`{setting.model_dump(mode='json')}`.",
        "",
        *markdown_checks_table(checks),
    ]
    out += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(out) + "\n"


def run_group(
    group: str, setting: Any, out: Path, *, quick: bool = False
) -> tuple[list[CheckResult], list[Path], dict[str, Any]]:
    """Run one group on `setting`, write its report and results to `out`; returns the suite's
    `(checks, figures, tables)`."""
    module = importlib.import_module(GROUPS[group])
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    checks, figures, tables = module.run_suite(setting, out, quick=quick, log=print)
    seconds = time.perf_counter() - t0
    slug = group.replace("-", "_")
    (out / f"check_{slug}_report.md").write_text(
        markdown_report(group, checks, figures, seconds, setting)
    )
    write_json(
        out / f"check_{slug}_results.json",
        {
            "group": group,
            "setting": setting.model_dump(mode="json"),
            "quick": quick,
            "checks": [c.row() for c in checks],
            "tables": tables,
            "seconds": seconds,
            "provenance": provenance(),
        },
    )
    return checks, figures, tables


def run(args: argparse.Namespace) -> int:
    groups = _groups(args.groups)
    setting = setting_from_args(args)
    out: Path = args.out
    n_fail = 0
    for group in groups:
        print(
            f"lsa check {group}: d = {setting.d}, N = {setting.N}, seed = {setting.seed} -> {out}/"
        )
        t0 = time.perf_counter()
        checks, figures, _ = run_group(group, setting, out, quick=args.quick)
        print(format_table(checks))
        bad = sum(not c.passed for c in checks)
        n_fail += bad
        print(
            f"{group}: {len(checks) - bad}/{len(checks)} checks passed in "
            f"{time.perf_counter() - t0:.1f} s; wrote {len(figures)} figures and "
            f"check_{group.replace('-', '_')}_report.md to {out}/"
        )
    return 1 if n_fail else 0
