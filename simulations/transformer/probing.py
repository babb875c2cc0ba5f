"""Linear probes of the transformer's hidden states for `w` and `X^T y` (issue 11 §2; Akyürek et
al. §5, theory.md §11.7).

**Probe.** For each layer `l = 0 .. L` (0: the embedding, read-in plus positions; `l`: the
residual stream after block `l`) the hidden state at the **query position** (the last `x`
token of `x_1, ỹ_1, .., x_M, ỹ_M, x_q`) is a vector `h_l in R^width`. A linear probe is ridge
regression of the target `v` on `h_l` (`fit_probe`): features standardised with the training
set's mean and standard deviation, target centred with its training mean, penalty
`lam * n_train` on the coefficients (so `lam` is per example). Akyürek et al. use a probe with
learned position attention and also an MLP; the probe here is the plain linear one at one
position, the question the issue asks.

**Targets.** `w` (the task vector of the prompt) and `X^T y = sum_i y_i x_i` over the `M`
in-context examples (the query is not among them), the targets of the issue and of Akyürek et
al.; and, as a positive reference for the probe itself, the query's clean label `<w, x_q>`, which
the last layer must carry for the model to predict it (its R² there is close to
`1 - risk / E <w, x_q>^2`).

**Held-out R².** `R² = 1 - E ||v - v_hat||² / V`, where the expectation is over fresh prompts
and `V = E ||v - E v||²` is the target's total variance under the probe law, exact here (all
targets have mean 0): `V = d` for `w` and for `<w, x_q>`, `V = d M (M + d + 1)` for `X^T y`
(`E (X^T X)^2 = M (M + d + 1) I` for a Wishart matrix). An exact `V` keeps the noise of a
training-set variance (the targets are heavy-tailed products) out of `R²`. The per-prompt
quantity `||v - v_hat||² / V` is averaged by the one Monte Carlo engine (`mc_means`), which gives
the standard error; the probe is fixed by the training set. `R² = 1` is a perfect linear
read-out; `R² <= 0` is no better than a constant. (`fit_probe` without `v_var` uses the
training set's variance.)

**Control.** A model of the same architecture at its random initialisation (the trained
model's own starting weights, `build_model(config)`), probed in exactly the same way: the R² a
linear read-out gets from an untrained network's features.

**Prompts.** The training law of Akyürek et al. and of the model trained on `Lambda = I`:
`x ~ N(0, I_d)`, `w ~ N(0, I_d)`, noiseless (the catalogue's `standard`). The probe's training
set is drawn from `PRNGKey(train_seed)` (one batch), the held-out prompts by the engine from
`PRNGKey(eval_seed)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..icl.catalogue import garg_catalogue
from ..icl.montecarlo import mc_means
from ..icl.prompt_law import TestDistribution
from .bridge import query_hidden
from .comparisons import _draw
from .model import GPT2Regressor

__all__ = ["TARGETS", "LinearProbe", "fit_probe", "probe_table", "targets"]

TARGETS = ("w", "X^T y", "<w, x_q>")


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted ridge probe (module docstring): `v_hat = v_mean + ((h - h_mean) / h_scale) coef`;
    `v_var` is the training set's total variance of the target."""

    h_mean: np.ndarray
    h_scale: np.ndarray
    coef: np.ndarray
    v_mean: np.ndarray
    v_var: float

    def predict(self, H: Any) -> np.ndarray:
        """The probe's read-out `(n, k)` of hidden states `H (n, width)`."""
        return self.v_mean + ((np.asarray(H) - self.h_mean) / self.h_scale) @ self.coef

    def normalized_residual(self, H: Any, V: Any) -> np.ndarray:
        """`||v - v_hat||² / v_var` for each row: its mean is `1 - R²`."""
        r = np.asarray(V) - self.predict(H)
        return np.sum(r * r, axis=-1) / self.v_var


