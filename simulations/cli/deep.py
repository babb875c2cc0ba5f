"""`lsa deep`: checks d1-d5 of deep LSA stacks and the linear versions of Akyürek et al.'s depth
and noise transitions (docs/deep.md §4-§5; `simulations.checks.deep`).

Writes to the output folder: the tables `deep/*.csv` (scalar-family flow, Monte Carlo risk,
SPD against depth, best-fit ridge per depth and noise, risk against depth, the noise heat map),
the figures `deep_spd_depth.png` and `deep_noise_heatmap.png` (drawn from the tables),
`deep_report.md` and `deep_results.json`. Exits with status 1 if a check fails.

`--conventions` adds the full parameterisation trained in both conventions
(`simulations.checks.deep_conventions`: d = 2, n = 8, B = 2000 training prompts, L = 1..4,
three starts each, flow then trust-region Newton polish, end points classified):
`deep/conventions_runs.csv` (one row per run, written as each finishes; a rerun resumes) and
`deep/conventions.csv` (the best start per depth and convention, the SPD between the
conventions) and the figure `deep_conventions.png` (end points and weight norms per run).
About an hour on two cores.

`--l3-flows` adds check d10 (`simulations.checks.deep_flows.check_l3_matrix_flows`): the exact
matrix-step flow at L = 3 (d = 2, N = 6, two starts; order-6 mixed moments, 3-6 minutes per
flow), rows in `deep/matrix_flows_l3.csv` as each finishes (a rerun resumes).

`--escape-probe` follows the unmasked ("zfb") L = 2 stack's start 1 past the flow with
trust-region Newton steps on training sets of B = 2000, 8000 and 32000 prompts
(`simulations.checks.deep_conventions.escape_probes`): each layer's norms and the loss every
100-250 steps in `deep/escape_probe.csv` (one B at a time; a rerun resumes) and the figure
`deep_escape.png`. About 40 minutes on two cores (B = 32000: 25).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..provenance import provenance, write_json
from .reproduce import add_setting_arguments, format_table, setting_from_args


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "deep",
        help="deep LSA stacks: GD identity, Gram route, scalar flow, GD/ridge/OLS transitions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_arguments(p)
    p.add_argument("--quick", action="store_true", help="1/10 of the Monte Carlo sizes")
    p.add_argument(
        "--conventions",
        action="store_true",
        help="also train the full parameterisation in both conventions (L = 1..4; ~1 hour)",
    )
    p.add_argument(
        "--l3-flows",
        action="store_true",
        help="also run check d10: L = 3 matrix-step flows on the exact risk (~10 min)",
    )
    p.add_argument(
        "--escape-probe",
        action="store_true",
        help="also follow the unmasked L = 2 stack's escape at B = 2000, 8000, 32000 (~40 min)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checks.deep import run_suite  # heavy imports only when needed

    setting = setting_from_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"lsa deep: d = 8, n = 40, L = 1..4, seed = {setting.seed}"
          f"{' (quick)' if args.quick else ''} -> {out}/")  # fmt: skip
    checks, figures, tables = run_suite(setting, out, quick=args.quick)
    conv_lines: list[str] = []
    if args.l3_flows:
        from ..checks.deep_flows import check_l3_matrix_flows

        print("  d10: L = 3 matrix-step flows on the exact risk (d = 2, N = 6, 2 starts):")
        c10, l3 = check_l3_matrix_flows(setting.seed, 2, out / "deep" / "matrix_flows_l3.csv")
        checks.append(c10)
        tables["matrix_flows_l3"] = l3.to_dict(orient="records")
    if args.conventions:
        import jax

        from ..checks.deep_conventions import conventions_table

        print("  full parameterisation, both conventions (d = 2, n = 8, B = 2000, L = 1..4):")
        runs, summary = conventions_table(
            2, 8, 2000, (1, 2, 3, 4), 3, jax.random.PRNGKey(setting.seed + 1000),
            out / "deep" / "conventions_runs.csv", flow_steps=20_000, polish_steps=400,
        )  # fmt: skip
        summary.to_csv(out / "deep" / "conventions.csv", index=False)
        from ..plots.deep import plot_conventions

        figures.append(plot_conventions(runs, out / "deep_conventions.png"))
        tables["conventions"] = summary.to_dict(orient="records")
        print(summary.to_string(index=False))
        cols = list(summary.columns)
        conv_lines = ["", "## Full parameterisation, both conventions", "",
                      "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
        for rec in summary.itertuples(index=False):
            cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in rec]
            conv_lines.append("| " + " | ".join(cells) + " |")
    if args.escape_probe:
        import jax

        from ..checks.deep_conventions import escape_probes
        from ..plots.deep import plot_escape

        print("  escape probe: unmasked L = 2, start 1, Newton steps past the flow:")
        probe = escape_probes(out / "deep" / "escape_probe.csv",
                              jax.random.PRNGKey(setting.seed + 1000))  # fmt: skip
        figures.append(plot_escape(probe, out / "deep_escape.png"))
        tables["escape_probe"] = probe.to_dict(orient="records")
    seconds = time.perf_counter() - t0
    print(format_table(checks))
    n_fail = sum(not c.passed for c in checks)
    lines = ["# lsa deep", "", f"{len(checks) - n_fail}/{len(checks)} checks passed in "
             f"{seconds:.1f} s.", "", "| id | statement | predicted | simulated | error | tol | "
             "verdict |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in checks:
        verdict = "PASS" if c.passed else "FAIL"
        lines.append(f"| {c.id} | {c.statement} | {c.predicted:.6g} | {c.simulated:.6g} | "
                     f"{c.error:.2e} | {c.tolerance:g} | {verdict} |")  # fmt: skip
    lines += conv_lines
    lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    (out / "deep_report.md").write_text("\n".join(lines) + "\n")
    payload = {"quick": args.quick, "tables": tables, "seconds": seconds}
    write_json(out / "deep_results.json", {**payload, "provenance": provenance()})
    print(
        f"{len(checks) - n_fail}/{len(checks)} checks passed in {seconds:.1f} s; wrote "
        f"{len(figures)} figures, deep_report.md and deep_results.json to {out}/"
    )
    return 1 if n_fail else 0
