"""Explicit weights for L-layer LSA stacks (issue 10, part 5; docs/deep.md "Constructions").

All constructions are read with the masked **"ahn"** convention of `lsa.deep` (query column
excluded from keys and values, prediction `-Z_L[d, n]`), and all start from w_0 = 0.

1. `gd_weights(eta, L, d)`: L steps of plain GD w <- w - eta grad R(w), R(w) = (1/2n)||Xw - y||^2
   [Akyuerek et al. ICLR 2023, §3 and App. A–C: one GD step per layer; Ahn et al. NeurIPS 2023,
   Lemma 1 with Q_l = -eta I]. The sparse family with A_l = eta I (`lsa.deep.sparse_weights`),
   on the ordinary embedding `lsa.embed`. Exact.
2. `preconditioned_gd_weights(P, L)`: L steps w <- w - P_l grad R(w) [Ahn et al. Lemma 1,
   Q_l = -P_l]. Sparse family with A_l = P_l. Exact.
3. `chebyshev_ridge_weights(L, lam, s_lo, s_hi)`: L steps of Chebyshev-accelerated Richardson
   iteration for the ridge system (S + lam I) w = h, S = X^T X / n, h = X^T y / n, i.e.
   w_lam = (X^T X + n lam I)^{-1} X^T y. This needs an **augmented embedding** (`ridge_embed`,
   rows x, 1, y, r) and **2L layers**: the sparse family cannot represent the shift, because its
   state is only the residual row r_j = y_j - <w, x_j>, and the shrink w <- (1 - mu) w changes
   r_j by mu <w, x_j> = mu (y_j - r_j), which needs the label y_j next to the residual. Each
   Richardson step w <- w - beta_k((S + lam I) w - h) is split exactly into

       GD layer      w <- w - a_k grad R(w),   a_k  = beta_k / (1 - beta_k lam) = 1 / s_k,
       shrink layer  w <- (1 - mu_k) w,        mu_k = beta_k lam             = lam / (s_k + lam),

   since (1 - mu)(w - a grad R) = (1 - beta lam) w - beta (S w - h). With beta_k = 1/(s_k + lam)
   and s_k the Chebyshev nodes of [s_lo, s_hi] (`chebyshev_ridge_steps`), the residual polynomial
   is Q_L(t) = T_L((b + a - 2t)/(b - a)) / T_L((b + a)/(b - a)),
   [a, b] = [s_lo + lam, s_hi + lam],
   so w_L - w_lam = -Q_L(S + lam I) w_lam and, whenever spec(S) lies in [s_lo, s_hi],

       ||w_L - w_lam|| <= ||w_lam|| / T_L((kappa + 1)/(kappa - 1)),
       kappa = (s_hi + lam)/(s_lo + lam)

   (the classical Chebyshev bound; `theory.deep_constructions.chebyshev_ridge_bound`).

Everything is a plain array construction (jit-friendly in the arrays, Python ints for L); use
float64 (`lsa.set_precision("float64")`) for the 1e-12 identities. `lsa` does not import `theory`.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from lsa.deep import scalar_steps, sparse_weights

__all__ = [
    "chebyshev_ridge_steps",
    "chebyshev_ridge_weights",
    "gd_weights",
    "preconditioned_gd_weights",
    "ridge_embed",
    "ridge_weights",
]


def _check_layers(L: object, name: str = "L") -> int:
    if isinstance(L, bool | np.bool_) or not isinstance(L, numbers.Integral) or int(L) < 1:
        raise ValueError(f"`{name}` must be an integer >= 1 (the number of steps); got {L!r}.")
    return int(L)


def _check_scalar(value: object, name: str, fix: str) -> float:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}; {fix}")
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}; {fix}") from exc
    if v.ndim != 0 or not np.isfinite(v):
        raise ValueError(f"`{name}` must be a finite real scalar, got {value!r}; {fix}")
    return float(v)


def gd_weights(
    eta: float, L: int, d: int
) -> tuple[Float[Array, "L d+1 d+1"], Float[Array, "L d+1 d+1"]]:
    """(W_PV, W_KQ) of L steps of GD with step `eta` [Akyuerek et al. §3, App. A–C; Ahn et al.
    Lemma 1]: W_PV^l = [[0, 0], [0, 1]], W_KQ^l = [[-eta I_d, 0], [0, 0]].

    Read with `lsa.deep.deep_predict(lsa.embed(X, y, x_q), W_PV, W_KQ, "ahn")` the stack predicts
    exactly <w_L, x_q> for w_{l+1} = w_l - eta (X^T (X w_l - y) / n), w_0 = 0.

    **Arguments:** `eta` (finite real step), `L` (layers = steps, >= 1), `d` (input dim, >= 1).

    **Returns:** `(W_PV, W_KQ)`, each of shape (L, d+1, d+1).
    """
    e = _check_scalar(eta, "eta", "pass the GD step size as a float, e.g. eta=0.5.")
    L = _check_layers(L)
    d = _check_layers(d, "d")
    return sparse_weights(scalar_steps(np.full(L, e), d))


def preconditioned_gd_weights(
    P: Float[ArrayLike, "d d"] | Float[ArrayLike, "L d d"], L: int | None = None
) -> tuple[Float[Array, "L d+1 d+1"], Float[Array, "L d+1 d+1"]]:
    """(W_PV, W_KQ) of L steps of preconditioned GD w <- w - P_l grad R(w) [Ahn et al. Lemma 1
    with Q_l = -P_l; `lsa.deep.sparse_weights`].

    **Arguments:**

    - `P`: one (d, d) preconditioner (the step included) repeated `L` times, or a stack
      (L, d, d) of per-layer P_l (then `L` may be omitted; if given it must match). Any real
      matrix (also non-symmetric).
    - `L`: the number of steps; required when `P` is a single matrix.

    **Returns:** `(W_PV, W_KQ)`, each of shape (L, d+1, d+1); exact under "ahn".
    """
    arr = np.asarray(P, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] < 1:
        raise ValueError(
            f"`P` must be a square (d, d) matrix or a stack (L, d, d); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("`P` must be finite; remove NaN/inf entries.")
    if arr.ndim == 2:
        if L is None:
            raise ValueError("`L` is required when `P` is a single (d, d) matrix; pass L=...")
        arr = np.broadcast_to(arr, (_check_layers(L), *arr.shape))
    elif L is not None and _check_layers(L) != arr.shape[0]:
        raise ValueError(
            f"`L`={L} disagrees with the {arr.shape[0]} layers of `P`; omit `L` or match it."
        )
    if arr.shape[0] < 1:
        raise ValueError("`P` must hold at least one layer.")
    return sparse_weights(jnp.asarray(np.array(arr)))


def chebyshev_ridge_steps(
    L: int, lam: float, s_lo: float, s_hi: float
) -> tuple[Float[np.ndarray, " L"], Float[np.ndarray, " L"]]:
    """GD steps a_k and shrink factors mu_k of L Chebyshev-Richardson steps for (S + lam I) w = h.

    The Chebyshev nodes of [s_lo, s_hi] are s_k = (s_hi + s_lo)/2 - (s_hi - s_lo)/2
    cos((2k - 1) pi / (2L)), k = 1..L; the Richardson steps are beta_k = 1/(s_k + lam) (reciprocal
    roots of the shifted Chebyshev residual polynomial on [s_lo + lam, s_hi + lam]), and
    a_k = 1/s_k, mu_k = lam/(s_k + lam) (module docstring).

    **Arguments:** `L` >= 1; `lam` >= 0 (ridge of S = X^T X / n: w_lam = (S + lam I)^{-1} h);
    `s_lo`, `s_hi` with 0 < s_lo < s_hi, the interval assumed to hold the eigenvalues of S (e.g.
    the Marchenko–Pastur edges (1 -+ sqrt(d/n))^2 for isotropic x, slightly widened).

    **Returns:** `(a, mu)`, float64 arrays of shape (L,).
    """
    L = _check_layers(L)
    lam = _check_scalar(lam, "lam", "pass a ridge strength lam >= 0.")
    lo = _check_scalar(s_lo, "s_lo", "pass the lower eigenvalue edge as a float > 0.")
    hi = _check_scalar(s_hi, "s_hi", "pass the upper eigenvalue edge as a float > s_lo.")
    if lam < 0:
        raise ValueError(f"`lam` must be >= 0 (ridge strength of S = X^T X / n); got {lam}.")
    if not lo > 0:
        raise ValueError(
            f"`s_lo` must be > 0 (the GD steps are a_k = 1/s_k for nodes s_k in [s_lo, s_hi]); "
            f"got {lo}. Use d < n so that S is invertible, e.g. s_lo = (1 - sqrt(d/n))^2."
        )
    if not hi > lo:
        raise ValueError(f"`s_hi` must exceed `s_lo`; got s_lo={lo}, s_hi={hi}.")
    k = np.arange(1, L + 1)
    s = 0.5 * (hi + lo) - 0.5 * (hi - lo) * np.cos((2 * k - 1) * np.pi / (2 * L))
    return 1.0 / s, lam / (s + lam)


def ridge_embed(
    X: Float[ArrayLike, "*batch n d"],
    y: Float[ArrayLike, "*batch n"],
    x_q: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d+3 n+1"]:
    """The augmented embedding for the ridge construction: rows x (d), a constant 1, a copy of
    the labels y (0 in the query slot), and the label/residual row y (last, 0 in the query slot,
    read by `deep_predict`). Columns are (x_i, 1, y_i, y_i), then (x_q, 1, 0, 0)."""
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    x_q = jnp.asarray(x_q)
    if X.ndim < 2 or X.shape[:-1] != y.shape or X.shape[:-2] + X.shape[-1:] != x_q.shape:
        raise ValueError(
            f"shapes disagree: X {X.shape} must be (*batch, n, d), y {y.shape} (*batch, n) and "
            f"x_q {x_q.shape} (*batch, d)."
        )
    top = jnp.swapaxes(jnp.concatenate([X, x_q[..., None, :]], axis=-2), -1, -2)
    ones = jnp.ones((*top.shape[:-2], 1, top.shape[-1]), top.dtype)
    lab = jnp.concatenate([y, jnp.zeros_like(y[..., :1])], axis=-1)[..., None, :]
    return jnp.concatenate([top, ones, lab, lab], axis=-2)


def ridge_weights(
    a: Float[ArrayLike, " L"], mu: Float[ArrayLike, " L"], d: int
) -> tuple[Float[Array, "2L d+3 d+3"], Float[Array, "2L d+3 d+3"]]:
    """Weights (2L layers) on `ridge_embed` for w <- (1 - mu_k)(w - a_k grad R(w)), k = 1..L.

    Rows of Z: x = 0..d-1, c = d (constant 1), u = d+1 (label copy), r = d+2 (residual). With the
    masked update Delta z_j = W_PV M W_KQ z_j, M = (1/n) sum_{i <= n} z_i z_i^T:

    - GD layer: W_PV = e_r e_r^T, W_KQ = -a_k e_x e_x^T (the sparse family, Ahn et al. Lemma 1):
      Delta r_j = -(a_k/n) sum_i r_i x_j^T x_i.
    - shrink layer: W_PV = e_r e_c^T (value = the constant 1), W_KQ = mu_k e_c (e_u - e_r)^T:
      Delta r_j = (1/n) sum_i 1 * (mu_k (u_j - r_j)) = mu_k <w, x_j>, the change of
      r_j = y_j - <w, x_j> under w <- (1 - mu_k) w (query: u_q = 0, r_q = -<w, x_q>).

    **Returns:** `(W_PV, W_KQ)`, each (2L, d+3, d+3); read with "ahn" the prediction is <w_L, x_q>.
    """
    a_arr = np.asarray(a, dtype=np.float64)
    mu_arr = np.asarray(mu, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.size < 1 or a_arr.shape != mu_arr.shape:
        raise ValueError(
            f"`a` and `mu` must be 1-d arrays of the same length L >= 1; got {a_arr.shape} and "
            f"{mu_arr.shape}. Build them with `chebyshev_ridge_steps`."
        )
    if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(mu_arr))):
        raise ValueError("`a` and `mu` must be finite.")
    d = _check_layers(d, "d")
    L, D = a_arr.size, d + 3
    c, u, r = d, d + 1, d + 2
    W_PV = np.zeros((2 * L, D, D))
    W_KQ = np.zeros((2 * L, D, D))
    for k in range(L):
        W_PV[2 * k, r, r] = 1.0
        W_KQ[2 * k, :d, :d] = -a_arr[k] * np.eye(d)
        W_PV[2 * k + 1, r, c] = 1.0
        W_KQ[2 * k + 1, c, u] = mu_arr[k]
        W_KQ[2 * k + 1, c, r] = -mu_arr[k]
    return jnp.asarray(W_PV), jnp.asarray(W_KQ)


def chebyshev_ridge_weights(
    L: int, lam: float, s_lo: float, s_hi: float, d: int
) -> tuple[Float[Array, "2L d+3 d+3"], Float[Array, "2L d+3 d+3"]]:
    """Weights (2L layers, on `ridge_embed`, "ahn") of L Chebyshev-Richardson steps approximating
    the ridge predictor <(S + lam I)^{-1} h, x_q> (module docstring; error bound
    `theory.deep_constructions.chebyshev_ridge_bound`)."""
    a, mu = chebyshev_ridge_steps(L, lam, s_lo, s_hi)
    return ridge_weights(a, mu, d)
