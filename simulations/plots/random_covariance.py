"""ZFB Figure 1's settings for the LSA layer: risk / d against the test length M, from the
tables that `simulations.checks.random_covariance.figure_tables` saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

from .figures import STYLE, _mc_points, _save, _subplots

__all__ = ["plot_random_covariance"]

_PANELS = [("random", 1.0), ("random", 4.0), ("random", 9.0), ("fixed I", 1.0)]


def _title(kind: str, c: float) -> str:
    if kind == "fixed I":
        return "test covariance I (fixed)"
    return f"test covariance {c:g}·diag(Exp(1)), fresh per prompt"


def plot_random_covariance(th: pd.DataFrame, mc: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Four panels (test covariance `c diag(Exp(1))`, c = 1, 4, 9, and the fixed `I`): risk / d
    against M for the LSA trained on `Lambda = I` (dashed) and on random Exp(1) covariances
    (solid), one colour per training length N; OLS (0 for M >= d), the zero predictor and the
    M, N -> infinity limit of the randomly trained LSA; Monte Carlo points (±2 SE) through the
    LSA map at `N = meta["N_mc"]`. Symmetric-log y axis from 0 (OLS is exactly 0 for M >= d:
    the bottom of the axis)."""
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(2, 2, figsize=(11, 7.5))
        Ns = sorted(th["N"].unique())
        colours = {N: f"C{i}" for i, N in enumerate(Ns)}
        for ax, (kind, c) in zip(np.ravel(axes), _PANELS, strict=True):
            t = th[(th["panel"] == kind) & (th["c"] == c)]
            for N in Ns:
                r = t[t["N"] == N]
                ax.plot(r["M"], r["trained_random"], color=colours[N], lw=1.8,
                        label=f"LSA trained on random cov., N={N}")  # fmt: skip
                ax.plot(r["M"], r["trained_I"], color=colours[N], lw=1.2, ls="--",
                        label=f"LSA trained on Λ=I, N={N}")  # fmt: skip
            r0 = t[t["N"] == Ns[0]]
            ax.plot(r0["M"], r0["ols"], color="k", lw=1.5, label="OLS (closed form)")
            ax.plot(r0["M"], r0["zero"], color="gray", ls="--", lw=1, label="zero predictor")
            ax.plot(r0["M"], r0["lsa_limit"], color="k", ls=":", lw=1,
                    label="random-cov. LSA, M,N→∞")  # fmt: skip
            m = mc[(mc["panel"] == kind) & (mc["c"] == c)]
            styles: dict[str, dict[str, Any]] = {
                "trained_random": {"color": colours.get(meta["N_mc"], "C3"), "fmt": "o"},
                "trained_I": {"color": colours.get(meta["N_mc"], "C3"), "fmt": "s", "mfc": "none"},
                "ols": {"color": "k", "fmt": "^"},
            }
            for name, st in styles.items():
                q = m[m["predictor"] == name]
                if len(q):
                    _mc_points(ax, q["M"], q["mc_mean"], q["mc_se"],
                               f"MC ({name}, N={meta['N_mc']})", ms=4, **st)  # fmt: skip
            ax.axvline(meta["d"], color="gray", ls=":", lw=0.8)
            ax.set_yscale("symlog", linthresh=0.05)
            ax.set_ylim(0.0, 1.5 * float(np.nanmax(t[["trained_random", "trained_I"]].to_numpy())))
            ax.set_xlabel("test length M")
            ax.set_ylabel("risk / d")
            ax.set_title(_title(kind, c), fontsize=9)
        handles, labels = np.ravel(axes)[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
        fig.suptitle(
            f"ZFB Figure 1 settings for one LSA layer (gradient-flow limits), d={meta['d']}; "
            "risk E(ŷ−⟨w,x_q⟩)²/d",
            fontsize=10,
        )
        return _save(fig, path, rect=(0, 0.1, 1, 1))
