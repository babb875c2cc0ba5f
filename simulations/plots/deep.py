"""Figures of the deep-stack transitions (docs/deep.md §5), drawn from the saved tables only:
SPD against depth, one line per reference predictor (the linear analogue of Akyürek et al.
Figure 3), and the stack x noise heat map of SPD to the Bayes ridge predictors (Figure 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd

from .figures import STYLE, _save, _subplots

__all__ = ["plot_conventions", "plot_noise_heatmap", "plot_ridge_construction", "plot_spd_depth"]


def _label_axis(ax, xlabel: str, ylabel: str, ticks, title: str, legend_size: float = 0) -> None:  # type: ignore[no-untyped-def]
    """Labels, integer ticks (the depths), optional legend and title of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted(ticks))
    if legend_size:
        ax.legend(frameon=False, fontsize=legend_size)
    ax.set_title(title)


def plot_spd_depth(spd: pd.DataFrame, fits: pd.DataFrame, path: Path) -> Path:
    """Left: SPD (per dimension) of the trained stack against depth L, one line per reference
    predictor (columns `L`, `reference`, `spd`, `se`). Right: the best-fit ridge lambda against
    depth (columns `L`, `best_lambda`), the noiseless rows."""
    with matplotlib.rc_context(STYLE):
        fig, (ax1, ax2) = _subplots(1, 2, figsize=(10, 3.8))
        for k, (ref, tab) in enumerate(spd.groupby("reference", sort=False)):
            tab = tab.sort_values("L")
            ax1.errorbar(tab["L"], tab["spd"], yerr=tab["se"], marker="o", ms=4, capsize=2,
                         color=f"C{k}", label=str(ref))  # fmt: skip
        ax1.set_yscale("log")
        _label_axis(ax1, "depth L (layers)", "SPD / d", spd["L"].unique(),
                    "trained stack vs reference predictors", 8)  # fmt: skip
        f = fits.sort_values("L")
        ax2.semilogy(f["L"], f["best_lambda"], "o-", color="C3")
        _label_axis(ax2, "depth L (layers)", "best-fit ridge λ (min SPD)", f["L"].unique(),
                    "GD → ridge → OLS: best-fit λ falls with depth")  # fmt: skip
        return _save(fig, path)


def plot_noise_heatmap(heat: pd.DataFrame, path: Path) -> Path:
    """SPD / d between the stack trained at noise (sigma/tau)^2 (columns) and the Bayes ridge
    predictor for noise nu' (rows), one panel per depth in the table (columns `L`, `noise`,
    `bayes_noise`, `spd`); the minimum of each column is marked."""
    Ls = sorted(heat["L"].unique())
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, len(Ls), figsize=(3.6 * len(Ls) + 0.8, 3.6), squeeze=False)
        for ax, L in zip(axes[0], Ls, strict=True):
            tab = heat[heat["L"] == L].pivot(index="bayes_noise", columns="noise", values="spd")
            v = np.log10(tab.to_numpy())
            im = ax.imshow(v, origin="lower", cmap="viridis", aspect="auto")
            labels = [f"{x:.3g}" for x in tab.columns]
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_yticks(range(len(tab.index)), [f"{x:.3g}" for x in tab.index], fontsize=7)
            for j in range(v.shape[1]):
                i = int(np.argmin(v[:, j]))
                ax.plot(j, i, "r*", ms=9)
            ax.set_xlabel("training noise (σ/τ)²")
            ax.set_ylabel("BayesRidge λ = (σ'/τ)²")
            ax.set_title(f"L = {L}: log10 SPD / d")
            ax.grid(False)
            fig.colorbar(im, ax=ax, fraction=0.046)
        return _save(fig, path)


