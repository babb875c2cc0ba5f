"""Checks d-e: the trained layer on test prompts (theory.md §6, §7.3).

- (d) the full LSA map at the limit weights against the closed-form prediction, per prompt;
- (e) the Monte Carlo test risk of the trained weights against the exact `R(N, M)`, through the
  one Monte Carlo engine (`simulations.icl.montecarlo.mc_risk`, explicit prompts: "MC on the full
  map", theory.md §14).

Mutants that make each check fail are named in its docstring and exercised in
`tests/test_core_checks.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lsa
import theory

from ..icl.distributions import named_shift
from ..icl.montecarlo import MCEstimate, mc_risk
from ..icl.predictors import LSAPredictor, Predictor
from ..icl.prefix import Prefix
from .base import CheckResult

__all__ = ["Prefix", "check_prediction_identity", "check_risk_mc", "context_only_prediction"]


def context_only_prediction(E: jax.Array, W_PV: Any, W_KQ: Any) -> jax.Array:
    """The prediction with the query column deleted from `E E^T` (keys and values are the M
    in-context examples only), `rho = M`: at the limit weights the query term vanishes
    (theory.md §6, §14 row 1), so this equals the full map."""
    M = E.shape[-1] - 1
    Ec = E.at[..., -1].set(0.0)
    upd = W_PV @ Ec @ jnp.swapaxes(Ec, -1, -2) @ W_KQ @ E / M
    return upd[..., -1, -1]


def check_prediction_identity(
    Lambda: np.ndarray,
    N: int,
    M_values: Iterable[int],
    key: jax.Array,
    n_prompts: int = 256,
    *,
    weights: tuple[Any, Any] | None = None,
    full_map: Callable[[Any, Any, Any], Any] = lsa.predict,
) -> list[CheckResult]:
    """(d) At the limit weights (eq. 4.1) the full map predicts `h^T Gamma^{-1} x_q` with
    `rho = M` (eq. 4.3) on every prompt, and the query column of `E E^T` contributes nothing
    (the query term `(a^T x_q)(x_q^T U x_q) / rho` vanishes since `a = 0`).

    `weights` (default `theory.limit_weights(Lambda, N)`) and `full_map` (default the literal
    map `lsa.predict`) are the simulated side. Mutants that fail it: weights with Gamma built
    with M; a map normalised by `rho = N`; weights with `a != 0` (a query term the formula
    drops).
    """
    W_PV, W_KQ = theory.limit_weights(Lambda, N) if weights is None else weights
    dist = lsa.PromptDistribution(Lambda)
    rows = []
    for i, M in enumerate(M_values):
        p = dist.sample(jax.random.fold_in(key, i), n_prompts, M)
        E = lsa.embed(p.X, p.y, p.x_q)
        y_full = np.asarray(full_map(E, W_PV, W_KQ))
        y_thy = theory.trained_prediction(
            np.asarray(p.X), np.asarray(p.y), np.asarray(p.x_q), Lambda, N
        )
        scale = float(np.max(np.abs(y_thy)))
        err = float(np.max(np.abs(y_full - y_thy))) / scale
        y_ctx = np.asarray(context_only_prediction(E, W_PV, W_KQ))
        err_q = float(np.max(np.abs(y_full - y_ctx))) / scale
        rows.append(
            CheckResult(
                f"d{i + 1}",
                f"full map = h^T Gamma^-1 x_q per prompt, no query term, M = {M}",
                "ZFB eq. 4.3",
                0.0,
                err,
                max(err, err_q),
                1e-10,
                "rel",
                max(err, err_q) <= 1e-10,
                {
                    "M": M,
                    "err_formula": err,
                    "err_query_column_deleted": err_q,
                    "prompts": n_prompts,
                },
            )
        )
    return rows


def risk_mutations(Lambda: np.ndarray, N: int, M: int, R: float) -> dict[str, float]:
    """Closed forms with a convention error (theory.md "Convention traps"): `rho = N` at test
    (the prediction normalised by `1/N` instead of `1/M`: every prediction times `M/N`, i.e.
    `G = (M/N) Gamma^{-1}`), `Gamma` built with `M`, and the loss's 1/2 kept in the risk."""
    eye = np.eye(Lambda.shape[0])
    Ginv = np.linalg.inv(theory.gamma(Lambda, N))
    G_M = np.linalg.inv(theory.gamma(Lambda, M))
    return {
        "rho_N": theory.shift_risk((M / N) * Ginv, Lambda, Lambda, eye, 0.0, M),
        "Gamma_M": theory.shift_risk(G_M, Lambda, Lambda, eye, 0.0, M),
        "half": 0.5 * R,
    }


def check_risk_mc(
    Lambda: np.ndarray,
    N: int,
    W_PV: Any,
    W_KQ: Any,
    M_values: Iterable[int],
    n_prompts: int,
    key: jax.Array,
    z_max: float = 4.0,
    *,
    batch: int = 25_000,
) -> tuple[list[CheckResult], list[dict[str, Any]]]:
    """(e) The trained weights' test risk at `M != N`: Monte Carlo on the full LSA map
    (`mc_risk`, explicit prompts of length `max(M_values)` and their prefixes) against the exact
    `R(N, M)` of theory.md §7.3 (no 1/2), `|z| <= z_max`.

    The details record the z-scores that plausible errors would give against the same sample, to
    show it has the power to catch them (`risk_mutations`): `z_if_rho_N` (the prediction
    normalised by `1/N` instead of `1/M`, i.e. times `M/N`), `z_if_Gamma_M` (Gamma built with M)
    and `z_if_half` (the loss's 1/2 kept in the risk).
    Mutants that fail the check: weights with Gamma built with M, weights scaled by `M/N`
    (`rho = N`), the closed form with a 1/2.
    """
    Ms = [int(m) for m in M_values]
    dist = named_shift("none", Lambda)
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    layer = LSAPredictor(W_PV, W_KQ)
    preds: dict[str, Predictor] = {f"M={M}": Prefix(layer, M) for M in Ms}
    est = mc_risk(preds, dist, max(Ms), n_prompts, key, batch_size=batch, sampler="prompts")
    rows, table = [], []
    for i, M in enumerate(Ms):
        R = theory.risk(Lambda, N, M)
        e: MCEstimate = est[f"M={M}"]
        z = e.z(R)
        power = {f"z_if_{k}": e.z(v) for k, v in risk_mutations(Lambda, N, M, R).items()}
        rows.append(
            CheckResult(
                f"e{i + 1}",
                f"MC risk of trained weights = R(N, M), M = {M}",
                "theory.md §7.3",
                R,
                e.mean,
                z,
                z_max,
                "z",
                abs(z) <= z_max,
                {"M": M, "se": e.se, "n": e.n, **power},
            )
        )
        table.append(
            {"M": M, "theory": R, "mc_mean": e.mean, "mc_se": e.se, "z": z, "n": e.n, **power}
        )
    return rows, table
