"""Figures of the landscape study beyond Assumption 3.3 (`simulations.checks.full_entry`,
`docs/landscape.md`), each drawn from saved tables on an explicit `Figure`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd

from .figures import STYLE, _save, _subplots

__all__ = ["plot_basins", "plot_dense_trajectories"]

_LABELS = {
    "paper": "Assumption 3.3",
    "balanced": r"dense, $\|W_{PV}\|_F = \|W_{KQ}\|_F$",
    "unbalanced": r"dense, $\|W_{PV}\|_F = 4\|W_{KQ}\|_F$",
}


def plot_dense_trajectories(traj: pd.DataFrame, levels: pd.DataFrame, path: Path) -> Path:
    """Population loss `L(t)` of the full-entry flow from dense starts (`traj`: columns `start`,
    `t`, `loss`, `class`), on a log time axis, with horizontal lines at min L and at the
    spurious value (`levels`: one row with `min_loss`, `spurious_loss`, `title`)."""
    lev = levels.iloc[0]
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(figsize=(6.2, 4.0))
        colours = {"global": "C0", "spurious": "C3"}
        seen: set[str] = set()
        for _start, tab in traj.groupby("start"):
            t = tab["t"].to_numpy()
            m = t > 0
            cls = str(tab["class"].iloc[0])
            lab = f"{cls} limit" if cls not in seen else None
            seen.add(cls)
            ax.semilogx(
                t[m],
                tab["loss"].to_numpy()[m],
                color=colours.get(cls, "C7"),
                lw=1.2,
                alpha=0.8,
                label=lab,
            )
        ax.axhline(lev["min_loss"], color="k", ls="--", lw=1, label="min L (ZFB Lemma 5.3)")
        ax.axhline(
            lev["spurious_loss"],
            color="C3",
            ls=":",
            lw=1.2,
            label="spurious local min (closed form)",
        )
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel("population loss L(t)")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(str(lev.get("title", "")), fontsize=9)
        return _save(fig, path)


def plot_basins(basins: pd.DataFrame, meta: dict[str, Any], path: Path) -> Path:
    """Fraction of starts whose limit is the spurious minimum against the start's scale
    (a fraction of sigma_max), one panel per instance, one line per start structure, with
    binomial standard errors (bars: +-1 SE)."""
    names = list(dict.fromkeys(basins["instance"]))
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            sub = basins[basins["instance"] == name]
            for k, (structure, tab) in enumerate(sub.groupby("structure", sort=False)):
                x = tab["scale_over_sigma_max"].to_numpy() * (1.0 + 0.04 * (k - 1))
                ax.errorbar(
                    x,
                    tab["frac_spurious"],
                    yerr=tab["frac_spurious_se"],
                    marker="o",
                    ms=4,
                    capsize=3,
                    label=_LABELS.get(str(structure), str(structure)),
                )
            n = int(sub["n_starts"].iloc[0])
            ax.set_xscale("log")
            ax.set_ylim(-0.05, 1.05)
            ax.axvline(1.0, color="gray", ls=":", lw=1)
            ax.set_xlabel(r"start scale / $\sigma_{max}$")
            ax.set_title(f"{name} ({n} starts per point)", fontsize=9)
        axes[0][0].set_ylabel("fraction ending at the spurious minimum")
        axes[0][0].legend(frameon=False, fontsize=7)
        fig.suptitle(
            meta.get("title", "Basins of the full-entry population flow (finding beyond ZFB)"),
            fontsize=10,
        )
        return _save(fig, path, rect=(0, 0, 1, 0.93))
