"""Figure functions. Each takes saved tables (pandas DataFrames read from CSV) and a path, so a
figure can be restyled without recomputing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.cm
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

STYLE: Any = {
    "figure.dpi": 120,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _subplots(*grid: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    """A new `Figure` (not registered with pyplot, so no backend is chosen here) and its axes,
    as `plt.subplots` returns them."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def _save(fig: Figure, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path)
    return path


def _mc_points(ax: Axes, x: Any, mean: Any, se: Any, label: str, **style: Any) -> None:
    """Monte Carlo estimates with 2-standard-error bars (red dots unless `style` says else)."""
    kw: dict[str, Any] = {"fmt": "o", "color": "C3", "ms": 5, "capsize": 3} | style
    ax.errorbar(x, mean, yerr=2 * np.asarray(se), label=label, **kw)


def plot_loss(traj: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Loss against time with min L, and the gap against the PL envelope (ZFB Lemma 5.4)."""
    with matplotlib.rc_context(STYLE):
        fig, (ax1, ax2) = _subplots(1, 2, figsize=(9, 3.6))
        t = traj["t"].to_numpy()
        m = t > 0
        ax1.semilogx(t[m], traj["loss"][m], lw=2, label="L(t) (gradient flow)")
        ax1.axhline(meta["min_loss"], color="k", ls="--", lw=1, label="min L (ZFB Lemma 5.3)")
        ax1.set_xlabel("t")
        ax1.set_ylabel("population loss L")
        ax1.legend(frameon=False)
        gap = traj["loss"].to_numpy() - meta["min_loss"]
        env = gap[0] * np.exp(-meta["mu"] * t)
        ax2.loglog(t[m], np.maximum(gap[m], 1e-300), lw=2, label="L(t) - min L")
        ax2.loglog(t[m], env[m], color="C3", ls="--", label=r"PL envelope $e^{-\mu t}$ gap(0)")
        ax2.set_ylim(max(1e-16, np.nanmin(gap[m][gap[m] > 0]) / 10), gap[0] * 10)
        ax2.set_xlabel("t")
        ax2.set_ylabel("loss gap")
        ax2.legend(frameon=False, loc="lower left")
        fig.suptitle(meta.get("title", ""), fontsize=10)
        return _save(fig, path)


def plot_distance(traj: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Relative distance ||u U(t) - Gamma^{-1}||_F / ||Gamma^{-1}||_F against time."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(figsize=(5, 3.6))
        t = traj["t"].to_numpy()
        m = t > 0
        ax.loglog(t[m], traj["dist_uU_Ginv"][m], lw=2)
        ax.axhline(1e-8, color="k", ls=":", lw=1, label="check tolerance 1e-8")
        ax.set_xlabel("t")
        ax.set_ylabel(r"$\|uU(t)-\Gamma^{-1}\|_F/\|\Gamma^{-1}\|_F$")
        ax.legend(frameon=False)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)


def plot_balance(traj: pd.DataFrame, meta: dict, path: Path) -> Path:
    """u^2 and ||U||_F^2 against time, and their difference (ZFB Lemma A.3)."""
    with matplotlib.rc_context(STYLE):
        fig, (ax1, ax2) = _subplots(1, 2, figsize=(9, 3.6))
        t = traj["t"].to_numpy()
        m = t > 0
        ax1.semilogx(t[m], traj["u"][m] ** 2, lw=3, alpha=0.6, label=r"$u^2$")
        ax1.semilogx(t[m], traj["U_norm2"][m], "k--", lw=1, label=r"$\|U\|_F^2$")
        ax1.set_xlabel("t")
        ax1.legend(frameon=False)
        ax2.semilogx(t[m], traj["balance"][m], lw=1.5)
        ax2.set_xlabel("t")
        ax2.set_ylabel(r"$u^2-\|U\|_F^2$")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        fig.suptitle("balancedness is conserved " + meta.get("title", ""), fontsize=10)
        return _save(fig, path)


def plot_risk_vs_M(curve: pd.DataFrame, mc: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Test risk of the trained layer against test length M: theory curve R(N, M) and Monte
    Carlo points on the full LSA map with 2-standard-error bars."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(figsize=(5.5, 3.8))
        ax.loglog(curve["M"], curve["R"], lw=2, label="exact R(N, M) (theory.md §7.3)")
        ax.loglog(curve["M"], curve["floor"], "k--", lw=1, label=r"floor $M\to\infty$ (O(1/N$^2$))")
        _mc_points(ax, mc["M"], mc["mc_mean"], mc["mc_se"], "Monte Carlo, full LSA map (±2 SE)")
        ax.axvline(meta["N"], color="gray", ls=":", lw=1)
        ax.text(meta["N"], ax.get_ylim()[1], " M = N", va="top", color="gray", fontsize=8)
        ax.set_xlabel("test prompt length M")
        ax.set_ylabel(r"$E(\hat y - y_q)^2$")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)


def plot_empirical(emp: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Empirical flow on B prompts (means over the prompt sets of each B, ±2 SE): distance of
    the end point u U to Gamma^{-1}, tracking error of the reduced flow, and dense starts."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(figsize=(5.5, 3.8))
        B = emp["B"].to_numpy(float)
        seeds = int(emp["seeds"].iloc[0]) if "seeds" in emp else 1
        _mc_points(
            ax,
            B,
            emp["paper_init_uU_dist"],
            emp.get("paper_init_uU_dist_se", 0.0 * B),
            f"end point, mean of {seeds} prompt sets: ||uU - Γ⁻¹||/||Γ⁻¹||",
            fmt="s-",
            color="C0",
        )
        _mc_points(
            ax,
            B,
            emp["track_uU_max_rel"],
            emp.get("track_uU_max_rel_se", 0.0 * B),
            "tracking: max_t ||uU_emp(t) - uU_pop(t)|| / ||Γ⁻¹||",
            fmt="^-",
            color="C2",
        )
        ax.loglog(
            B, emp["dense_init_uU_dist"], "o", color="C3", mfc="none", ms=9,
            label="dense random starts in the global basin (median)",
        )  # fmt: skip
        ref = emp["paper_init_uU_dist"].iloc[0] * np.sqrt(B[0] / B)
        ax.loglog(B, ref, "k:", lw=1, label=r"$\propto B^{-1/2}$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of training prompts B")
        ax.set_ylabel("relative distance")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# distribution shift (simulations.checks.shift)

_BASELINE_STYLE: dict[str, dict[str, Any]] = {
    "OLS": {"color": "C2", "marker": "s", "ls": "-"},
    "Ridge(0.1)": {"color": "C4", "marker": "D", "ls": "--"},
    "GD(α*)": {"color": "C1", "marker": "^", "ls": "-."},
    "Averaging": {"color": "C5", "marker": "v", "ls": ":"},
}


def _positive_floor(values: np.ndarray) -> float:
    v = values[np.isfinite(values) & (values > 0)]
    return float(v.min()) if v.size else 1e-3


def plot_shift_risk_vs_M(theory_df: pd.DataFrame, mc: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Test risk against M under each shift (theory.md §8.5): the trained LSA's exact risk
    (§8.3) and its M -> infinity limit, Monte Carlo for the LSA (±2 SE) and for OLS, Ridge(0.1),
    one-step GD with the step tuned on the training law, and averaging. Risks below the axis
    (OLS interpolates: exactly 0 for M >= d without noise) are drawn on the bottom edge."""
    panels = list(dict.fromkeys(theory_df["panel"]))
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), sharey=False)
        axes = np.atleast_1d(axes)
        for ax, panel in zip(axes, panels, strict=True):
            th = theory_df[theory_df["panel"] == panel]
            m = mc[mc["panel"] == panel]
            lsa = m[m["predictor"] == "LSA"]
            ax.loglog(th["M"], th["lsa_theory"], color="C0", lw=2, label="LSA exact (§8.3)")
            ax.axhline(th["lsa_limit"].iloc[0], color="C0", ls=":", lw=1, label="LSA M→∞ limit")
            _mc_points(
                ax, lsa["M"], lsa["mean"], lsa["se"], "LSA Monte Carlo (±2 SE)",
                ms=4, capsize=2, zorder=5,
            )  # fmt: skip
            lo = 0.3 * min(
                _positive_floor(th["lsa_theory"].to_numpy()),
                _positive_floor(m.loc[m["mean"] > 1e-10 * m["mean"].max(), "mean"].to_numpy()),
            )
            for pred, style in _BASELINE_STYLE.items():
                b = m[m["predictor"] == pred].sort_values("M")
                if b.empty:
                    continue
                y = np.maximum(b["mean"].to_numpy(), lo)
                ax.plot(b["M"], y, ms=4, lw=1, label=pred + " (MC)", **style)
            ax.set_ylim(bottom=lo * 0.9)
            ax.axvline(meta["N"], color="gray", ls=":", lw=1)
            ax.set_title(panel, fontsize=9)
            ax.set_xlabel("test prompt length M")
        axes[0].set_ylabel(r"$E(\hat y - \langle w, x_q\rangle)^2$")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, frameon=False, fontsize=8, loc="lower center", ncol=7)
        fig.suptitle(meta.get("title", "") + "  (gray: M = N)", fontsize=10)
        return _save(fig, path, rect=(0, 0.08, 1, 1))


