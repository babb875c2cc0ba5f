"""Stacks of L linear self-attention layers (docs/deep.md), in two named conventions.

Each layer is a residual LSA update of the embedding Z (shape (d+1, n+1), `lsa.embed`):

    Z_{l+1} = Z_l + W_PV^l Z_l D (Z_l^T W_KQ^l Z_l) / rho,      rho = n (columns minus one),

- **"zfb"** (Zhang, Frei & Bartlett 2024, eq. 3.3 stacked): D = I, no mask; the prediction is
  `+Z_L[d, n]`, the bottom-right entry. One layer is exactly `lsa.lsa_forward` / `lsa.predict`.
- **"ahn"** (Ahn, Cheng, Daneshmand & Sra 2023, eq. (2) and Lemma 1): D = diag(I_n, 0), so the
  query column is excluded from the keys and values (it still receives the update); the prediction
  is read with a minus sign, `-Z_L[d, n]`.

**Sparse family and its sign convention.** `sparse_weights(A)` gives, for every layer,

    W_PV^l = [[0, 0], [0, 1]],        W_KQ^l = [[-A_l^T, 0], [0, 0]]      (Ahn et al.'s Q_l = -A_l),

so that A_l carries the sign of the step: A_l = a_l P for the preconditioned GD step
w_{l+1} = w_l - a_l P grad R(w_l). With these weights the label row of Z_l is
(y_i - <w_l, x_i>)_i followed by -<w_l, x_q> in the query slot, for the iterates
w_{l+1} = w_l - A_l grad R(w_l) of R(w) = (1/2n) ||X w - y||^2 from w_0 = 0 (Ahn et al. Lemma 1;
with the transpose it holds for any, also non-symmetric, A_l): the layer adds
-(1/n) sum_i r_i x_j^T A_l x_i to every slot j, which is the change of y_j - <w, x_j> under the GD
step. So the "ahn" stack predicts exactly <w_L, x_q> (tested to 1e-12 per prompt,
`tests/test_deep.py`). `W_KQ = -A^T` holds the *negative* step: ZFB's one-layer optimum
U = W_KQ[:d, :d] = Gamma^{-1} is A = -Gamma^{-1} of this family read with ZFB's plus sign, and
A = +Gamma^{-1} read with Ahn's minus sign gives the same prediction.

**How the conventions differ.** For the same weights:

- sparse family, L = 1: the query's label slot is 0 when it enters the only layer, and the query
  column is multiplied by it (W_PV has only the label row), so the mask changes nothing: Z_1 is
  the same in both conventions and the predictions differ only by the readout sign.
- sparse family, L >= 2: after one layer the query slot holds -<w_1, x_q> != 0; unmasked, it enters
  the keys and values of the next layer, so Z_2 differs (by the term (1/n) r_q x_q^T W_KQ x_j).
- full parameters, L = 1 already: with a non-zero W_PV row a = W_PV[d, :d] (or any top block),
  the query column enters through x_q: the "query self-term" (1/n) (W_PV z_q)(z_q^T W_KQ Z),
  z_q = (x_q, 0), which only the unmasked convention keeps.

Weights are stacked arrays of shape (L, d+1, d+1); a weight-shared ("looped") stack repeats one
pair (`looped_weights`). Everything is jit- and vmap-friendly (prompts broadcast over leading batch
axes) and follows the dtype of the inputs: call `lsa.set_precision("float64")` for comparisons.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "CONVENTIONS",
    "Convention",
    "deep_forward",
    "deep_predict",
    "deep_trajectory",
    "looped_weights",
    "preconditioned_gd",
    "readout_sign",
    "scalar_steps",
    "sparse_weights",
]

Convention = Literal["zfb", "ahn"]
#: The named conventions: mask of the keys/values and sign of the readout.
CONVENTIONS: dict[str, dict[str, object]] = {
    "zfb": {"mask_query": False, "readout_sign": 1.0},
    "ahn": {"mask_query": True, "readout_sign": -1.0},
}


def _check_convention(convention: str) -> bool:
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown `convention={convention!r}`; choose 'zfb' (no mask, prediction +Z[d, n]) "
            "or 'ahn' (query column masked from keys and values, prediction -Z[d, n])."
        )
    return bool(CONVENTIONS[convention]["mask_query"])


def readout_sign(convention: Convention) -> float:
    """+1 for "zfb", -1 for "ahn": the prediction is `readout_sign * Z_L[..., d, n]`."""
    _check_convention(convention)
    return float(CONVENTIONS[convention]["readout_sign"])  # type: ignore[arg-type]


def _check_weights(E: Array, W_PV: Array, W_KQ: Array) -> None:
    D = E.shape[-2]
    for name, W in (("W_PV", W_PV), ("W_KQ", W_KQ)):
        if W.ndim != 3 or W.shape[1:] != (D, D) or W.shape[0] < 1:
            raise ValueError(
                f"`{name}` must be a stack of shape (L, {D}, {D}) with L >= 1 to match the "
                f"embedding's d+1 = {D} rows; got {W.shape}. For one layer use W[None]; for a "
                "shared (looped) stack use `looped_weights`."
            )
    if W_PV.shape[0] != W_KQ.shape[0]:
        raise ValueError(
            f"`W_PV` and `W_KQ` must have the same number of layers; got {W_PV.shape[0]} and "
            f"{W_KQ.shape[0]}."
        )
    if E.shape[-1] < 2:
        raise ValueError(f"the embedding needs n >= 1 context columns; got shape {E.shape}.")


def _layer(Z: Array, W_PV: Array, W_KQ: Array, mask_query: bool) -> Array:
    """One residual layer `Z + W_PV Z D (Z^T W_KQ Z) / rho` (the literal order of
    `lsa.lsa_forward`, so that one "zfb" layer is bit-for-bit that map)."""
    rho = Z.shape[-1] - 1
    attn = jnp.swapaxes(Z, -1, -2) @ W_KQ @ Z  # (*batch, n+1, n+1)
    ZD = Z.at[..., -1].set(0.0) if mask_query else Z
    return Z + W_PV @ ZD @ attn / rho


def deep_trajectory(
    E: Float[ArrayLike, "*batch d+1 n+1"],
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    convention: Convention = "zfb",
) -> Float[Array, "L+1 *batch d+1 n+1"]:
    """All states Z_0 = E, Z_1, ..., Z_L of the stack (module docstring), stacked on axis 0."""
    mask = _check_convention(convention)
    E = jnp.asarray(E)
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    _check_weights(E, W_PV, W_KQ)

    Zs = [E]
    for ell in range(W_PV.shape[0]):
        Zs.append(_layer(Zs[-1], W_PV[ell], W_KQ[ell], mask))
    return jnp.stack(Zs)


def deep_forward(
    E: Float[ArrayLike, "*batch d+1 n+1"],
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    convention: Convention = "zfb",
) -> Float[Array, "*batch d+1 n+1"]:
    """The output Z_L of an L-layer LSA stack [ZFB eq. 3.3 stacked; Ahn et al. eq. (2)].

    **Arguments:**

    - `E`: embeddings (`lsa.embed`), shape `(*batch, d+1, n+1)`; rho = n for every layer.
    - `W_PV`, `W_KQ`: per-layer weights, shape `(L, d+1, d+1)` each.
    - `convention`: "zfb" (no mask) or "ahn" (query column excluded from keys and values).

    **Returns:** Z_L, the shape of `E`.
    """
    mask = _check_convention(convention)
    E = jnp.asarray(E)
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    _check_weights(E, W_PV, W_KQ)

    # A Python loop (unrolled under jit; L is small): each layer is the same sequence of
    # operations as `lsa.lsa_forward`, so one "zfb" layer reproduces it bit for bit.
    Z = E
    for ell in range(W_PV.shape[0]):
        Z = _layer(Z, W_PV[ell], W_KQ[ell], mask)
    return Z


def deep_predict(
    E: Float[ArrayLike, "*batch d+1 n+1"],
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    convention: Convention = "zfb",
) -> Float[Array, " *batch"]:
    """The stack's prediction `readout_sign(convention) * Z_L[..., d, n]`: +1 for "zfb" (ZFB
    §3.2), -1 for "ahn" (Ahn et al. read the prediction with a minus sign). One "zfb" layer
    equals `lsa.predict` exactly."""
    Z = deep_forward(E, W_PV, W_KQ, convention)
    return readout_sign(convention) * Z[..., -1, -1]


# ----------------------------------------------------------------------------------------------
# Parameterisations


def sparse_weights(
    A: Float[ArrayLike, "L d d"],
) -> tuple[Float[Array, "L d+1 d+1"], Float[Array, "L d+1 d+1"]]:
    """The sparse family: W_PV^l = [[0, 0], [0, 1]], W_KQ^l = [[-A_l^T, 0], [0, 0]].

    Sign convention: A_l = a_l P is the preconditioned GD step itself (positive for a descent
    step); the minus sign sits in W_KQ (Ahn et al.'s Q_l = [[-A_l, 0], [0, 0]]), and the transpose
    makes the identity hold for non-symmetric P. Read with the "ahn" convention the stack predicts
    <w_L, x_q> for w_{l+1} = w_l - A_l grad R(w_l), w_0 = 0 (`preconditioned_gd`).

    **Arguments:** `A`, shape (L, d, d).

    **Returns:** `(W_PV, W_KQ)`, each of shape (L, d+1, d+1).
    """
    A = jnp.asarray(A)
    if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] < 1:
        raise ValueError(
            f"`A` must have shape (L, d, d) with L >= 1 (one d x d step matrix per layer); got "
            f"{A.shape}. Build scalar steps with `scalar_steps`."
        )
    L, d, _ = A.shape
    W_PV = jnp.zeros((L, d + 1, d + 1), A.dtype).at[:, -1, -1].set(1.0)
    W_KQ = jnp.zeros((L, d + 1, d + 1), A.dtype).at[:, :-1, :-1].set(-jnp.swapaxes(A, -1, -2))
    return W_PV, W_KQ


def scalar_steps(
    a: Float[ArrayLike, " L"], d: int, Sigma: Float[ArrayLike, "d d"] | None = None
) -> Float[Array, "L d d"]:
    """Scalar steps A_l = a_l I_d, or A_l = a_l Sigma^{-1} when `Sigma` is given.

    **Arguments:**

    - `a`: the step sizes, shape (L,).
    - `d`: input dimension.
    - `Sigma`: an optional symmetric positive definite (d, d) covariance.

    **Returns:** A, shape (L, d, d).
    """
    a_arr = np.asarray(a, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.size < 1 or not np.all(np.isfinite(a_arr)):
        raise ValueError(
            f"`a` must be a non-empty 1-d array of finite step sizes (one per layer); got {a!r}."
        )
    P: np.ndarray
    if Sigma is None:
        P = np.eye(int(d))
    else:
        S = np.asarray(Sigma, dtype=np.float64)
        if S.shape != (d, d):
            raise ValueError(f"`Sigma` must have shape ({d}, {d}); got {S.shape}.")
        if not np.allclose(S, S.T, rtol=0, atol=1e-12 * np.max(np.abs(S))):
            raise ValueError("`Sigma` must be symmetric; pass (Sigma + Sigma.T) / 2.")
        if np.linalg.eigvalsh(S)[0] <= 0:
            raise ValueError("`Sigma` must be positive definite.")
        P = np.linalg.inv(S)
        P = 0.5 * (P + P.T)
    return jnp.asarray(a_arr[:, None, None] * P[None])


def looped_weights(
    W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"], L: int
) -> tuple[Float[Array, "L d+1 d+1"], Float[Array, "L d+1 d+1"]]:
    """A weight-shared (looped) stack: the same `(W_PV, W_KQ)` in each of `L` layers."""
    if not isinstance(L, int | np.integer) or isinstance(L, bool) or L < 1:
        raise ValueError(f"`L` must be an integer >= 1 (the number of layers); got {L!r}.")
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    if W_PV.ndim != 2 or W_PV.shape != W_KQ.shape or W_PV.shape[0] != W_PV.shape[1]:
        raise ValueError(
            f"`W_PV` and `W_KQ` must be one (d+1, d+1) pair; got {W_PV.shape} and {W_KQ.shape}."
        )
    return jnp.broadcast_to(W_PV, (int(L), *W_PV.shape)), jnp.broadcast_to(
        W_KQ, (int(L), *W_KQ.shape)
    )


def preconditioned_gd(
    X: Float[ArrayLike, "*batch n d"],
    y: Float[ArrayLike, "*batch n"],
    A: Float[ArrayLike, "L d d"],
) -> Float[Array, "*batch d"]:
    """w_L of w_{l+1} = w_l - A_l grad R(w_l), R(w) = (1/2n) ||X w - y||^2, w_0 = 0
    [Ahn et al. Lemma 1]. The reference the sparse "ahn" stack is compared with."""
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    A = jnp.asarray(A)
    n = X.shape[-2]
    w = jnp.zeros(X.shape[:-2] + X.shape[-1:], X.dtype)
    for ell in range(A.shape[0]):
        resid = jnp.einsum("...nd,...d->...n", X, w) - y
        grad = jnp.einsum("...nd,...n->...d", X, resid) / n
        w = w - grad @ A[ell].T
    return w
