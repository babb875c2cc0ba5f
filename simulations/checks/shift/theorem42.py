"""Check s20: ZFB Theorem 4.2 (eq. 4.6) for a data distribution with label noise and a quadratic
part, by Monte Carlo on the full LSA map at the trained weights (theory.md §7.1, §14 row 15).

The law `y = <w0, x> + beta ((v^T x)^2 - v^T Lambda v) + eps` is not a `TestDistribution`, so the
squared errors are drawn by `_theorem42_errors` and averaged by the engine's generic
`simulations.icl.montecarlo.mc_means`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

import lsa
import theory

from ...icl.montecarlo import mc_means
from ..base import CheckResult
from .instance import ShiftInstance, Sizes, Tag

__all__ = ["check_theorem42", "theorem42_moments"]

_F64 = jnp.float64


def theorem42_moments(
    Lambda: np.ndarray, w0: np.ndarray, v: np.ndarray, beta: float, s: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """`a_D`, `Sigma = Cov(xy)` and `min_w E(<w, x> - y)^2` for
    `y = <w0, x> + beta ((v^T x)^2 - v^T Lambda v) + eps`, `x ~ N(0, Lambda)`, `eps ~ N(0, s^2)`
    (ZFB eq. 4.5), by Isserlis' theorem (written out here, independently of `theory/`).

    With `q = v^T x`, `sq = v^T Lambda v`, `a = Lambda v`:
    - odd moments vanish, so `E[xy] = Lambda w0` and `a_D = w0`;
    - `E[q^2 x x^T] = sq Lambda + 2 a a^T` and `E[q^4 x x^T] = 3 sq^2 Lambda + 12 sq a a^T`, so
      `E[(q^2 - sq)^2 x x^T] = 2 sq^2 Lambda + 8 sq a a^T`;
    - `E[(w0^T x)^2 x x^T] = (w0^T Lambda w0) Lambda + 2 Lambda w0 w0^T Lambda`;
    - `Cov(xy) = E[y^2 x x^T] - Lambda w0 w0^T Lambda`
      `= (w0^T Lambda w0 + 2 beta^2 sq^2 + s^2) Lambda + Lambda w0 w0^T Lambda
         + 8 beta^2 sq Lambda v v^T Lambda`;
    - `E y^2 = w0^T Lambda w0 + 2 beta^2 sq^2 + s^2`, so the best linear error is
      `E y^2 - E[xy]^T Lambda^{-1} E[xy] = 2 beta^2 sq^2 + s^2`.
    """
    Lw = Lambda @ w0
    a = Lambda @ v
    sq = float(v @ a)
    wLw = float(w0 @ Lw)
    Sigma = (wLw + 2 * beta**2 * sq**2 + s**2) * Lambda + np.outer(Lw, Lw)
    Sigma = Sigma + 8 * beta**2 * sq * np.outer(a, a)
    best = 2 * beta**2 * sq**2 + s**2
    return np.array(w0, dtype=np.float64), 0.5 * (Sigma + Sigma.T), best


def _theorem42_errors(
    key: PRNGKeyArray,
    B: int,
    factor: Array,
    w0: Array,
    v: Array,
    beta: Array,
    s: Array,
    W_PV: Array,
    W_KQ: Array,
    M: int,
    N: int,
) -> Array:
    """`(B, 2)` squared errors on `B` prompts of length `M`: of the full LSA map
    (`lsa.predict_prompt`) and of its predictions times M/N (the rho = N convention), with
    `x ~ N(0, F F^T)` and `y = <w0, x> + beta ((v^T x)^2 - v^T Lambda v) + eps`."""
    kx, ke = jax.random.split(key)
    d = factor.shape[0]
    x = jax.random.normal(kx, (B, M + 1, d), _F64) @ factor.T
    sq = jnp.sum((factor.T @ v) ** 2)
    q = x @ v
    y = x @ w0 + beta * (q * q - sq) + s * jax.random.normal(ke, (B, M + 1), _F64)
    yhat = lsa.predict_prompt(x[:, :M], y[:, :M], x[:, M], W_PV, W_KQ)
    return jnp.stack([(yhat - y[:, M]) ** 2, ((M / N) * yhat - y[:, M]) ** 2], axis=1)


def check_theorem42(inst: ShiftInstance, sizes: Sizes) -> list[CheckResult]:
    """s20: ZFB Theorem 4.2 (eq. 4.6) for a data distribution with label noise and a quadratic
    part, by Monte Carlo on the full LSA map at the trained weights (theory.md §14 row 15).

    `details`: the z-score of the rho = N convention (its own estimate on the same prompts) and
    that of the closed form with the nonlinear part ignored."""
    L, N, d = inst.Lambda, inst.N, inst.d
    M = inst.M_b
    kw, kv = jax.random.split(inst.key(Tag.THEOREM42_VECTORS))
    w0 = np.asarray(jax.random.normal(kw, (d,), _F64))
    v = np.asarray(jax.random.normal(kv, (d,), _F64))
    v = v / np.sqrt(v @ L @ v)  # v^T Lambda v = 1
    beta, s = 0.5, 0.5
    a_D, Sigma, best = theorem42_moments(L, w0, v, beta, s)
    R = theory.theorem42_risk(L, N, M, a_D, Sigma, best)
    est, est_rho_N = mc_means(
        _theorem42_errors,
        inst.key(20),
        sizes.n,
        jnp.asarray(np.linalg.cholesky(L)),
        jnp.asarray(w0),
        jnp.asarray(v),
        jnp.asarray(beta, _F64),
        jnp.asarray(s, _F64),
        inst.lsa.W_PV,
        inst.lsa.W_KQ,
        M,
        N,
        batch_size=sizes.batch,
    )
    _, Sig_lin, best_lin = theorem42_moments(L, w0, v, 0.0, s)
    R_lin = theory.theorem42_risk(L, N, M, a_D, Sig_lin, best_lin)
    z = est.z(R)
    return [
        CheckResult(
            "s20",
            f"Thm 4.2: y = <w0,x> + {beta:g}((v^T x)^2 - v^T L v) + eps, s = {s:g}, M = {M}",
            "ZFB Thm 4.2, eq. 4.6; theory.md §7.1",
            R,
            est.mean,
            z,
            sizes.z_max,
            "z",
            abs(z) <= sizes.z_max,
            {
                "M": M,
                "se": est.se,
                "n": est.n,
                "best_linear_error": best,
                "z_if_rho_N": est_rho_N.z(R),
                "z_if_nonlinear_part_ignored": est.z(R_lin),
            },
        )
    ]
