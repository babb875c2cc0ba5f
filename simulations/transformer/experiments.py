"""ZFB Figure 1 with trained transformers (issue 11 §2): error against the test length `M` and
against the covariate scale, beside OLS, the zero predictor and the trained LSA's exact risk.

**Test laws.** `w ~ N(0, I_d)`, clean labels `y = <w, x>`, and per prompt either

- `"scaled"`: `x ~ N(0, c I_d)` (test covariance `c I`; ZFB's first panel is `c = 1`), or
- `"random"`: `x ~ N(0, c diag(lambda))`, `lambda_j` iid Exp(1) drawn per prompt (ZFB's panels
  2-4, `c = 1, 4, 9`).

**Measurement.** One forward pass of the causal transformer over a prompt of `M_max + 1`
points gives its prediction with every number of in-context examples `M = 0 .. M_max` (the
output at `x_{M+1}`); OLS (minimum norm, `simulations.icl.predictors.OLS` through
`at_every_prefix`) and the zero predictor are evaluated on the **same** prompts. The squared
error `(y_hat - y)^2` is averaged by the one Monte Carlo engine
(`simulations.icl.montecarlo.mc_means`: batch `b` of panel `p` drawn from
`fold_in(PRNGKey(eval_seed), p)` then the engine's per-batch key), and every number is divided by
`d` (ZFB's and Garg's normalisation). The error bars are 90% normal intervals (1.645 standard
errors). ZFB average over 64 covariances x 64 prompts with bootstrap intervals; here every
prompt draws its own covariance, which has the same mean.

**The trained LSA's exact risk** (no Monte Carlo) for the matching training law: trained on
`Lambda = I` the layer is `G = Gamma^{-1} = N/(N + d + 1) I` (ZFB Thm 4.1); trained on random
Exp(1) covariances it is `G = g I` (ZFB Thm 4.5, `theory.random_covariance`). Their risks on the
two test laws are `theory.random_covariance.fixed_test_risk`, `fixed_trained_random_risk`,
`random_trained_fixed_risk` and `random_covariance_risk`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import torch

from ..icl.montecarlo import mc_means
from ..icl.predictors import OLS, at_every_prefix
from .model import GPT2Regressor

__all__ = [
    "Z90",
    "covariate_scale_table",
    "figure1_table",
    "lsa_risk",
    "plot_covariate_scale",
    "plot_figure1",
]

#: The normal quantile of a two-sided 90% interval (ZFB's bars are 90% bootstrap intervals).
Z90 = 1.6448536269514722

LAWS = ("scaled", "random")


def lsa_risk(trained_on: str, law: str, d: int, N: int, M: int, c: float) -> float:
    """The exact test risk `E (y_hat - y)^2` (not divided by `d`) of the LSA trained by
    gradient flow on `trained_on` (`"identity"` or `"random"`, training length `N`) on a test
    prompt of `M >= 1` examples from `law` at scale `c`."""
    from theory.random_covariance import (
        fixed_test_risk,
        fixed_trained_random_risk,
        random_covariance_risk,
        random_trained_fixed_risk,
    )

    if trained_on == "identity":
        if law == "scaled":
            return fixed_test_risk(N / (N + d + 1.0) * np.eye(d), c * np.eye(d), M)
        return fixed_trained_random_risk(d, N, M, c)
    if trained_on == "random":
        if law == "scaled":
            return random_trained_fixed_risk(d, N, M, c)
        return random_covariance_risk(d, N, M, c)
    raise ValueError(f"no closed-form LSA risk for training covariance {trained_on!r}.")


def _errors(
    key: Any, B: int, models: tuple[GPT2Regressor, ...], d: int, n: int, c: float, law: str
) -> jax.Array:
    """Squared errors `(B, (len(models) + 2) * n)`: each model, OLS, zero, at `M = 0 .. n-1`."""
    kx, kw, kl = jax.random.split(key, 3)
    Z = jax.random.normal(kx, (B, n, d), jnp.float64)
    w = jax.random.normal(kw, (B, d), jnp.float64)
    if law == "random":
        lam = jax.random.exponential(kl, (B, d), jnp.float64)
        X = Z * jnp.sqrt(c * lam)[:, None, :]
    else:
        X = math.sqrt(c) * Z
    y = jnp.einsum("bnd,bd->bn", X, w)
    Xt = torch.from_numpy(np.asarray(X, np.float32))
    yt = torch.from_numpy(np.asarray(y, np.float32))
    cols = []
    with torch.no_grad():
        for model in models:
            pred = model(Xt, yt).double().numpy()
            cols.append((jnp.asarray(pred) - y) ** 2)
    cols.append((at_every_prefix(OLS(), X, y) - y) ** 2)
    cols.append(y**2)
    return jnp.concatenate(cols, axis=1)


def _measure(
    models: Mapping[str, GPT2Regressor],
    d: int,
    M_max: int,
    law: str,
    c: float,
    n_prompts: int,
    key: Any,
    batch_size: int,
) -> pd.DataFrame:
    names = [*models, "OLS", "zero"]
    n = M_max + 1
    for m in models.values():
        m.eval()
    est = mc_means(
        _errors, key, n_prompts, tuple(models.values()), d, n, float(c), law,
        batch_size=batch_size, jit=False,
    )  # fmt: skip
    rows = []
    for i, name in enumerate(names):
        for M in range(n):
            e = est[i * n + M]
            rows.append(
                {"law": law, "c": float(c), "M": M, "predictor": name, "error_per_d": e.mean / d,
                 "se_per_d": e.se / d, "n_prompts": e.n, "kind": "monte carlo"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _lsa_rows(trained: Mapping[str, str], d: int, N: int, law: str, c: float, Ms: Sequence[int]):
    rows = []
    for label, trained_on in trained.items():
        for M in Ms:
            if M < 1:
                continue
            r = lsa_risk(trained_on, law, d, N, M, c)
            rows.append(
                {"law": law, "c": float(c), "M": M, "predictor": label, "error_per_d": r / d,
                 "se_per_d": 0.0, "n_prompts": 0, "kind": "exact"}
            )  # fmt: skip
    return rows


def figure1_table(
    models: Mapping[str, GPT2Regressor],
    lsa_trained: Mapping[str, str],
    *,
    d: int,
    N: int,
    M_max: int,
    cs: Sequence[float] = (1.0, 4.0, 9.0),
    laws: Sequence[str] = LAWS,
    n_prompts: int = 2000,
    eval_seed: int = 2024,
    batch_size: int = 500,
) -> pd.DataFrame:
    """The table of ZFB Figure 1: error/d against `M = 0 .. M_max` for every test law and `c`.

    **Arguments:** `models` (label -> trained transformer), `lsa_trained` (label -> training
    covariance, `"identity"` or `"random"`, of an LSA layer whose exact risk is added), `d`, `N`
    (training length of the models and layers), `M_max`, `cs`, `laws`, `n_prompts` per panel,
    `eval_seed` (panel `p`, in the order of `laws` x `cs`, is drawn from
    `fold_in(PRNGKey(eval_seed), p)`), `batch_size`.
    """
    frames = []
    root = jax.random.PRNGKey(eval_seed)
    p = 0
    for law in laws:
        for c in cs:
            key = jax.random.fold_in(root, p)
            p += 1
            mc = _measure(models, d, M_max, law, c, n_prompts, key, batch_size)
            exact = pd.DataFrame(_lsa_rows(lsa_trained, d, N, law, c, range(M_max + 1)))
            frames += [mc, exact]
    return pd.concat(frames, ignore_index=True)


def covariate_scale_table(
    models: Mapping[str, GPT2Regressor],
    lsa_trained: Mapping[str, str],
    *,
    d: int,
    N: int,
    M_max: int,
    scales: Sequence[float] = tuple(np.geomspace(1 / 3, 3, 9)),
    n_prompts: int = 2000,
    eval_seed: int = 2025,
    batch_size: int = 500,
) -> pd.DataFrame:
    """Error/d at `M = N` under the covariate scale `x -> s x` (test covariance `s^2 I`), for
    `s` in `scales` (Garg et al.'s `scale-x`; issue 11 §2). Scale `i` is drawn from
    `fold_in(PRNGKey(eval_seed), i)`."""
    frames = []
    root = jax.random.PRNGKey(eval_seed)
    for i, s in enumerate(scales):
        key = jax.random.fold_in(root, i)
        mc = _measure(models, d, M_max, "scaled", s * s, n_prompts, key, batch_size)
        mc = mc[mc["M"] == N]
        exact = pd.DataFrame(_lsa_rows(lsa_trained, d, N, "scaled", s * s, [N]))
        frame = pd.concat([mc, exact], ignore_index=True)
        frame.insert(0, "scale", float(s))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# figures

_STYLE = {
    "OLS": {"color": "black", "ls": "-", "lw": 1.2},
    "zero": {"color": "0.5", "ls": "--", "lw": 1.2},
}
_COLORS = ("C0", "C3", "C2", "C4")


def _style(name: str, order: Sequence[str]) -> dict[str, Any]:
    if name in _STYLE:
        return _STYLE[name]
    i = list(order).index(name) % len(_COLORS)
    return {"color": _COLORS[i], "ls": "-", "lw": 1.6}


def plot_figure1(table: pd.DataFrame, *, N: int, caption: str, lsa_colors: Mapping[str, str]):
    """Panels (rows: test law; columns: c) of error/d against M, with 90% bars."""
    import matplotlib.pyplot as plt

    laws = list(dict.fromkeys(table["law"]))
    cs = list(dict.fromkeys(table["c"]))
    fig, axes = plt.subplots(len(laws), len(cs), figsize=(4.2 * len(cs), 3.4 * len(laws)),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    mc_names = list(dict.fromkeys(table.loc[table["kind"] == "monte carlo", "predictor"]))
    for i, law in enumerate(laws):
        for j, c in enumerate(cs):
            ax = axes[i][j]
            sub = table[(table["law"] == law) & (table["c"] == c)]
            for name in mc_names:
                t = sub[(sub["predictor"] == name)].sort_values("M")
                st = _style(name, mc_names)
                ax.plot(t["M"], t["error_per_d"], label=name, **st)
                ax.fill_between(t["M"], t["error_per_d"] - Z90 * t["se_per_d"],
                                t["error_per_d"] + Z90 * t["se_per_d"], color=st["color"],
                                alpha=0.2, lw=0)  # fmt: skip
            for name, color in lsa_colors.items():
                t = sub[sub["predictor"] == name].sort_values("M")
                ax.plot(t["M"], t["error_per_d"], color=color, ls=":", lw=1.8, label=name)
            ax.axvline(N, color="0.7", lw=0.8)
            ax.set_ylim(0, 1.6 * float(c))
            ax.set_title(("x ~ N(0, c I)" if law == "scaled" else "x ~ N(0, c diag(Exp(1)))")
                         + f", c = {c:g}")  # fmt: skip
            ax.set_xlabel("in-context examples M")
            ax.set_ylabel("squared error / d")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(textwrap.fill(caption, 180), fontsize=8)
    return fig


def plot_covariate_scale(table: pd.DataFrame, *, N: int, caption: str,
                         lsa_colors: Mapping[str, str]):  # fmt: skip
    """Error/d at M = N against the covariate scale s (x -> s x), log-log."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.0), constrained_layout=True)
    mc_names = list(dict.fromkeys(table.loc[table["kind"] == "monte carlo", "predictor"]))
    for name in mc_names:
        t = table[table["predictor"] == name].sort_values("scale")
        st = _style(name, mc_names)
        ax.errorbar(t["scale"], t["error_per_d"], yerr=Z90 * t["se_per_d"], label=name,
                    marker="o", ms=3, capsize=2, **st)  # fmt: skip
    for name, color in lsa_colors.items():
        t = table[table["predictor"] == name].sort_values("scale")
        ax.plot(t["scale"], t["error_per_d"], color=color, ls=":", lw=1.8, label=name)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("covariate scale s (x -> s x)")
    ax.set_ylabel(f"squared error / d at M = N = {N}")
    ax.legend(fontsize=7)
    ax.set_title(textwrap.fill(caption, 95), fontsize=5.5)
    return fig