def plot_covariate_scale(theory_df: pd.DataFrame, mc: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Risk against the covariate scale c (prompt and query scaled by c; theory.md §8.5): the
    LSA's exact finite-(N, M) risk grows like c^2 (c^2 - 1)^2 tr Lambda (its M, N -> infinity
    limit), while OLS's risk does not depend on c (§8.7)."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(figsize=(5.8, 4.0))
        ax.loglog(theory_df["c"], theory_df["lsa_theory"], color="C0", lw=2, label="LSA exact")
        lim = theory_df["lsa_limit"].to_numpy()
        ok = lim > 1e-3 * _positive_floor(theory_df["lsa_theory"].to_numpy())
        ax.loglog(
            theory_df["c"][ok],
            lim[ok],
            "k--",
            lw=1,
            label=r"M, N→∞: $c^2(c^2-1)^2\,\mathrm{tr}\,\Lambda$",
        )
        ax.loglog(theory_df["c"], theory_df["ols_theory"], color="C2", lw=1.5, label="OLS exact")
        for pred, color, marker in (("LSA", "C3", "o"), ("OLS", "C2", "s")):
            b = mc[mc["predictor"] == pred]
            _mc_points(
                ax, b["c"], b["mean"], b["se"], f"{pred} Monte Carlo (±2 SE)",
                fmt=marker, color=color, capsize=2, mfc="none" if pred == "OLS" else color,
            )  # fmt: skip
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.set_ylim(bottom=0.3 * _positive_floor(theory_df["ols_theory"].to_numpy()))
        ax.set_xlabel("covariate scale c  (x → c x at test)")
        ax.set_ylabel(r"$E(\hat y - \langle w, x_q\rangle)^2$")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)


