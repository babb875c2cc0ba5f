"""Losses of the LSA layer: the exact population loss on the reduced manifold and the empirical
loss over a fixed prompt set, for all entries of `(W_PV, W_KQ)`.

The population loss carries the factor 1/2 of ZFB eq. 3.8.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .model import embed

__all__ = [
    "PromptStats",
    "QuadraticLoss",
    "empirical_loss",
    "empirical_predict",
    "gamma_matrix",
    "population_loss",
    "population_loss_grad",
    "prompt_stats",
    "quadratic_form_loss",
    "quadratic_loss",
    "reduced_loss",
]


def gamma_matrix(
    Lambda: Float[ArrayLike, "d d"], N: int | Float[ArrayLike, ""]
) -> Float[Array, "d d"]:
    """`Gamma = (1 + 1/N) Lambda + (tr(Lambda)/N) I` [ZFB Thm 4.1], built from the training N."""
    Lambda = jnp.asarray(Lambda)
    eye = jnp.eye(Lambda.shape[0])
    return (1.0 + 1.0 / jnp.asarray(N)) * Lambda + (jnp.trace(Lambda) / N) * eye


def reduced_loss(
    U: Float[ArrayLike, "d d"],
    u: Float[ArrayLike, ""],
    Lambda: Float[ArrayLike, "d d"],
    N: int | Float[ArrayLike, ""],
) -> Float[Array, ""]:
    """The reduced loss `l~(U, u) = tr[(1/2) u^2 Gamma Lambda U Lambda U^T - u Lambda^2 U^T]`
    [ZFB eq. 5.5, Lemma A.1]; gradient flow on it is the ODE of Lemma 5.2."""
    U = jnp.asarray(U)
    Lambda = jnp.asarray(Lambda)
    G = gamma_matrix(Lambda, N)
    return jnp.trace(0.5 * u**2 * G @ Lambda @ U @ Lambda @ U.T - u * Lambda @ Lambda @ U.T)


def population_loss(
    U: Float[ArrayLike, "d d"],
    u: Float[ArrayLike, ""],
    Lambda: Float[ArrayLike, "d d"],
    N: int | Float[ArrayLike, ""],
) -> Float[Array, ""]:
    """The population loss `L = (1/2) E[(y_hat - <w, x_q>)^2]` [ZFB eq. 3.8] at `a = b = 0`.

    On that manifold `L = l~(U, u) + tr(Lambda)/2` (theory.md §4.3).
    """
    return reduced_loss(U, u, Lambda, N) + 0.5 * jnp.trace(jnp.asarray(Lambda))


population_loss_grad = jax.grad(population_loss, argnums=(0, 1))
"""`(dL/dU, dL/du)` of `population_loss` by automatic differentiation."""


class PromptStats(NamedTuple):
    """Per-prompt sufficient statistics of the empirical loss [ZFB eq. 3.6].

    The prediction depends on a prompt only through `S = E E^T / rho` (`(d+1, d+1)`, query
    column included) and the query `x_q`; the target is `y_q`.
    """

    S: Float[Array, "B d+1 d+1"]
    x_q: Float[Array, "B d"]
    y_q: Float[Array, " B"]


def prompt_stats(
    X: Float[ArrayLike, "B n d"],
    y: Float[ArrayLike, "B n"],
    x_q: Float[ArrayLike, "B d"],
    y_q: Float[ArrayLike, " B"],
) -> PromptStats:
    """Precompute `S = E E^T / n` for each prompt (once, before training)."""
    E = embed(X, y, x_q)
    n = E.shape[-1] - 1
    S = jnp.einsum("bik,bjk->bij", E, E) / n
    return PromptStats(S=S, x_q=jnp.asarray(x_q), y_q=jnp.asarray(y_q))


def empirical_predict(
    W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"], stats: PromptStats
) -> Float[Array, " B"]:
    """Predictions `w_PV_row^T S_b W_KQ[:, :d] x_q,b` from the statistics [ZFB eq. 3.6].

    Written as one matrix-vector product (`S^T` against the last row of `W_PV`) and one
    matrix-matrix product (`x_q W_KQ[:, :d]^T`): O(B (d+1)^2) per call.
    """
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    B, D, _ = stats.S.shape
    z = (jnp.swapaxes(stats.S, 1, 2).reshape(B * D, D) @ W_PV[-1]).reshape(B, D)
    kq = stats.x_q @ W_KQ[:, :-1].T  # (B, d+1)
    return jnp.sum(z * kq, axis=-1)


def empirical_loss(
    W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"], stats: PromptStats
) -> Float[Array, ""]:
    """`L_hat = (1/(2B)) sum_tau (y_hat_tau - y_q,tau)^2` [ZFB eq. 3.7] over a fixed prompt set."""
    r = empirical_predict(W_PV, W_KQ, stats) - stats.y_q
    return 0.5 * jnp.mean(r**2)


class QuadraticLoss(NamedTuple):
    """The empirical loss as an exact quadratic form, independent of the number of prompts B.

    The prediction is bilinear in `r = W_PV[d, :]` and `K = W_KQ[:, :d]`:
    `y_hat_b = sum_{ijk} r_i S_b[i, j] K[j, k] x_q,b[k] = <z, phi_b>` with `z = r (x) vec(K)` and
    `phi_b = S_b (x) x_q,b` (dimension `D = (d+1)^2 d`). Hence
    `L_hat = (1/2) (z^T A z - 2 c^T z + e)` with `A = mean_b phi_b phi_b^T`,
    `c = mean_b phi_b y_q,b`, `e = mean_b y_q,b^2` [ZFB eq. 3.7]. Building `A` costs `O(B D^2)`
    once; each loss or gradient evaluation then costs `O(D^2)` whatever B is.
    """

    A: Float[Array, "D D"]
    c: Float[Array, " D"]
    e: Float[Array, ""]


def quadratic_loss(stats: PromptStats, chunk: int = 20_000) -> QuadraticLoss:
    """Build the `QuadraticLoss` of a prompt set from its statistics, in chunks of prompts."""
    B, D1, _ = stats.S.shape
    d = D1 - 1
    Dim = D1 * D1 * d
    A = jnp.zeros((Dim, Dim))
    c = jnp.zeros(Dim)

    @jax.jit
    def block(S, xq, yq):
        phi = (S[:, :, :, None] * xq[:, None, None, :]).reshape(S.shape[0], Dim)
        return phi.T @ phi, phi.T @ yq

    for start in range(0, B, chunk):
        sl = slice(start, min(start + chunk, B))
        dA, dc = block(stats.S[sl], stats.x_q[sl], stats.y_q[sl])
        A = A + dA
        c = c + dc
    return QuadraticLoss(A=A / B, c=c / B, e=jnp.mean(stats.y_q**2))


def quadratic_form_loss(
    W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"], q: QuadraticLoss
) -> Float[Array, ""]:
    """`L_hat` evaluated through the `QuadraticLoss` (equal to `empirical_loss`; tested)."""
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    z = jnp.outer(W_PV[-1], W_KQ[:, :-1].reshape(-1)).reshape(-1)
    return 0.5 * (z @ (q.A @ z) - 2.0 * q.c @ z + q.e)