def plot_ridge_construction(tab: pd.DataFrame, path: Path) -> Path:
    """The Chebyshev-Richardson ridge stack (2L layers): worst and median relative error over
    prompts against L, with the closed-form bound 1/T_L((kappa+1)/(kappa-1)) (columns `L`,
    `worst_rel_error`, `median_rel_error`, `bound`)."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(1, 1, figsize=(5, 3.6))
        t = tab.sort_values("L")
        ax.semilogy(t["L"], t["bound"], "k--", label="closed-form bound 1/T_L")
        ax.semilogy(t["L"], t["worst_rel_error"], "o-", color="C0", label="worst prompt")
        ax.semilogy(t["L"], t["median_rel_error"], "s-", color="C1", ms=4, label="median prompt")
        _label_axis(ax, "Richardson steps L (2L layers)", "‖w_L − w_ridge‖ / ‖w_ridge‖",
                    t["L"].unique(), "ridge by a deep linear stack", 8)  # fmt: skip
        return _save(fig, path)


#: Marker per end-point status of `simulations.checks.deep_conventions`.
_STATUS_MARKERS = {"minimum": "o", "saddle": "s", "escaping": "^", "not converged": "x"}


def plot_conventions(runs: pd.DataFrame, path: Path) -> Path:
    """The two-convention experiment from its per-run table (`conventions_runs.csv`): left, the
    polished training loss per run against depth L, one colour per convention, the marker the
    end point's status (minimum, saddle, escaping, not converged); right, the weights' norm at the
    flow's end and after the polish (an escaping run's norm keeps growing); dashed, the sparse
    family's exact optimal risk / 2 (the training loss carries a factor 1/2)."""
    with matplotlib.rc_context(STYLE):
        fig, (ax1, ax2) = _subplots(1, 2, figsize=(10, 3.8))
        for k, (conv, tab) in enumerate(runs.groupby("convention", sort=True)):
            dx = -0.12 if k == 0 else 0.12
            for status, marker in _STATUS_MARKERS.items():
                t = tab[tab["status"] == status]
                if len(t):
                    ax1.scatter(t["L"] + dx, t["loss"], marker=marker, color=f"C{k}", s=30,
                                label=f"{conv}: {status}")  # fmt: skip
            arrow = {"arrowstyle": "->", "color": f"C{k}", "lw": 1}
            for r in tab.itertuples():
                ax2.annotate("", xy=(r.L + dx, r.norm), xytext=(r.L + dx, r.norm_flow),
                             arrowprops=arrow)  # fmt: skip
            ax2.scatter(tab["L"] + dx, tab["norm_flow"], color=f"C{k}", s=12,
                        label=f"{conv}: flow end")  # fmt: skip
            ax2.scatter(tab["L"] + dx, tab["norm"], facecolors="none", edgecolors=f"C{k}", s=24,
                        label=f"{conv}: after polish")  # fmt: skip
        opt = runs.groupby("L")["sparse_optimum_risk"].first()
        ax1.plot(opt.index, opt.to_numpy() / 2, "k--", lw=1, label="sparse optimum risk / 2")
        ax1.set_yscale("log")
        ax1.legend(frameon=False, fontsize=7, ncol=2)
        _label_axis(ax1, "depth L (layers)", "training loss (½ mean sq. error)",
                    runs["L"].unique(), "full parameters: end points by convention")  # fmt: skip
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax2.set_yticks([1.5, 2, 3, 5, 10, 20, 30])
        _label_axis(ax2, "depth L (layers)", "‖W‖ (flow end → after polish)", runs["L"].unique(),
                    "weights' norm: escaping runs keep growing", 8)  # fmt: skip
        return _save(fig, path)


def plot_escape(probe: pd.DataFrame, path: Path) -> Path:
    """The escaping probe (`escape_probes`' table: columns `B`, `newton_step`, `loss`,
    `norm_PV_1`, `norm_PV_2`): left, each layer's ||W_PV|| against the Newton step, one colour
    per training-set size B (solid first layer, dashed second); right, the training loss against
    the first layer's norm, which keeps falling as the norm grows (no finite minimiser nearby)."""
    with matplotlib.rc_context(STYLE):
        fig, (ax1, ax2) = _subplots(1, 2, figsize=(10, 3.8))
        for k, (B, tab) in enumerate(probe.groupby("B", sort=True)):
            tab = tab.sort_values("newton_step")
            ax1.plot(tab["newton_step"], tab["norm_PV_1"], "-", color=f"C{k}",
                     label=f"B = {B}: layer 1")  # fmt: skip
            ax1.plot(tab["newton_step"], tab["norm_PV_2"], "--", color=f"C{k}",
                     label=f"B = {B}: layer 2")  # fmt: skip
            ax2.plot(tab["norm_PV_1"], tab["loss"], "o-", ms=3, color=f"C{k}", label=f"B = {B}")
        ax1.set_xlabel("Newton step (after the flow)")
        ax1.set_ylabel("‖W_PV‖ per layer")
        ax1.set_title("unmasked L = 2: the first layer grows")
        ax1.legend(frameon=False, fontsize=7, ncol=2)
        ax2.set_xscale("log")
        ax2.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax2.set_xticks([1.5, 2, 3, 4, 6, 8, 12])
        ax2.set_xlabel("first layer's ‖W_PV‖ (log scale)")
        ax2.set_ylabel("training loss (½ mean sq. error)")
        ax2.set_title("the loss keeps falling as it grows")
        ax2.legend(frameon=False, fontsize=8)
        return _save(fig, path)