def fit_probe(H: Any, V: Any, lam: float = 1e-3, v_var: float | None = None) -> LinearProbe:
    """Ridge regression of `V (n, k)` on `H (n, width)` (module docstring). `v_var`: the total
    variance of the target that `R²` is relative to; by default its training-set value."""
    H = np.asarray(H, np.float64)
    V = np.asarray(V, np.float64)
    if V.ndim == 1:
        V = V[:, None]
    if H.ndim != 2 or H.shape[0] != V.shape[0] or H.shape[0] < 2:
        raise ValueError(f"H must be (n, width) and V (n, k), n >= 2; got {H.shape}, {V.shape}.")
    n = H.shape[0]
    h_mean = H.mean(axis=0)
    h_scale = H.std(axis=0)
    h_scale = np.where(h_scale > 0, h_scale, 1.0)
    Z = (H - h_mean) / h_scale
    v_mean = V.mean(axis=0)
    Vc = V - v_mean
    coef = np.linalg.solve(Z.T @ Z + lam * n * np.eye(Z.shape[1]), Z.T @ Vc)
    if v_var is None:
        v_var = float(np.sum(Vc * Vc) / n)
    if v_var <= 0:
        raise ValueError("the probe's target is constant on the training set.")
    return LinearProbe(h_mean, h_scale, coef, v_mean, v_var)


def targets(X: Any, y: Any, w: Any, x_q: Any) -> dict[str, np.ndarray]:
    """The probe targets of prompts `X (B, M, d)`, `y (B, M)`, `w (B, d)`, queries `x_q (B, d)`:
    `w`, `X^T y` and the query's clean label `<w, x_q>`."""
    w = np.asarray(w)
    return {
        "w": w,
        "X^T y": np.einsum("bmd,bm->bd", np.asarray(X), np.asarray(y)),
        "<w, x_q>": np.einsum("bd,bd->b", w, np.asarray(x_q))[:, None],
    }


def _features(
    models: tuple[GPT2Regressor, ...], dist: TestDistribution, key: Any, B: int, M: int
) -> tuple[list[list[np.ndarray]], dict[str, np.ndarray]]:
    P = _draw(dist, key, B, M)
    X, y, q, w = (np.asarray(a) for a in (P.X, P.y, P.x_q, P.w))
    return [query_hidden(m, X, y, q) for m in models], targets(X, y, w, q)


def _probe_values(
    key: Any,
    B: int,
    dist: TestDistribution,
    M: int,
    models: tuple[GPT2Regressor, ...],
    probes: tuple[tuple[LinearProbe, ...], ...],
) -> jax.Array:
    """`(B, K)`: the normalised residual of every (model, layer, target) probe, in that order."""
    hidden, tg = _features(models, dist, key, B, M)
    cols = []
    it = iter(probes)
    for hs in hidden:
        for h in hs:
            fitted = next(it)
            for t, probe in zip(TARGETS, fitted, strict=True):
                cols.append(probe.normalized_residual(h, tg[t]))
    return jnp.asarray(np.stack(cols, axis=1))


def probe_table(
    models: Mapping[str, GPT2Regressor],
    *,
    d: int,
    M: int,
    n_train: int = 2000,
    n_test: int = 1000,
    lam: float = 1e-3,
    train_seed: int = 2028,
    eval_seed: int = 2029,
    batch_size: int = 500,
) -> pd.DataFrame:
    """Held-out R² of linear probes for `w` and `X^T y` on every layer of every model.

    **Arguments:** `models` (name -> model; include the control), `d`, `M` (in-context examples
    before the query), `n_train` (probe training prompts, drawn from `PRNGKey(train_seed)`),
    `n_test` (held-out prompts, the engine's draws from `PRNGKey(eval_seed)`), `lam`,
    `batch_size`.

    **Returns:** rows `model, layer, target, r2, r2_se, n_train, n_test, M, lam`.
    """
    dist = garg_catalogue(d, jax.random.PRNGKey(0))["standard"]
    mods = tuple(models.values())
    for m in mods:
        m.eval()
    hidden, tg = _features(mods, dist, jax.random.PRNGKey(train_seed), n_train, M)
    probes = tuple(tuple(fit_probe(h, tg[t], lam) for t in TARGETS) for hs in hidden for h in hs)
    est = mc_means(_probe_values, jax.random.PRNGKey(eval_seed), n_test, dist, M, mods, probes,
                   batch_size=batch_size, jit=False)  # fmt: skip
    rows = []
    it = iter(est)
    for name, hs in zip(models, hidden, strict=True):
        for layer in range(len(hs)):
            for t in TARGETS:
                e = next(it)
                rows.append(
                    {"model": name, "layer": layer, "target": t, "r2": 1.0 - e.mean,
                     "r2_se": e.se, "n_train": n_train, "n_test": e.n, "M": M, "lam": lam}
                )  # fmt: skip
    return pd.DataFrame(rows)
