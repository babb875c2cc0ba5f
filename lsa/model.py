"""The linear self-attention (LSA) layer of Zhang, Frei & Bartlett, exactly as in the paper.

Conventions (theory.md §2; each one is tested):

- the embedding of a prompt of length n is `E = [[x_1 ... x_n, x_q], [y_1 ... y_n, 0]]`, of shape
  (d+1, n+1), with the query's label slot equal to 0;
- `f_LSA(E) = E + W_PV E (E^T W_KQ E) / rho` with `rho = (number of columns of E) - 1 = n`, so
  rho = N on training prompts and rho = M on test prompts;
- there is no mask: the query column is part of `E E^T`;
- the prediction is the bottom-right entry of `f_LSA(E)`, 0-based `[d, n]`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "Reduced",
    "embed",
    "from_reduced",
    "lsa_forward",
    "predict",
    "predict_prompt",
    "reduced_view",
]


def embed(
    X: Float[ArrayLike, "*batch n d"],
    y: Float[ArrayLike, "*batch n"],
    x_q: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d+1 n+1"]:
    """Build the ZFB embedding of a batch of prompts [ZFB eq. 3.4].

    **Arguments:**

    - `X`: the in-context inputs, shape `(*batch, n, d)`.
    - `y`: their labels, shape `(*batch, n)`.
    - `x_q`: the query inputs, shape `(*batch, d)`.

    **Returns:**

    `E` of shape `(*batch, d+1, n+1)`: columns are `(x_i, y_i)` then `(x_q, 0)`.
    """
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    x_q = jnp.asarray(x_q)
    if X.shape[:-1] != y.shape or X.shape[:-2] + X.shape[-1:] != x_q.shape:
        raise ValueError(
            f"shapes disagree: X {X.shape} must be (*batch, n, d), y {y.shape} (*batch, n) and "
            f"x_q {x_q.shape} (*batch, d)."
        )
    top = jnp.concatenate([X, x_q[..., None, :]], axis=-2)  # (*batch, n+1, d)
    bottom = jnp.concatenate([y, jnp.zeros_like(y[..., :1])], axis=-1)  # (*batch, n+1)
    return jnp.concatenate([jnp.swapaxes(top, -1, -2), bottom[..., None, :]], axis=-2)


def lsa_forward(
    E: Float[ArrayLike, "*batch d+1 n+1"],
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
) -> Float[Array, "*batch d+1 n+1"]:
    """The full LSA map `E + W_PV E (E^T W_KQ E) / rho` with `rho = n` [ZFB eq. 3.3].

    This is the literal map, used as the reference that every shortcut is checked against.

    **Arguments:**

    - `E`: embeddings, shape `(*batch, d+1, n+1)`.
    - `W_PV`, `W_KQ`: the merged value-projection and key-query matrices, `(d+1, d+1)` each.

    **Returns:**

    `f_LSA(E)` with the same shape as `E`.
    """
    E = jnp.asarray(E)
    rho = E.shape[-1] - 1
    Et = jnp.swapaxes(E, -1, -2)
    attn = Et @ jnp.asarray(W_KQ) @ E  # (*batch, n+1, n+1)
    return E + jnp.asarray(W_PV) @ E @ attn / rho


def predict(
    E: Float[ArrayLike, "*batch d+1 n+1"],
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
) -> Float[Array, " *batch"]:
    """The LSA prediction: the bottom-right entry of the full map `f_LSA(E)` [ZFB §3.2].

    **Returns:**

    `y_hat` of shape `(*batch,)`, read off `f_LSA(E)[..., d, n]`.
    """
    return lsa_forward(E, W_PV, W_KQ)[..., -1, -1]


def predict_prompt(
    X: Float[ArrayLike, "*batch n d"],
    y: Float[ArrayLike, "*batch n"],
    x_q: Float[ArrayLike, "*batch d"],
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
) -> Float[Array, " *batch"]:
    """The same prediction as `predict(embed(X, y, x_q), ...)`, computing only what it needs.

    Only the last column of `f_LSA(E)` matters and its last entry is
    `w_PV_row^T (E E^T / rho) W_KQ[:, :d] x_q`, where `w_PV_row` is the last row of `W_PV`
    [ZFB eq. 3.6]. This costs O(n d) per prompt instead of O(n^2 d); the query column stays in
    `E E^T` (no mask). Exactly equal to the literal map up to round-off (tested).
    """
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    x_q = jnp.asarray(x_q)
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    n = X.shape[-2]
    v = x_q @ W_KQ[:, :-1].T  # (*batch, d+1) = W_KQ[:, :d] x_q
    # E^T v for the n context columns and the query column.
    ctx = X @ v[..., :-1, None] + y[..., None] * v[..., -1:, None]  # (*batch, n, 1)
    ctx = ctx[..., 0]
    qry = jnp.sum(x_q * v[..., :-1], axis=-1)  # (*batch,)
    # E (E^T v): top d entries and the label entry.
    top = jnp.einsum("...nd,...n->...d", X, ctx) + x_q * qry[..., None]
    bot = jnp.sum(y * ctx, axis=-1)
    w = W_PV[-1]
    return (top @ w[:-1] + bot * w[-1]) / n


class Reduced(NamedTuple):
    """The entries of `(W_PV, W_KQ)` that the prediction depends on [ZFB Lemma 5.1].

    - `u = W_PV[d, d]` (the paper's u_{-1}), a scalar;
    - `U = W_KQ[:d, :d]` (U_11), `(d, d)`;
    - `a = W_PV[d, :d]` (u_12), `(d,)`;
    - `b = W_KQ[d, :d]` (u_21), `(d,)`.
    """

    u: Float[Array, ""]
    U: Float[Array, "d d"]
    a: Float[Array, " d"]
    b: Float[Array, " d"]


def reduced_view(W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"]) -> Reduced:
    """Read `(u, U, a, b)` off full matrices [ZFB Lemma 5.1]."""
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    return Reduced(u=W_PV[-1, -1], U=W_KQ[:-1, :-1], a=W_PV[-1, :-1], b=W_KQ[-1, :-1])


def from_reduced(
    u: Float[ArrayLike, ""],
    U: Float[ArrayLike, "d d"],
    a: Float[ArrayLike, " d"] | None = None,
    b: Float[ArrayLike, " d"] | None = None,
) -> tuple[Float[Array, "d+1 d+1"], Float[Array, "d+1 d+1"]]:
    """Full `(W_PV, W_KQ)` with the given reduced entries and every other entry zero.

    With `a = b = 0` this is the form of Assumption 3.3 and of the limit (eq. 4.1).
    """
    U = jnp.asarray(U)
    d = U.shape[0]
    a = jnp.zeros(d, U.dtype) if a is None else jnp.asarray(a)
    b = jnp.zeros(d, U.dtype) if b is None else jnp.asarray(b)
    W_PV = jnp.zeros((d + 1, d + 1), U.dtype).at[-1, -1].set(u).at[-1, :-1].set(a)
    W_KQ = jnp.zeros((d + 1, d + 1), U.dtype).at[:-1, :-1].set(U).at[-1, :-1].set(b)
    return W_PV, W_KQ
