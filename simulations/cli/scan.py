"""`lsa scan` and `lsa plot`: run a parameter scan from a TOML file, and draw its figures.

`lsa scan CONFIG.toml` (or `lsa scan --example sigma_scan`) runs or resumes the scan into
`<out>/<name>-<hash>/` with a progress bar (settings done, total, time left) and prints the run
directory; `lsa scan --list` lists the parameters, measures and shipped examples.

`lsa plot RESULTS` draws the standard figures of a saved table (a run directory, or a
`.parquet` / `.csv` file): lines over one parameter (`--kind line`), a heatmap over two
(`--kind heatmap --x A --y B --z VALUE`), one panel per value of `--facet`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "scan",
        help="run a parameter scan from a TOML configuration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", type=Path, help="scan configuration (TOML)")
    p.add_argument("--example", metavar="NAME", help="run a shipped example instead (see --list)")
    p.add_argument("--list", action="store_true", help="list parameters, measures and examples")
    p.add_argument(
        "--out", type=Path, default=Path("runs"), help="folder for run directories (default ./runs)"
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default=None,
        help="where to solve (default: $LSA_FLOW_DEVICE, else auto = GPU when available)",
    )
    p.add_argument("--executor", choices=("local", "dask"), default="local")
    p.add_argument("--address", help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="local Dask workers (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot", action="store_true", help="draw the default figure when done")
    p.set_defaults(func=run_scan_cli)

    q = sub.add_parser(
        "plot",
        help="figures from a saved scan table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("results", type=Path, help="run directory, or results .parquet / .csv")
    q.add_argument("--x", help="parameter on the x axis")
    q.add_argument("--y", nargs="+", help="column(s) on the y axis (heatmap: the row parameter)")
    q.add_argument("--z", help="heatmap value column")
    q.add_argument("--hue", help="one line per value of this column")
    q.add_argument("--facet", help="one panel per value of this column")
    q.add_argument(
        "--kind", choices=("line", "heatmap"), help="figure kind (default: from the run)"
    )
    q.add_argument("--logx", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument("--logy", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument("--out", type=Path, help="output file (default: <run>/figures/<name>.png)")
    q.set_defaults(func=run_plot_cli)


def _list() -> int:
    from ..scans import MEASURES, PARAMETERS, examples

    print("parameters (lsa.Setting, then the scan-only Measurement; default, allowed values):")
    for k, spec in PARAMETERS.items():
        default = "unset" if spec.default is None else repr(spec.default)
        print(f"  {k:<15} {spec.kind:<6} {default:<12} {spec.doc}; {spec.rule}")
    print("measures:")
    for k, m in MEASURES.items():
        doc = " ".join(m.doc.split())
        print(f"  {k:<21} {'(flow) ' if m.needs_flow else '       '}{doc[:90]}")
    print("examples:")
    for name, path in examples().items():
        print(f"  {name:<21} {path}")
    return 0


def run_scan_cli(args: argparse.Namespace) -> int:
    from ..scans import ScanError, example_path, load_config, run_scan

    if args.list:
        return _list()
    if (args.config is None) == (args.example is None):
        raise ScanError("give a CONFIG.toml or --example NAME (not both); see `lsa scan --list`.")
    cfg = load_config(args.config if args.config is not None else example_path(args.example))
    n = len(cfg.settings())
    print(f"lsa scan: {cfg.name}: {n} settings, measures {', '.join(cfg.measures)}", flush=True)
    res = run_scan(
        cfg,
        args.out,
        executor=args.executor,
        address=args.address,
        n_workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    df = res.table
    state = "already finished; read back" if res.cached else f"done in {res.seconds:.1f} s"
    print(f"lsa scan: {state}: {res.run_dir}")
    if "status" in df:
        bad = df[df["status"] != "converged"]
        if len(bad):
            print(f"lsa scan: {len(bad)} setting(s) did not converge (see the status column)")
    if args.plot and res.run_dir is not None:
        from ..plots.scan import default_plot, load_results, plot_table

        table, run_cfg, figdir = load_results(res.run_dir)
        spec = default_plot(run_cfg, table)
        path = plot_table(table, path=figdir / f"{cfg.name}.png", **spec)
        print(f"lsa scan: figure {path}")
    return 0


def run_plot_cli(args: argparse.Namespace) -> int:
    from ..plots.scan import default_plot, load_results, plot_table

    df, cfg, figdir = load_results(args.results)
    spec: dict[str, Any] = {}
    if args.x is None or args.y is None:
        spec = default_plot(cfg, df)
    given = {"x": args.x, "y": args.y, "z": args.z, "hue": args.hue, "facet": args.facet,
             "kind": args.kind, "logx": args.logx, "logy": args.logy}  # fmt: skip
    spec.update({k: v for k, v in given.items() if v is not None})
    if spec.get("kind") == "heatmap" and isinstance(spec.get("y"), list):
        spec["y"] = spec["y"][0]
    name = (cfg or {}).get("name", Path(args.results).stem)
    out = args.out or figdir / f"{name}-{spec.get('kind', 'line')}.png"
    path = plot_table(df, path=out, title=name, **spec)
    print(f"lsa plot: {path}")
    return 0


if __name__ == "__main__":
    from . import main

    sys.exit(main(["scan", *sys.argv[1:]]))
