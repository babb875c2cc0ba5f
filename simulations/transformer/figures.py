"""Figures of the Garg, Akyürek and probing experiments (issue 11 §2), each drawn from its saved
table (`pandas.read_csv` of the CSV the experiment wrote) on an explicit matplotlib `Figure`
(`simulations.plots.figures`: `STYLE`, `_subplots`, `_save`). Error bars and bands are 90%
normal intervals (`Z90` standard errors of the one Monte Carlo engine)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

from ..plots.figures import STYLE, _save, _subplots
from .experiments import Z90

__all__ = ["plot_akyurek", "plot_garg", "plot_probes"]

_GREYS = {"zero": {"color": "0.55", "ls": "--", "lw": 1.0}}
_SUBJECT_COLORS = ("C0", "C3", "C9", "C6")
_REF_COLORS = ("black", "C1", "C2", "C4", "C5", "C7", "C8", "C6")


def _styles(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    subs = list(dict.fromkeys(table.loc[table["kind"] == "transformer", "predictor"]))
    refs = list(dict.fromkeys(table.loc[table["kind"] == "reference", "predictor"]))
    for i, s in enumerate(subs):
        out[s] = {"color": _SUBJECT_COLORS[i % len(_SUBJECT_COLORS)], "ls": "-", "lw": 2.0}
    for i, r in enumerate(refs):
        ls = ":" if r.startswith("LSA") else "-"
        out[r] = {"color": _REF_COLORS[i % len(_REF_COLORS)], "ls": ls, "lw": 1.1}
    out.update(_GREYS)
    return out


def plot_garg(table: pd.DataFrame, path: Path, *, caption: str, ncols: int = 4) -> Path:
    """Garg et al.: error / d against the number of in-context examples, one panel per
    catalogue entry; transformers thick, references thin, the LSA limits dotted."""
    evals = list(dict.fromkeys(table["eval"]))
    nrows = math.ceil(len(evals) / ncols)
    styles = _styles(table)
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(nrows, ncols, figsize=(4.0 * ncols, 3.1 * nrows + 0.8),
                              squeeze=False)  # fmt: skip
        for k, ev in enumerate(evals):
            ax = axes[k // ncols][k % ncols]
            sub = table[table["eval"] == ev]
            for name, st in styles.items():
                t = sub[sub["predictor"] == name].sort_values("M")
                if t.empty:
                    continue
                m, s = t["error_per_d"].to_numpy(), t["se_per_d"].to_numpy()
                marker = "o" if len(t) < 12 else None
                ax.plot(t["M"], m, label=name, marker=marker, ms=3, **st)
                ax.fill_between(t["M"], m - Z90 * s, m + Z90 * s, color=st["color"], alpha=0.15,
                                lw=0)  # fmt: skip
            zero = sub.loc[(sub["predictor"] == "zero") & (sub["M"] >= 1), "error_per_d"]
            top = 1.6 * float(zero.max()) if len(zero) else 2.0
            ax.set_ylim(0, top)
            ax.set_title(ev, fontsize=9)
            ax.set_xlabel("in-context examples M")
            ax.set_ylabel("squared error / d")
        for k in range(len(evals), nrows * ncols):
            axes[k // ncols][k % ncols].set_visible(False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7,
                   frameon=False)  # fmt: skip
        fig.suptitle(textwrap.fill(caption, 200), fontsize=7)
        return _save(fig, path, rect=(0, 0.06, 1, 0.95))


def plot_akyurek(table: pd.DataFrame, path: Path, *, d: int, caption: str) -> Path:
    """Akyürek et al.: SPD / d (top) and ILWD / d (bottom) of each transformer against each
    reference, against the prompt length M, log scale."""
    subjects = list(dict.fromkeys(table["subject"]))
    refs = list(dict.fromkeys(table["reference"]))
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(2, len(subjects), figsize=(5.0 * len(subjects), 7.0),
                              squeeze=False)  # fmt: skip
        for j, s in enumerate(subjects):
            for i, (col, what) in enumerate((("spd", "SPD"), ("ilwd", "ILWD"))):
                ax = axes[i][j]
                for k, r in enumerate(refs):
                    t = table[(table["subject"] == s) & (table["reference"] == r)]
                    t = t.sort_values("M")
                    ls = ":" if r.startswith("LSA") else "-"
                    ax.errorbar(t["M"], t[col] / d, yerr=Z90 * t[f"{col}_se"] / d, label=r,
                                color=_REF_COLORS[k % len(_REF_COLORS)], ls=ls, marker="o",
                                ms=3, capsize=2, lw=1.2)  # fmt: skip
                ax.set_yscale("log")
                ax.set_xlabel("in-context examples M")
                ax.set_ylabel(f"{what}(transformer, reference) / d")
                ax.set_title(s, fontsize=9)
        axes[0][0].legend(fontsize=7, frameon=False)
        fig.suptitle(textwrap.fill(caption, 160), fontsize=7)
        return _save(fig, path, rect=(0, 0, 1, 0.93))


def plot_probes(table: pd.DataFrame, path: Path, *, control: str, caption: str) -> Path:
    """Held-out R² of the linear probes against the layer (0: embedding), one panel per
    target; the control (a randomly initialised model of the same architecture) dashed."""
    targets = list(dict.fromkeys(table["target"]))
    models = list(dict.fromkeys(table["model"]))
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, len(targets), figsize=(4.3 * len(targets), 3.8), squeeze=False)
        for j, tg in enumerate(targets):
            ax = axes[0][j]
            for k, m in enumerate(models):
                t = table[(table["model"] == m) & (table["target"] == tg)].sort_values("layer")
                style: dict[str, Any] = (
                    {"color": "0.45", "ls": "--"}
                    if m == control
                    else {"color": _SUBJECT_COLORS[k % len(_SUBJECT_COLORS)], "ls": "-"}
                )
                ax.errorbar(t["layer"], t["r2"], yerr=Z90 * t["r2_se"], label=m, marker="o",
                            ms=4, capsize=2, **style)  # fmt: skip
            ax.axhline(0.0, color="k", lw=0.6)
            ax.set_xticks(np.unique(table["layer"]))
            ax.set_ylim(min(-0.1, float(table["r2"].min()) - 0.05), 1.05)
            ax.set_xlabel("layer (0 = embedding)")
            ax.set_ylabel("held-out R²")
            ax.set_title(f"probe for {tg} at the query token", fontsize=9)
        axes[0][0].legend(fontsize=7, frameon=False)
        fig.suptitle(textwrap.fill(caption, 170), fontsize=7)
        return _save(fig, path, rect=(0, 0, 1, 0.9))
