"""The trained transformers against the in-context algorithms (issue 11 §2): Garg et al.'s error
against the number of examples under their shift catalogue, and Akyürek et al.'s SPD and ILWD by
prompt length.

**Predictors.** The transformers enter as `TorchPredictor`s (`bridge`); the references are
`simulations.icl.predictors`: OLS (minimum norm), ridge, averaging, 3-NN, one step of GD from 0,
and the trained LSA at its gradient-flow limit as an `LSAPredictor` (`lsa_limit`): for training
on `Lambda = I` the layer `u U = Gamma^{-1} = N/(N + d + 1) I` (ZFB Thm 4.1), for training on
random Exp(1) covariances `u U = g I`, `g = N/(3N + d + 5)` (ZFB Thm 4.5,
`theory.random_covariance.random_covariance_minimum`).

**Estimator.** Every number is a Monte Carlo mean of a per-prompt quantity from the one engine
(`simulations.icl.montecarlo.mc_means`, with `jit=False` so that torch runs on the host between
JAX calls): its mean and standard error, `n` prompts, batch `b` drawn from the engine's key of
`fold_in(key, b)`. All predictors see the same prompts. The prompts come from the catalogue's
own sampler (`TestDistribution._sample`).

**Garg et al. (`garg_table`).** Squared error / d against the number of in-context examples
`M`, for every entry of `garg_catalogue(d, key)` (theory.md §12). Where the query is a fresh
draw of the same law as the in-context inputs (`standard`, `half_subspace`, `skewed`,
`scale-x`, `scale-y`, `noisyLR`), one prompt of `M_max + 1` points gives every `M = 0 .. M_max`
at once (the prediction at position `M` from the examples before it, `at_every_prefix`; the
transformer in one forward pass). Where the query depends on the prompt (`random_quadrants`:
the query is unrestricted while the examples share an orthant; `orthogonal_train_test`;
`overlapping_train_test`) every `M` of a grid draws its own prompts of `M` examples and a query
from the catalogue's law (the JAX references then run on prompts padded to the longest `M`
under a mask, which compiles once). The zero predictor is included. `noisyLR` has a noisy
target (Garg's metric); its labels are not rescaled by batch (catalogue docstring).

**Akyürek et al. (`akyurek_table`).** For prompts of `M` examples from the training law
(`x ~ N(0, I)`, `w ~ N(0, I)`, noiseless: the catalogue's `standard`) and `n_probe` fresh probe
inputs `x'_1 .. x'_P ~ N(0, I)` per context (theory.md §11.3):

- SPD: the per-context value `(1/P) sum_j (A_1(D)(x'_j) - A_2(D)(x'_j))^2`, whose mean is
  `E (A_1(D)(x') - A_2(D)(x'))^2` [AKY eq. 15] (averaging over the `P` probes of one context
  lowers the variance, not the mean);
- ILWD: `||w_hat_1 - w_hat_2||^2` with `w_hat_A` the least-squares fit of `A(D)(x'_j)` on
  `x'_j` [AKY eqs. 16-17], computed as the fit of the difference (least squares is linear),
  exactly as `mc_ilwd`.

Neither is divided by `d` in the table (`spd`, `ilwd`); the figure divides by `d` (Akyürek's
"dimension-normalised" plots). For predictors linear in h they equal `theory.spd_linear` and
`theory.ilwd_linear` (tested through this function).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..icl.catalogue import garg_catalogue
from ..icl.laws import OrthantCovariates, SameAsCovariates
from ..icl.montecarlo import mc_means, one_at_a_time
from ..icl.predictors import (
    GD,
    KNN,
    OLS,
    Averaging,
    LSAPredictor,
    Predictor,
    Ridge,
    at_every_prefix,
)
from ..icl.prompt_law import TestDistribution
from .bridge import TorchPredictor, predict_numpy, prefixes_numpy

__all__ = [
    "akyurek_table",
    "garg_table",
    "lsa_limit",
    "prefix_evaluable",
    "reference_predictors",
]

LSA_NAMES = {"identity": "LSA (Γ⁻¹, Λ = I)", "random": "LSA (g I, random Λ)"}


def lsa_limit(trained_on: str, d: int, N: int) -> LSAPredictor:
    """The LSA layer at its gradient-flow limit for the training law `trained_on` (`"identity"`:
    `Gamma^{-1} = N/(N+d+1) I`; `"random"`: `g I` of ZFB Thm 4.5), as a `Predictor`."""
    if trained_on == "identity":
        g = N / (N + d + 1.0)
    elif trained_on == "random":
        from theory.random_covariance import random_covariance_minimum

        g = float(random_covariance_minimum(d, N))
    else:
        raise ValueError(f"no LSA limit for training covariance {trained_on!r}.")
    W_PV = np.zeros((d + 1, d + 1))
    W_PV[d, d] = 1.0
    W_KQ = np.zeros((d + 1, d + 1))
    W_KQ[:d, :d] = g * np.eye(d)
    return LSAPredictor(W_PV, W_KQ)


def reference_predictors(
    d: int, N: int, *, gd_alpha: float = 0.01, ridge: float = 0.1
) -> dict[str, Predictor]:
    """OLS, `Ridge(ridge)`, averaging, `KNN(3)`, `GD(gd_alpha)` (one step from 0) and the LSA at
    its limits for training on `Lambda = I` and on random covariances, by name."""
    return {
        "OLS": OLS(),
        f"Ridge({ridge:g})": Ridge(ridge),
        "Averaging": Averaging(),
        "3-NN": KNN(3),
        f"GD({gd_alpha:g})": GD(gd_alpha),
        LSA_NAMES["identity"]: lsa_limit("identity", d, N),
        LSA_NAMES["random"]: lsa_limit("random", d, N),
    }


def prefix_evaluable(dist: TestDistribution) -> bool:
    """True if the query is a fresh draw of the in-context inputs' own law, so that position
    `M` of a longer prompt is a test prompt of `M` examples (see the module docstring)."""
    return isinstance(dist.query, SameAsCovariates) and not isinstance(
        dist.covariates, OrthantCovariates
    )


@eqx.filter_jit
def _draw(dist: TestDistribution, key: Any, B: int, M: int) -> Any:
    return dist._sample(key, B, M)


@eqx.filter_jit
def _masked(preds: tuple[Predictor, ...], X: Any, y: Any, Q: Any, keep: Any) -> Any:
    """Predictions `(R, B, P)` of each predictor at each of the `P` queries `Q (B, P, d)` from
    the examples of `X (B, M_pad, d)` kept by `keep (M_pad,)`, one predictor after the other."""

    def one(p: Predictor, X: Any, y: Any, Q: Any, keep: Any) -> Any:
        return jax.lax.map(lambda q: p._predict(X, y, q, keep), jnp.swapaxes(Q, 0, 1)).T

    return one_at_a_time([lambda *a, p=p: one(p, *a) for p in preds], X, y, Q, keep)


def _at_queries(
    preds: Sequence[Predictor], X: np.ndarray, y: np.ndarray, Q: np.ndarray, M_pad: int
) -> np.ndarray:
    """Predictions `(len(preds), B, P)` at the queries `Q (B, P, d)` from the `M` examples of
    `X (B, M, d)`, `y (B, M)`: transformers on the host, the rest in one compiled kernel on
    prompts padded to `M_pad` examples."""
    B, M, d = X.shape
    P = Q.shape[1]
    out: list[np.ndarray | None] = [None] * len(preds)
    jaxp = [(i, p) for i, p in enumerate(preds) if not isinstance(p, TorchPredictor)]
    for i, p in enumerate(preds):
        if isinstance(p, TorchPredictor):
            Xr = np.repeat(X, P, axis=0)
            yr = np.repeat(y, P, axis=0)
            out[i] = predict_numpy(p.model, Xr, yr, Q.reshape(B * P, d)).reshape(B, P)
    if jaxp:
        Xp = np.zeros((B, M_pad, d))
        yp = np.zeros((B, M_pad))
        Xp[:, :M] = X
        yp[:, :M] = y
        keep = (np.arange(M_pad) < M).astype(np.float64)
        res = np.asarray(_masked(tuple(p for _, p in jaxp), Xp, yp, Q, keep))
        for j, (i, _) in enumerate(jaxp):
            out[i] = res[j]
    return np.stack([o for o in out if o is not None])


def _prefix_predictions(preds: Sequence[Predictor], X: Any, y: Any) -> list[np.ndarray]:
    return [
        prefixes_numpy(p.model, X, y)
        if isinstance(p, TorchPredictor)
        else np.asarray(at_every_prefix(p, X, y))
        for p in preds
    ]


def _garg_prefix_values(
    key: Any, B: int, dist: TestDistribution, n: int, preds: tuple[Predictor, ...]
) -> jax.Array:
    """Squared errors `(B, (len(preds) + 1) n)`: each predictor, then zero, at `M = 0 .. n-1`."""
    P = _draw(dist, key, B, n - 1)
    X = np.concatenate([np.asarray(P.X), np.asarray(P.x_q)[:, None]], axis=1)
    y = np.concatenate([np.asarray(P.y), np.asarray(P.y_q)[:, None]], axis=1)
    cols = [(pred - y) ** 2 for pred in _prefix_predictions(preds, X, y)]
    cols.append(y**2)
    return jnp.asarray(np.concatenate(cols, axis=1))


def _garg_query_values(
    key: Any, B: int, dist: TestDistribution, Ms: tuple[int, ...], preds: tuple[Predictor, ...]
) -> jax.Array:
    """Squared errors `(B, (len(preds) + 1) len(Ms))`, prompt-dependent queries: for each `M`
    its own prompts of `M` examples (`fold_in(key, j)` for the `j`-th `M`)."""
    cols = []
    M_pad = max(Ms)
    for j, M in enumerate(Ms):
        P = _draw(dist, jax.random.fold_in(key, j), B, M)
        X, y, q, t = (np.asarray(a) for a in (P.X, P.y, P.x_q, P.y_q))
        pred = _at_queries(preds, X, y, q[:, None, :], M_pad)[:, :, 0]  # (R, B)
        cols.append(np.concatenate([(pred - t[None]) ** 2, t[None] ** 2]).T)  # (B, R + 1)
    err = np.stack(cols, axis=2)  # (B, R + 1, len(Ms))
    return jnp.asarray(err.reshape(B, -1))


def garg_table(
    subjects: Mapping[str, Predictor],
    references: Mapping[str, Predictor],
    *,
    d: int,
    M_max: int,
    evals: Sequence[str] | None = None,
    query_Ms: Sequence[int] | None = None,
    n_prompts: int = 1000,
    eval_seed: int = 2026,
    catalogue_seed: int = 0,
    batch_size: int = 500,
) -> pd.DataFrame:
    """Garg et al.'s evaluation: squared error / d against `M` for every catalogue entry.

    **Arguments:** `subjects` (name -> predictor, the transformers as `TorchPredictor`s),
    `references` (name -> predictor), `d`, `M_max` (largest `M`), `evals` (catalogue names, all
    by default), `query_Ms` (the grid of `M` for the prompt-dependent queries; by default
    `1, 2, 4, ...` and `M_max`; `orthogonal_train_test` keeps the `M < d`), `n_prompts` per
    entry, `eval_seed` (entry `e`, in the catalogue's order, is drawn from
    `fold_in(PRNGKey(eval_seed), e)`), `catalogue_seed` (the random bases of `half_subspace`
    and `skewed`: `garg_catalogue(d, PRNGKey(catalogue_seed))`), `batch_size`.

    **Returns:** rows `eval, M, predictor, kind, error_per_d, se_per_d, n_prompts` with `kind`
    `"transformer"`, `"reference"` or `"zero"`.
    """
    cat = garg_catalogue(d, jax.random.PRNGKey(catalogue_seed))
    names = list(cat) if evals is None else list(evals)
    unknown = [e for e in names if e not in cat]
    if unknown:
        raise ValueError(f"unknown catalogue entries {unknown}; valid: {', '.join(cat)}.")
    preds = (*subjects.values(), *references.values())
    labels = [*subjects, *references, "zero"]
    kinds = ["transformer"] * len(subjects) + ["reference"] * len(references) + ["zero"]
    if query_Ms is None:
        grid = sorted({*(2**k for k in range(int(np.log2(M_max)) + 1)), M_max})
    else:
        grid = sorted(set(query_Ms))
    root = jax.random.PRNGKey(eval_seed)
    rows = []
    for e, name in enumerate(cat):
        if name not in names:
            continue
        dist = cat[name]
        key = jax.random.fold_in(root, e)
        if prefix_evaluable(dist):
            Ms: tuple[int, ...] = tuple(range(M_max + 1))
            est = mc_means(_garg_prefix_values, key, n_prompts, dist, M_max + 1, preds,
                           batch_size=batch_size, jit=False)  # fmt: skip
        else:
            Ms = tuple(M for M in grid if _valid(dist, M))
            est = mc_means(_garg_query_values, key, n_prompts, dist, Ms, preds,
                           batch_size=batch_size, jit=False)  # fmt: skip
        for i, label in enumerate(labels):
            for j, M in enumerate(Ms):
                x = est[i * len(Ms) + j]
                rows.append(
                    {"eval": name, "M": M, "predictor": label, "kind": kinds[i],
                     "error_per_d": x.mean / d, "se_per_d": x.se / d, "n_prompts": x.n}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _valid(dist: TestDistribution, M: int) -> bool:
    try:
        dist.validate(M)
    except ValueError:
        return False
    return True


def _akyurek_values(
    key: Any,
    B: int,
    dist: TestDistribution,
    M: int,
    M_pad: int,
    n_probe: int,
    subjects: tuple[Predictor, ...],
    refs: tuple[Predictor, ...],
) -> jax.Array:
    """`(B, 2 S R)`: per context, SPD then ILWD of every (subject, reference) pair."""
    k_prompt, k_probe = jax.random.split(key)
    P = _draw(dist, k_prompt, B, M)
    X, y = np.asarray(P.X), np.asarray(P.y)
    probes = np.asarray(dist.covariates.sample_fresh(k_probe, B * n_probe))
    probes = probes.reshape(B, n_probe, dist.d)
    preds = _at_queries((*subjects, *refs), X, y, probes, M_pad)  # (S + R, B, P)
    S = len(subjects)
    diff = preds[:S, None] - preds[None, S:]  # (S, R, B, P)
    spd = np.mean(diff**2, axis=-1)
    pinv = np.linalg.pinv(probes)  # (B, d, P): the least-squares fit on the probes
    dw = np.einsum("bdp,srbp->srbd", pinv, diff)
    ilwd = np.sum(dw**2, axis=-1)
    return jnp.asarray(np.concatenate([spd.reshape(-1, B), ilwd.reshape(-1, B)]).T)


def akyurek_table(
    subjects: Mapping[str, Predictor],
    references: Mapping[str, Predictor],
    *,
    d: int,
    Ms: Sequence[int],
    n_prompts: int = 1000,
    n_probe: int | None = None,
    eval_seed: int = 2027,
    batch_size: int = 500,
    dist: TestDistribution | None = None,
) -> pd.DataFrame:
    """Akyürek et al.'s SPD and ILWD of each subject against each reference, by prompt length.

    **Arguments:** `subjects`, `references` (name -> predictor), `d`, `Ms` (prompt lengths),
    `n_prompts` contexts per `M`, `n_probe` probe inputs per context (default `2 d`, at least
    `d`), `eval_seed` (the `j`-th `M` is drawn from `fold_in(PRNGKey(eval_seed), j)`),
    `batch_size`, `dist` (default: the catalogue's `standard`, `x, w ~ N(0, I)`).

    **Returns:** rows `M, subject, reference, spd, spd_se, ilwd, ilwd_se, n_prompts, n_probe`
    (not divided by `d`).
    """
    if dist is None:
        dist = garg_catalogue(d, jax.random.PRNGKey(0))["standard"]
    P = 2 * d if n_probe is None else int(n_probe)
    if P < d:
        raise ValueError(f"`n_probe` must be >= d = {d}; got {P}.")
    subs, refs = tuple(subjects.values()), tuple(references.values())
    for p in (*subs, *refs):  # a reference with fewer examples than it wants (3-NN at M < 3)
        p.check_dimension(d)  # uses those it has, as at_every_prefix does
        if isinstance(p, TorchPredictor):
            p.check_dims(max(Ms), d)
    M_pad = max(Ms)
    root = jax.random.PRNGKey(eval_seed)
    rows = []
    S, R = len(subs), len(refs)
    for j, M in enumerate(Ms):
        est = mc_means(_akyurek_values, jax.random.fold_in(root, j), n_prompts, dist, int(M),
                       M_pad, P, subs, refs, batch_size=batch_size, jit=False)  # fmt: skip
        for s, sname in enumerate(subjects):
            for r, rname in enumerate(references):
                a, b = est[s * R + r], est[S * R + s * R + r]
                rows.append(
                    {"M": int(M), "subject": sname, "reference": rname, "spd": a.mean,
                     "spd_se": a.se, "ilwd": b.mean, "ilwd_se": b.se, "n_prompts": a.n,
                     "n_probe": P}
                )  # fmt: skip
    return pd.DataFrame(rows)
