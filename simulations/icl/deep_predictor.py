"""An L-layer LSA stack as an in-context `Predictor` (docs/deep.md §5), for the Monte Carlo engine.

`DeepLSAPredictor(W_PV, W_KQ, convention)` predicts `readout_sign * Z_L[d, n]` of
`lsa.deep.deep_forward` on the embedded prompt, computed by the Gram route of
`lsa.deep_empirical` (the stack sees a prompt only through `G0 = Z_0 D Z_0^T / n` and `x_q`; equal
to the literal map to round-off, tested). With `mask` (prefix evaluation, `at_every_prefix`) the
masked examples are zero columns and `rho` is the number of unmasked examples.
`sparse_stack(A, convention)` and `scalar_stack(a, d)` build the sparse-family and scalar-step
stacks (`lsa.deep.sparse_weights`, `lsa.deep.scalar_steps`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from lsa.deep import CONVENTIONS, scalar_steps, sparse_weights
from lsa.deep_empirical import DeepStats, deep_stats_predict

from .predictors import Predictor

__all__ = ["DeepLSAPredictor", "scalar_stack", "sparse_stack"]


class DeepLSAPredictor(Predictor):
    """The L-layer LSA stack at given weights [ZFB eq. 3.3 stacked; Ahn et al. eq. (2)].

    **Arguments:**

    - `W_PV`, `W_KQ`: per-layer weights, shape `(L, d+1, d+1)` each.
    - `convention`: "zfb" (no mask, `+Z_L[d, n]`) or "ahn" (query masked, `-Z_L[d, n]`).
    """

    W_PV: Float[Array, "L d+1 d+1"]
    W_KQ: Float[Array, "L d+1 d+1"]
    convention: str

    def __init__(
        self,
        W_PV: Float[ArrayLike, "L d+1 d+1"],
        W_KQ: Float[ArrayLike, "L d+1 d+1"],
        convention: str = "ahn",
    ):
        pv = np.asarray(W_PV, dtype=np.float64)
        kq = np.asarray(W_KQ, dtype=np.float64)
        if pv.ndim != 3 or pv.shape[1] != pv.shape[2] or pv.shape[1] < 2 or pv.shape[0] < 1:
            raise ValueError(f"`W_PV` must have shape (L, d+1, d+1), L, d >= 1; got {pv.shape}.")
        if kq.shape != pv.shape:
            raise ValueError(f"`W_KQ` must have the shape of W_PV {pv.shape}; got {kq.shape}.")
        if not (np.all(np.isfinite(pv)) and np.all(np.isfinite(kq))):
            raise ValueError("`W_PV` and `W_KQ` must be finite.")
        if convention not in CONVENTIONS:
            raise ValueError(f"`convention` must be 'zfb' or 'ahn'; got {convention!r}.")
        self.W_PV = jnp.asarray(pv)
        self.W_KQ = jnp.asarray(kq)
        self.convention = convention

    @property
    def name(self) -> str:
        return f"LSA-{self.W_PV.shape[0]}({self.convention})"

    @property
    def d(self) -> int:
        return int(self.W_PV.shape[-1]) - 1

    def check_dimension(self, d: int) -> None:
        if d != self.d:
            raise ValueError(
                f"the stack's weights are for d = {self.d} but the prompts have d = {d}."
            )

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        M = X.shape[1]
        if mask is not None:
            X = X * mask[None, :, None]
            y = y * mask[None, :]
            n = jnp.sum(mask)
        else:
            n = jnp.asarray(float(M))
        Zc = jnp.concatenate([X, y[..., None]], axis=-1)
        q0 = jnp.concatenate([x_q, jnp.zeros((*x_q.shape[:-1], 1), x_q.dtype)], axis=-1)
        G0 = jnp.einsum("bni,bnj->bij", Zc, Zc)
        if not CONVENTIONS[self.convention]["mask_query"]:
            G0 = G0 + q0[:, :, None] * q0[:, None, :]
        safe = jnp.where(n > 0, n, 1.0)
        stats = DeepStats(
            G0=G0 / safe,
            q0=q0,
            y_q=jnp.zeros(X.shape[0], X.dtype),
            sign=float(CONVENTIONS[self.convention]["readout_sign"]),  # type: ignore[arg-type]
            convention=self.convention,
            n=M,
        )
        return jnp.where(n > 0, deep_stats_predict(self.W_PV, self.W_KQ, stats), 0.0)


def sparse_stack(A: Float[ArrayLike, "L d d"], convention: str = "ahn") -> DeepLSAPredictor:
    """The sparse-family stack `lsa.deep.sparse_weights(A)` as a predictor ("ahn": L steps of
    preconditioned GD, `w_{l+1} = w_l - A_l grad R(w_l)`, Ahn et al. Lemma 1)."""
    W_PV, W_KQ = sparse_weights(A)
    return DeepLSAPredictor(W_PV, W_KQ, convention)


def scalar_stack(
    a: Float[ArrayLike, " L"], d: int, Sigma: Float[ArrayLike, "d d"] | None = None
) -> DeepLSAPredictor:
    """The masked scalar-step stack `A_l = a_l I` (or `a_l Sigma^{-1}`): L steps of GD with step
    sizes `a_l` on `R(w) = (1/2n) ||X w - y||^2` from 0."""
    return sparse_stack(scalar_steps(a, d, Sigma), "ahn")