def plot_risk_vs_N(theory_df: pd.DataFrame, mc: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Risk at a fixed long test prompt against the training length N (theory.md §6–§7.3): the
    exact R(N, M), the O(1/N^2) floor (M -> infinity) and the N -> infinity limit
    (d+1) tr Lambda / M, with Monte Carlo for layers trained by gradient flow at several N."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _subplots(figsize=(5.8, 4.0))
        ax.loglog(theory_df["N"], theory_df["risk"], color="C0", lw=2, label="exact R(N, M)")
        ax.loglog(
            theory_df["N"], theory_df["floor"], "k--", lw=1, label="floor M→∞ (∝ 1/N², Cor. 4.3)"
        )
        ax.axhline(
            theory_df["limit_large_N"].iloc[0],
            color="gray",
            ls=":",
            lw=1,
            label="N→∞: (d+1) tr Λ / M",
        )
        _mc_points(
            ax, mc["N"], mc["mean"], mc["se"], "Monte Carlo, trained by gradient flow (±2 SE)"
        )
        ax.set_xlabel("training prompt length N")
        ax.set_ylabel(r"$E(\hat y - y_q)^2$")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)


def plot_garg_panels(garg: pd.DataFrame, meta: dict, path: Path) -> Path:
    """One panel per evaluation of Garg et al. (theory.md §12): squared error / d of the LSA
    (trained on x ~ N(0, I)) and of OLS against the number of in-context examples."""
    evals = list(dict.fromkeys(garg["evaluation"]))
    ncol = 5
    nrow = -(-len(evals) // ncol)
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(nrow, ncol, figsize=(3.0 * ncol, 2.5 * nrow), squeeze=False)
        for ax, name in zip(axes.ravel(), evals, strict=False):
            g = garg[garg["evaluation"] == name]
            # OLS first with open markers, so the LSA stays visible where they coincide
            # (orthogonal queries: both predict 0).
            for pred, color, marker, ms in (("OLS", "C2", "s", 5), ("LSA", "C3", "o", 3)):
                b = g[g["predictor"] == pred].sort_values("M")
                _mc_points(
                    ax, b["M"], b["mean"], b["se"], pred, fmt="-", color=color, marker=marker,
                    ms=ms, mfc="none" if pred == "OLS" else color, lw=1, capsize=1.5,
                )  # fmt: skip
            ax.axvline(g["d"].iloc[0], color="gray", ls=":", lw=1)
            ax.set_title(name, fontsize=9)
            ax.set_ylim(bottom=0)
            # OLS's risk is infinite at M = d, d + 1 with label noise; its Monte Carlo spike there
            # would flatten the panel, so the axis stops above the LSA's curve and says so.
            lsa_top = float((g.loc[g["predictor"] == "LSA", "mean"] * 1.0).max())
            ols = g[g["predictor"] == "OLS"]
            off = ols[ols["mean"] > 3.0 * lsa_top]
            if len(off):
                ax.set_ylim(top=1.5 * lsa_top)
                ax.text(
                    0.97,
                    0.95,
                    "OLS off scale at M = " + ", ".join(str(int(m)) for m in off["M"]),
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=6.5,
                    color="C2",
                )
            ax.tick_params(labelsize=7)
        for ax in axes.ravel()[len(evals) :]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel("in-context examples M", fontsize=8)
        for ax in axes[:, 0]:
            ax.set_ylabel("squared error / d", fontsize=8)
        axes[0, 0].legend(frameon=False, fontsize=7, loc="upper right")
        fig.suptitle(meta.get("title", "") + "  (gray: M = d)", fontsize=10)
        return _save(fig, path)
