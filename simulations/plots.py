"""Figure functions. Each takes saved tables (pandas DataFrames read from CSV) and a path, so a
figure can be restyled without recomputing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

STYLE: Any = {
    "figure.dpi": 120,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss(traj: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Loss against time with min L, and the gap against the PL envelope (ZFB Lemma 5.4)."""
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
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
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 3.6))
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
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
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
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.loglog(curve["M"], curve["R"], lw=2, label="exact R(N, M) (theory.md §7.3)")
        ax.loglog(curve["M"], curve["floor"], "k--", lw=1, label=r"floor $M\to\infty$ (O(1/N$^2$))")
        ax.errorbar(
            mc["M"],
            mc["mc_mean"],
            yerr=2 * mc["mc_se"],
            fmt="o",
            color="C3",
            ms=5,
            capsize=3,
            label="Monte Carlo, full LSA map (±2 SE)",
        )
        ax.axvline(meta["N"], color="gray", ls=":", lw=1)
        ax.text(meta["N"], ax.get_ylim()[1], " M = N", va="top", color="gray", fontsize=8)
        ax.set_xlabel("test prompt length M")
        ax.set_ylabel(r"$E(\hat y - y_q)^2$")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)


def plot_empirical(emp: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Empirical flow on B prompts: distance of u U to Gamma^{-1} and tracking error vs B."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        B = emp["B"].to_numpy(float)
        ax.loglog(
            B,
            emp["dense_init_uU_dist"],
            "o-",
            label="dense random starts, global basin (median): ||uU - Γ⁻¹||/||Γ⁻¹||",
        )
        ax.loglog(B, emp["paper_init_uU_dist"], "s--", label="Assumption 3.3 start: same")
        ax.loglog(B, emp["track_u_max_rel"], "^-", label="max |u_emp(t) - u_pop(t)| / u*")
        ref = emp["dense_init_uU_dist"].iloc[0] * np.sqrt(B[0] / B)
        ax.loglog(B, ref, "k:", lw=1, label=r"$\propto B^{-1/2}$")
        ax.set_xlabel("number of training prompts B")
        ax.set_ylabel("relative distance")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(meta.get("title", ""), fontsize=9)
        return _save(fig, path)
