"""The larger basin study behind `docs/landscape.md` (a finding beyond ZFB): the same functions
as check fl3 of `simulations.checks.full_entry`, with more starts per cell and d = 5 as well.

    python -m simulations.checks.landscape_study OUT [--starts-d3 24] [--starts-d5 16]

writes `OUT/basins.csv` (one row per cell), `OUT/limit_points.csv` (one row per start, with
its certificate), `OUT/closed_form.csv` and the basin figure `OUT/landscape_basins.png`.
Keys: `fold_in(PRNGKey(seed), 7)` for the starts (`--seed`, default 0), as in the suite.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import lsa

from ..plots.landscape import plot_basins
from .landscape import Instance, basin_table, spurious_closed_form

SCALES = tuple(float(x) for x in np.geomspace(0.1, 10.0, 5))


def instances(d: int, N: int = 20, seed: int = 0) -> list[Instance]:
    """The default anisotropic rotated Lambda of `lsa.Setting(d=d, N=N, seed=seed)` and the
    isotropic `Lambda = I` with the same `N`."""
    s = lsa.Setting(d=d, N=N, seed=seed)
    return [Instance(f"d{d}-aniso", s.Lambda(), N), Instance(f"d{d}-iso", np.eye(d), N)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--starts-d3", type=int, default=24)
    p.add_argument("--starts-d5", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dims", type=int, nargs="+", default=[3, 5])
    args = p.parse_args(argv)
    lsa.set_precision("float64")
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.fold_in(jax.random.PRNGKey(args.seed), 7)
    rows, points, closed = [], [], []
    t0 = time.perf_counter()
    for d in args.dims:
        n = args.starts_d3 if d == 3 else args.starts_d5
        insts = instances(d, seed=args.seed)
        sp = {i.name: spurious_closed_form(i.Lambda, i.N) for i in insts}
        for i in insts:
            closed.append(
                {
                    "instance": i.name,
                    "min_loss": i.min_loss,
                    "spurious_loss": sp[i.name]["loss"],
                    "k": sp[i.name]["k"],
                    "q": sp[i.name].get("q"),
                    "kind": sp[i.name]["kind"],
                    "rank_one_S": sp[i.name]["rank_one_S"],
                }
            )
        r, pts = basin_table(insts, sp, SCALES, n, jax.random.fold_in(key, d))
        rows += r
        points += pts
        pd.DataFrame(rows).to_csv(args.out / "basins.csv", index=False)
        pd.DataFrame(points).to_csv(args.out / "limit_points.csv", index=False)
    pd.DataFrame(closed).to_csv(args.out / "closed_form.csv", index=False)
    plot_basins(pd.read_csv(args.out / "basins.csv"), {}, args.out / "landscape_basins.png")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
