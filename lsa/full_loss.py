"""The exact population loss of the LSA layer over all `2 (d+1)^2` entries of `(W_PV, W_KQ)`
[ZFB eq. 3.8; theory.md §5]. The derivation, with every Isserlis (Wick) pairing counted, is in
`docs/full_loss.md`.

Only four blocks enter the prediction (theory.md §2.4): `u = W_PV[d, d]`, `a = W_PV[d, :d]`,
`U = W_KQ[:d, :d]`, `b = W_KQ[d, :d]`. For a prompt of length `n` with normaliser `rho`
(`rho = n` under the ZFB convention), `c = n / rho`, `S^ = (1/n) sum_i x_i x_i^T`,

    y_hat = c (a + u w)^T S^ (U + w b^T) x_q + (1/rho) (a^T x_q)(x_q^T U x_q).

Under the training law (`w ~ N(0, I_d)`, `x_i, x_q ~ N(0, Lambda)` iid, noiseless labels) the
error `y_hat - <w, x_q>` splits into a part odd in `w` and a part even in `w`, whose product has
mean 0:

    odd  = w^T (c S^ A~ - I) x_q,                            A~ = u U + a b^T,
    even = P + Q + R,   P = c a^T S^ U x_q,   Q = c u (w^T S^ w)(b^T x_q),
                        R = (1/rho)(a^T x_q)(x_q^T U x_q)     (the query column's own term).

With `Gamma_n = (1 + 1/n) Lambda + (tr Lambda / n) I` and `Sym = (U + U^T)/2`, every second moment
is a trace polynomial (`FullLossTerms`). The functions are pure `jax.numpy`: jit-able, and
`jax.grad` / `jax.hessian` work through them. Everything is float64 (`lsa.require_x64`).

API for the landscape study (all jit-compiled; `theta = pack_params(W_PV, W_KQ)` is
`concat(W_PV.ravel(), W_KQ.ravel())`, length `2 (d+1)^2`):

- `full_population_loss(W_PV, W_KQ, Lambda, N)`: `L = (1/2) E(y_hat - <w, x_q>)^2`, rho = N;
- `full_population_risk(W_PV, W_KQ, Lambda, M)`: `E(y_hat - <w, x_q>)^2` (no 1/2), rho = n = M;
- `full_loss_terms(W_PV, W_KQ, Lambda, n, rho)`: the seven moments, for any (n, rho);
- `full_loss_value_and_grad(W_PV, W_KQ, Lambda, N) -> (L, (dL/dW_PV, dL/dW_KQ))`;
- `full_loss_theta(theta, Lambda, N)`, `full_loss_grad_theta`, `full_loss_hessian(theta, ...)`;
- `prediction_indices(d)`: the `(d+1)^2` positions of `theta` that enter the prediction (the
  last row of `W_PV`, the first `d` columns of `W_KQ`); every other entry has an exactly zero
  gradient and zero Hessian row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_covariance
from .precision import require_x64

__all__ = [
    "FullLossTerms",
    "full_loss_grad_theta",
    "full_loss_hessian",
    "full_loss_terms",
    "full_loss_theta",
    "full_loss_value_and_grad",
    "full_population_loss",
    "full_population_risk",
    "pack_params",
    "prediction_indices",
    "unpack_params",
]


class FullLossTerms(NamedTuple):
    """The second moments whose sum is `E(y_hat - <w, x_q>)^2` (docs/full_loss.md):

    `total = odd2 + P2 + Q2 + R2 + 2 (PQ + PR + QR)`; `odd2 = E[odd^2]`, `P2 = E[P^2]`, ...
    """

    odd2: Float[Array, ""]
    P2: Float[Array, ""]
    Q2: Float[Array, ""]
    R2: Float[Array, ""]
    PQ: Float[Array, ""]
    PR: Float[Array, ""]
    QR: Float[Array, ""]

    @property
    def total(self) -> Float[Array, ""]:
        return self.odd2 + self.P2 + self.Q2 + self.R2 + 2.0 * (self.PQ + self.PR + self.QR)


def _terms(W_PV, W_KQ, Lam, n, rho) -> FullLossTerms:
    """The moments of docs/full_loss.md, with no validation (traceable in every argument)."""
    n = jnp.asarray(n, dtype=Lam.dtype)
    rho = jnp.asarray(rho, dtype=Lam.dtype)
    c = n / rho
    u = W_PV[-1, -1]
    a = W_PV[-1, :-1]
    U = W_KQ[:-1, :-1]
    b = W_KQ[-1, :-1]
    d = Lam.shape[0]
    eye = jnp.eye(d, dtype=Lam.dtype)
    trL = jnp.trace(Lam)
    trL2 = jnp.sum(Lam * Lam.T)  # tr(Lambda^2)
    Gn = (1.0 + 1.0 / n) * Lam + (trL / n) * eye
    Sym = 0.5 * (U + U.T)

    # odd part: E[(w^T (c S^ A~ - I) x_q)^2]
    At = u * U + jnp.outer(a, b)
    AL = At @ Lam  # A~ Lambda
    odd2 = c**2 * jnp.sum((AL @ At.T) * (Gn @ Lam)) - 2.0 * c * jnp.sum(AL * Lam.T) + trL

    La = Lam @ a
    Lb = Lam @ b
    aLa = a @ La
    bLb = b @ Lb
    # P = c a^T S^ U x_q
    v = U.T @ La  # U^T Lambda a
    ULUt = U @ Lam @ U.T
    P2 = c**2 * ((1.0 + 1.0 / n) * (v @ Lam @ v) + jnp.sum(ULUt * Lam) * aLa / n)
    # Q = c u (w^T S^ w)(b^T x_q)
    Q2 = c**2 * u**2 * bLb * (trL**2 * (1.0 + 2.0 / n) + trL2 * (2.0 + 4.0 / n))
    # R = (a^T x_q)(x_q^T U x_q) / rho: Gaussian moments of order 6 in x_q
    SL = Sym @ Lam
    trSL = jnp.trace(SL)
    trSLSL = jnp.sum(SL * SL.T)
    SLa = Sym @ La  # Sym Lambda a
    R2 = (aLa * (trSL**2 + 2.0 * trSLSL) + 4.0 * trSL * (La @ SLa) + 8.0 * (SLa @ Lam @ SLa)) / (
        rho**2
    )
    # cross terms
    ULb = U @ Lb  # U Lambda b
    PQ = c**2 * u * (trL * (La @ ULb) + (2.0 / n) * ((Lam @ La) @ ULb))
    PR = (c / rho) * ((La @ U @ La) * trSL + 2.0 * (La @ U @ (Lam @ SLa)))
    QR = (c * u / rho) * trL * ((Lb @ a) * trSL + 2.0 * (Lb @ SLa))
    return FullLossTerms(odd2=odd2, P2=P2, Q2=Q2, R2=R2, PQ=PQ, PR=PR, QR=QR)


def _error_moment(W_PV, W_KQ, Lam, n, rho):
    """`E(y_hat - <w, x_q>)^2` at prompt length `n` and normaliser `rho` (any, traceable)."""
    return _terms(W_PV, W_KQ, Lam, n, rho).total


_terms_jit = jax.jit(_terms)
_error_moment_jit = jax.jit(_error_moment)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check(W_PV: Any, W_KQ: Any, Lambda: Any, lengths: dict[str, Any]) -> tuple[Array, ...]:
    """Static shape checks always; value checks (finite, symmetric positive definite Lambda,
    lengths >= 1) when the inputs are concrete, i.e. not under `jit`/`grad` tracing."""
    require_x64("lsa.full_population_loss")
    if _is_concrete(Lambda):
        Lam = jnp.asarray(check_covariance(Lambda))
    else:
        Lam = jnp.asarray(Lambda)
        if Lam.ndim != 2 or Lam.shape[0] != Lam.shape[1]:
            raise ValueError(f"`Lambda` must be a square (d, d) matrix; got shape {Lam.shape}.")
    d = Lam.shape[0]
    out = [Lam]
    for name, W in (("W_PV", W_PV), ("W_KQ", W_KQ)):
        arr = jnp.asarray(W)
        if arr.shape != (d + 1, d + 1):
            raise ValueError(
                f"`{name}` must have shape ({d + 1}, {d + 1}) to match Lambda of shape "
                f"({d}, {d}); got {arr.shape}."
            )
        if _is_concrete(W) and not bool(np.all(np.isfinite(np.asarray(arr)))):
            raise ValueError(f"`{name}` contains NaN or inf; pass finite weights.")
        out.append(arr)
    for name, n in lengths.items():
        if _is_concrete(n):
            val = np.asarray(n)
            if val.ndim != 0 or not np.isfinite(val) or val < 1 or val != np.round(val):
                raise ValueError(f"`{name}` must be an integer >= 1 (a prompt length); got {n!r}.")
    return out[1], out[2], out[0]


def full_population_loss(
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
    Lambda: Float[ArrayLike, "d d"],
    N: int | Float[ArrayLike, ""],
) -> Float[Array, ""]:
    """The exact population loss `L = (1/2) E[(y_hat - <w, x_q>)^2]` [ZFB eq. 3.8] for arbitrary
    `(W_PV, W_KQ)` (theory.md §5), under the training law `w ~ N(0, I_d)`,
    `x_i, x_q ~ N(0, Lambda)`, prompt length `n = N` and normaliser `rho = N`.

    Includes `a`, `b`, the query column's own term `(a^T x_q)(x_q^T U x_q)/N` and the factor 1/2.
    On `a = b = 0` it equals `lsa.population_loss` (`l~ + tr(Lambda)/2`, theory.md §4.3).

    **Arguments:**

    - `W_PV`, `W_KQ`: `(d+1, d+1)` each; only `W_PV[d, :]` and `W_KQ[:, :d]` matter.
    - `Lambda`: `(d, d)` symmetric positive definite training covariance (checked when concrete).
    - `N`: training prompt length (>= 1); may be a traced scalar.

    **Returns:** the loss (float64 scalar). jit-able; `jax.grad` and `jax.hessian` work through it.
    """
    W_PV, W_KQ, Lam = _check(W_PV, W_KQ, Lambda, {"N": N})
    return 0.5 * _error_moment_jit(W_PV, W_KQ, Lam, N, N)


def full_population_risk(
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
    Lambda: Float[ArrayLike, "d d"],
    M: int | Float[ArrayLike, ""],
) -> Float[Array, ""]:
    """The test risk `R = E[(y_hat - <w, x_q>)^2]` (no 1/2) of arbitrary `(W_PV, W_KQ)` on test
    prompts of length `M` from the training law, with the test normaliser `rho = M` (theory.md
    §2.2, §5, convention traps 1 and 3). At `M = N` it is twice `full_population_loss`.

    **Arguments:** as `full_population_loss`, with the test length `M` (>= 1) instead of `N`.
    """
    W_PV, W_KQ, Lam = _check(W_PV, W_KQ, Lambda, {"M": M})
    return _error_moment_jit(W_PV, W_KQ, Lam, M, M)


def full_loss_terms(
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
    Lambda: Float[ArrayLike, "d d"],
    n: int | Float[ArrayLike, ""],
    rho: int | Float[ArrayLike, ""] | None = None,
) -> FullLossTerms:
    """The seven second moments of the error `y_hat - <w, x_q>` at prompt length `n` and
    normaliser `rho` (default `rho = n`, the ZFB convention) [ZFB eq. 3.8; docs/full_loss.md].

    `.total` is `E(y_hat - <w, x_q>)^2`. A general `rho` exists to expose the rho convention:
    `rho = N` on a test prompt of length `M` multiplies the first part of y_hat by `M/N`.
    """
    rho = n if rho is None else rho
    W_PV, W_KQ, Lam = _check(W_PV, W_KQ, Lambda, {"n": n, "rho": rho})
    return _terms_jit(W_PV, W_KQ, Lam, n, rho)


# ----------------------------------------------------------------------------------------------
# Fast entry points for flows and landscape studies: compiled once per d, no value checks.


def pack_params(
    W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"]
) -> Float[Array, " 2*(d+1)**2"]:
    """`theta = concat(W_PV.ravel(), W_KQ.ravel())` (row-major), length `2 (d+1)^2`."""
    return jnp.concatenate([jnp.ravel(jnp.asarray(W_PV)), jnp.ravel(jnp.asarray(W_KQ))])


def unpack_params(
    theta: Float[ArrayLike, " 2*(d+1)**2"],
) -> tuple[Float[Array, "d+1 d+1"], Float[Array, "d+1 d+1"]]:
    """The inverse of `pack_params`: `(W_PV, W_KQ)` from `theta`."""
    theta = jnp.asarray(theta)
    D2 = theta.shape[-1] // 2
    D = round(D2**0.5)
    if 2 * D * D != theta.shape[-1]:
        raise ValueError(f"`theta` must have length 2 (d+1)^2; got {theta.shape[-1]}.")
    shape = (*theta.shape[:-1], D, D)
    return theta[..., :D2].reshape(shape), theta[..., D2:].reshape(shape)


def prediction_indices(d: int) -> np.ndarray:
    """Positions in `theta` of the `(d+1)^2` entries that enter the prediction: the last row of
    `W_PV` (`a`, then `u`) and the first `d` columns of `W_KQ` (`U` row by row, then `b`)
    [ZFB eq. 3.6]. The other entries have an exactly zero gradient and Hessian."""
    D = d + 1
    pv = (D - 1) * D + np.arange(D)
    kq = D * D + (np.arange(D)[:, None] * D + np.arange(d)[None, :]).ravel()
    return np.concatenate([pv, kq])


def _loss_theta(theta, Lam, N):
    W_PV, W_KQ = unpack_params(theta)
    return 0.5 * _error_moment(W_PV, W_KQ, Lam, N, N)


def _loss_pair(W_PV, W_KQ, Lam, N):
    return 0.5 * _error_moment(W_PV, W_KQ, Lam, N, N)


_value_and_grad_pair = jax.jit(jax.value_and_grad(_loss_pair, argnums=(0, 1)))
_loss_theta_jit = jax.jit(_loss_theta)
_grad_theta = jax.jit(jax.grad(_loss_theta))
_hessian_theta = jax.jit(jax.hessian(_loss_theta))


def full_loss_value_and_grad(
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
    Lambda: Float[ArrayLike, "d d"],
    N: int | Float[ArrayLike, ""],
) -> tuple[Float[Array, ""], tuple[Float[Array, "d+1 d+1"], Float[Array, "d+1 d+1"]]]:
    """`(L, (dL/dW_PV, dL/dW_KQ))` of `full_population_loss` [ZFB eq. 3.8], compiled (once per
    d; `N` is traced) and without value checks: the fast path for loops."""
    return _value_and_grad_pair(
        jnp.asarray(W_PV), jnp.asarray(W_KQ), jnp.asarray(Lambda), jnp.asarray(N, jnp.float64)
    )


def full_loss_theta(
    theta: Float[ArrayLike, " P"], Lambda: Float[ArrayLike, "d d"], N: int | Float[ArrayLike, ""]
) -> Float[Array, ""]:
    """`full_population_loss` [ZFB eq. 3.8] of `theta = pack_params(W_PV, W_KQ)`, compiled."""
    return _loss_theta_jit(jnp.asarray(theta), jnp.asarray(Lambda), jnp.asarray(N, jnp.float64))


def full_loss_grad_theta(
    theta: Float[ArrayLike, " P"], Lambda: Float[ArrayLike, "d d"], N: int | Float[ArrayLike, ""]
) -> Float[Array, " P"]:
    """The gradient of `full_loss_theta` [ZFB eq. 3.8] (length `2 (d+1)^2`), compiled."""
    return _grad_theta(jnp.asarray(theta), jnp.asarray(Lambda), jnp.asarray(N, jnp.float64))


def full_loss_hessian(
    theta: Float[ArrayLike, " P"], Lambda: Float[ArrayLike, "d d"], N: int | Float[ArrayLike, ""]
) -> Float[Array, "P P"]:
    """The Hessian of `full_loss_theta` [ZFB eq. 3.8], `(2 (d+1)^2, 2 (d+1)^2)`, compiled. Restrict
    it to `prediction_indices(d)` to drop the trivial zero rows of the unused entries."""
    return _hessian_theta(jnp.asarray(theta), jnp.asarray(Lambda), jnp.asarray(N, jnp.float64))
