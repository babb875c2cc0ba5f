"""In-context predictors, vectorised over prompts (theory.md §6, §11.2).

Every predictor is an immutable `equinox.Module` with one signature,

    predictor(X, y, x_q) -> y_hat        X (B, M, d), y (B, M), x_q (B, d)  ->  (B,)

and a `name`. Calls are jit-compiled (one compile per shape) and vectorised over the batch of
prompts: there is no Python loop over prompts. `at_every_prefix(predictor, X, y)` (or the method
`predictor.predict_prefixes(X, y)`) returns the `(B, M)` predictions where entry `i` predicts
`y_i` from the examples `0 .. i-1` only (the Akyürek convention; position 0 has an empty context
and predicts 0).

Hyper-parameters (step sizes, ridge parameters, weights) are stored as float64 arrays, so a scan
over them re-uses one compilation; structural ones (`k`, `steps`, `weighting`) are static.
Arrays are float64 once `lsa.set_precision("float64")` has been called (the Monte Carlo suites
call `lsa.require_x64`); importing `lsa` does not switch precision.

- `LSAPredictor(W_PV, W_KQ)`: bottom-right entry of `E + W_PV E (E^T W_KQ E) / M` [ZFB eq. 3.3];
- `OLS()`: min-norm least squares `x_q^T X^+ y` [AKY eq. 10];
- `Ridge(lam)`: `x_q^T (X^T X + lam I)^{-1} X^T y`, sum-of-squares convention [AKY eqs. 9–10];
- `BayesRidge(noise_var, prior_var)`: `Ridge(noise_var / prior_var)` [AKY eqs. 18–19];
- `GD(alpha, steps)`: `w_{k+1} = w_k - 2 alpha (X^T X w_k - X^T y + lam w_k)`, `w_0 = 0`
  [AKY §4.3];
- `SGD(alpha, lam, clip)`: one pass, batch size 1, clipped gradient [AKY §4.3];
- `Averaging()`: `x_q^T (1/M) sum_i y_i x_i` (Garg et al.);
- `KNN(k, weighting, exponent)`: (weighted) mean label of the `k` nearest `x_i` [AKY §4.3].

**Sufficient statistics.** LSA, OLS, ridge, Bayes ridge, GD and averaging see a prompt only through
`S = X^T X`, `g = X^T y`, `c = y^T y` and the query; they also implement
`predictor.from_stats(stats)` on a `PromptStats`, the prompt compressed to `r <= M` pseudo-examples
with the same `S` and `g` (the QR compression `X = Q T`: pseudo-inputs `T`, labels `Q^T y`) and
the residual sum of squares `c - ||Q^T y||^2`. `from_stats` equals the call on the full prompt up
to round-off (tested); `simulations.montecarlo.mc_risk` uses it to sample `(S, g, c)` directly.

`linear_G(predictor, d, M)` returns the preconditioner `G` of a predictor that is linear in
`h = (1/M) sum_i y_i x_i`, i.e. `y_hat = h^T G x_q` (theory.md §6, §8.3, §11.3), or `None`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

import lsa
from lsa._validate import as_float_array, check_length, check_nonnegative, check_positive

__all__ = [
    "GD",
    "KNN",
    "OLS",
    "SGD",
    "Averaging",
    "BayesRidge",
    "LSAPredictor",
    "Predictor",
    "PromptStats",
    "Ridge",
    "at_every_prefix",
    "check_prompt_arrays",
    "linear_G",
]

_F64 = jnp.float64


def _scalar(x: float) -> Array:
    return jnp.asarray(x, dtype=_F64)


def _fmt(x: ArrayLike) -> str:
    return f"{float(np.asarray(x)):g}"


def check_prompt_arrays(
    X: Float[ArrayLike, "B M d"],
    y: Float[ArrayLike, "B M"],
    x_q: Float[ArrayLike, "B d"] | None = None,
) -> tuple[Float[Array, "B M d"], Float[Array, "B M"], Float[Array, "B d"] | None]:
    """Convert a batch of prompts to float64 arrays and check that the shapes agree.

    **Arguments:**

    - `X`: in-context inputs, shape `(B, M, d)`.
    - `y`: their labels, shape `(B, M)`.
    - `x_q`: queries, shape `(B, d)`, or `None`.

    **Returns:** `(X, y, x_q)` as float64 JAX arrays. Raises `ValueError` on a shape mismatch.
    """
    X = jnp.asarray(X, dtype=_F64)
    y = jnp.asarray(y, dtype=_F64)
    if X.ndim != 3:
        raise ValueError(f"`X` must have shape (B, M, d) (a batch of prompts); got {X.shape}.")
    B, M, d = X.shape
    if y.shape != (B, M):
        raise ValueError(f"`y` must have shape (B, M) = ({B}, {M}) to match X; got {y.shape}.")
    if x_q is not None:
        x_q = jnp.asarray(x_q, dtype=_F64)
        if x_q.shape != (B, d):
            raise ValueError(
                f"`x_q` must have shape (B, d) = ({B}, {d}) to match X; got {x_q.shape}."
            )
    return X, y, x_q


def _min_norm_solve(
    X: Float[Array, "B M d"],
    y: Float[Array, "B M"],
    lam: Float[Array, ""],
    rows: int | None = None,
) -> Float[Array, "B d"]:
    """`(X^T X + lam I)^{-1} X^T y` by SVD; with `lam = 0` the minimum-norm least-squares solution.

    Singular values below `10 max(M, d) eps s_max` (the `numpy.linalg.pinv` rule) are dropped, so
    rows of zeros (masked examples) and rank deficiency (M < d) give the min-norm solution.
    `rows` replaces `M` in that rule (a compressed prompt stands for `rows` examples).
    """
    M, d = X.shape[-2], X.shape[-1]
    if rows is not None:
        M = rows
    U, s, Vt = jnp.linalg.svd(X, full_matrices=False)
    tol = 10.0 * max(M, d) * jnp.finfo(_F64).eps * s[..., :1]
    keep = s > tol
    f = jnp.where(keep, s / jnp.where(keep, s * s + lam, 1.0), 0.0)
    coef = f * jnp.einsum("...mk,...m->...k", U, y)
    return jnp.einsum("...kd,...k->...d", Vt, coef)


class PromptStats(eqx.Module):
    """A batch of prompts compressed to the sufficient statistics `(S, g, c, x_q)`.

    `r` pseudo-examples `X` (rows) with labels `y` stand for the `M` examples of each prompt:
    `X^T X = S = sum_i x_i x_i^T` and `X^T y = g = sum_i y_i x_i`, and `rss` completes the sum
    of squared labels, `||y||^2 + rss = c = sum_i y_i^2`. The QR compression of a prompt
    (`X = Q T`, pseudo-inputs `T`, labels `Q^T y`, `rss = ||y - Q Q^T y||^2`) is one example
    (`from_prompts`); the sufficient-statistics sampler of `TestDistribution` draws such a
    compression directly (theory: Bartlett decomposition of the Wishart matrix `S`).

    **Fields:** `X` `(B, r, d)`, `y` `(B, r)`, `rss` `(B,)`, `x_q` `(B, d)`, and `M` (static), the
    number of in-context examples the statistics summarise (it normalises the LSA and averaging).
    """

    X: Float[Array, "B r d"]
    y: Float[Array, "B r"]
    rss: Float[Array, " B"]
    x_q: Float[Array, "B d"]
    M: int = eqx.field(static=True)

    @property
    def S(self) -> Float[Array, "B d d"]:
        """`S = X^T X`."""
        return jnp.einsum("bri,brj->bij", self.X, self.X)

    @property
    def g(self) -> Float[Array, "B d"]:
        """`g = X^T y`."""
        return jnp.einsum("brd,br->bd", self.X, self.y)

    @property
    def c(self) -> Float[Array, " B"]:
        """`c = sum_i y_i^2`."""
        return jnp.sum(self.y * self.y, axis=-1) + self.rss

    @classmethod
    def from_prompts(
        cls,
        X: Float[ArrayLike, "B M d"],
        y: Float[ArrayLike, "B M"],
        x_q: Float[ArrayLike, "B d"],
        compress: bool = True,
    ) -> PromptStats:
        """The statistics of explicit prompts: with `compress` (and `M > d`) the QR compression
        to `d` pseudo-examples, otherwise the `M` examples themselves (`rss = 0`)."""
        Xa, ya, qa = check_prompt_arrays(X, y, x_q)
        assert qa is not None
        B, M, d = Xa.shape
        if not compress or M <= d:
            return cls(X=Xa, y=ya, rss=jnp.zeros((B,), _F64), x_q=qa, M=M)
        Q, T = jnp.linalg.qr(Xa)  # Q (B, M, d), T (B, d, d)
        yc = jnp.einsum("bmd,bm->bd", Q, ya)
        resid = ya - jnp.einsum("bmd,bd->bm", Q, yc)
        return cls(X=T, y=yc, rss=jnp.sum(resid * resid, axis=-1), x_q=qa, M=M)


def _apply_mask(
    X: Float[Array, "B M d"], y: Float[Array, "B M"], mask: Float[Array, " M"] | None
) -> tuple[Float[Array, "B M d"], Float[Array, "B M"]]:
    if mask is None:
        return X, y
    return X * mask[None, :, None], y * mask[None, :]


class Predictor(eqx.Module):
    """Abstract in-context predictor: `predictor(X, y, x_q) -> (B,)` predictions.

    Subclasses implement `_predict(X, y, x_q, mask)`, a pure JAX function of validated float64
    arrays. `mask` is `None` (use every example) or a `(M,)` 0/1 array selecting the examples of
    the context; it is how `at_every_prefix` evaluates every prefix without a Python loop.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short human-readable name, e.g. `Ridge(0.1)`."""

    @abc.abstractmethod
    def _predict(
        self,
        X: Float[Array, "B M d"],
        y: Float[Array, "B M"],
        x_q: Float[Array, "B d"],
        mask: Float[Array, " M"] | None = None,
    ) -> Float[Array, " B"]: ...

    def _from_stats(self, stats: PromptStats) -> Float[Array, " B"]:
        """The prediction from the sufficient statistics; overridden by the predictors that see
        the prompt only through `(S, g, c, x_q)`."""
        raise NotImplementedError(f"{self.name} does not predict from sufficient statistics.")

    def _stats_directions(self, x_q: Float[Array, "B d"]) -> Float[Array, "B j d"] | None:
        """Directions `p_1 .. p_j` (per prompt, functions of the query) such that the prediction
        depends on `S` and `g` only through `p_a^T S p_b`, `p_a^T g` (and `c`, `x_q`); `None` if
        the whole of `S` matters. Whether it is `None` must not depend on the values (it is
        decided from shapes). Lets the sampler draw `S` restricted to a small subspace."""
        return None

    @property
    def supports_stats(self) -> bool:
        """True if the prediction depends on the prompt only through `(S, g, c, x_q)`
        (`from_stats` is implemented, by the class that defines `_predict` or a subclass of it:
        a subclass that changes `_predict` alone loses the statistics path)."""
        cls = type(self)
        return cls._from_stats is not Predictor._from_stats and issubclass(
            _definer(cls, "_from_stats"), _definer(cls, "_predict")
        )

    def _stats_dirs(self, x_q: Float[Array, "B d"]) -> Float[Array, "B j d"] | None:
        """`_stats_directions`, or `None` when a subclass changed `_predict` or `_from_stats`
        below the class that declared the directions (they may no longer hold)."""
        cls = type(self)
        where = _definer(cls, "_stats_directions")
        if not self.supports_stats or not issubclass(where, _definer(cls, "_from_stats")):
            return None
        return self._stats_directions(x_q)

    def from_stats(self, stats: PromptStats) -> Float[Array, " B"]:
        """Predict from a `PromptStats` batch; equals the call on the prompts it summarises up to
        round-off. Raises `TypeError` if the predictor needs the prompt itself
        (`supports_stats` is False)."""
        if not isinstance(stats, PromptStats):
            raise TypeError(f"`stats` must be a PromptStats; got {type(stats).__name__}.")
        if not self.supports_stats:
            raise TypeError(f"{self.name} does not predict from sufficient statistics.")
        self.check_dims(stats.M, stats.X.shape[-1])
        return _stats_jit(self, stats)

    def min_examples(self) -> int:
        """The smallest prompt length `M` this predictor accepts."""
        return 1

    def check_dimension(self, d: int) -> None:
        """Raise `ValueError` if inputs of dimension `d` are not valid input."""

    def check_dims(self, M: int, d: int) -> None:
        """Raise `ValueError` if prompts of length `M` in dimension `d` are not valid input."""
        self.check_dimension(d)
        if M < self.min_examples():
            raise ValueError(
                f"{self.name} needs a prompt of at least {self.min_examples()} in-context "
                f"example(s); got M = {M}."
            )

    def __call__(
        self,
        X: Float[ArrayLike, "B M d"],
        y: Float[ArrayLike, "B M"],
        x_q: Float[ArrayLike, "B d"],
    ) -> Float[Array, " B"]:
        """Predict the label of each query from its prompt's `M` examples.

        **Arguments:**

        - `X`: in-context inputs, shape `(B, M, d)`.
        - `y`: in-context labels, shape `(B, M)`.
        - `x_q`: queries, shape `(B, d)`.

        **Returns:** predictions, shape `(B,)`, float64.
        """
        Xa, ya, qa = check_prompt_arrays(X, y, x_q)
        assert qa is not None
        self.check_dims(Xa.shape[1], Xa.shape[2])
        return _predict_jit(self, Xa, ya, qa)

    def _prefixes(self, X: Float[Array, "B M d"], y: Float[Array, "B M"]) -> Float[Array, "B M"]:
        """Prediction of `y_i` from examples `0 .. i-1` at every position (masking + `lax.map`)."""
        M = X.shape[1]
        idx = jnp.arange(M)

        def one(i: Array) -> Array:
            mask = (idx < i).astype(_F64)
            x_i = jax.lax.dynamic_index_in_dim(X, i, axis=1, keepdims=False)
            return self._predict(X, y, x_i, mask)

        return jax.lax.map(one, idx).T

    def predict_prefixes(
        self, X: Float[ArrayLike, "B M d"], y: Float[ArrayLike, "B M"]
    ) -> Float[Array, "B M"]:
        """Same as `at_every_prefix(self, X, y)`."""
        return at_every_prefix(self, X, y)


@eqx.filter_jit
def _predict_jit(
    predictor: Predictor, X: Array, y: Array, x_q: Array, mask: Array | None = None
) -> Array:
    return predictor._predict(X, y, x_q, mask)


def _definer(cls: type, name: str) -> type:
    """The class in the MRO of `cls` that defines the attribute `name`."""
    return next(c for c in cls.__mro__ if name in vars(c))


@eqx.filter_jit
def _stats_jit(predictor: Predictor, stats: PromptStats) -> Array:
    return predictor._from_stats(stats)


@eqx.filter_jit
def _prefix_jit(predictor: Predictor, X: Array, y: Array) -> Array:
    return predictor._prefixes(X, y)


def at_every_prefix(
    predictor: Predictor, X: Float[ArrayLike, "B M d"], y: Float[ArrayLike, "B M"]
) -> Float[Array, "B M"]:
    """Predictions at every prefix length [AKY §2, §4.1] (autoregressive evaluation).

    Entry `[b, i]` is the prediction of `y[b, i]` for the query `X[b, i]` from the examples
    `0 .. i-1` of prompt `b` (0-based). Position 0 has an empty context and predicts 0 for every
    predictor. The LSA normalises a prefix of length `i` by `rho = i` (theory.md §2.2). `KNN` uses
    `min(k, i)` neighbours on a prefix shorter than `k`, as the released code of Akyürek et al.
    does.

    **Arguments:**

    - `predictor`: any `Predictor`.
    - `X`: inputs, shape `(B, M, d)`; `y`: labels, shape `(B, M)`.

    **Returns:** predictions, shape `(B, M)`.
    """
    if not isinstance(predictor, Predictor):
        raise TypeError(f"`predictor` must be a Predictor; got {type(predictor).__name__}.")
    Xa, ya, _ = check_prompt_arrays(X, y)
    if Xa.shape[1] < 1:
        raise ValueError("`X` must hold at least one example per prompt (M >= 1).")
    predictor.check_dimension(Xa.shape[2])
    return _prefix_jit(predictor, Xa, ya)


# ----------------------------------------------------------------------------------------------
# the LSA layer


class LSAPredictor(Predictor):
    """The LSA layer at given weights, through the full map [ZFB eq. 3.3] (theory.md §2, §6).

    `y_hat` is the bottom-right entry of `E + W_PV E (E^T W_KQ E) / rho` with `rho = M`, the
    number of in-context examples, the query's label slot 0 and no mask (the query column is
    part of `E E^T`). Computed by `lsa.predict_prompt`, which evaluates only the last column of
    the map in O(M d) and equals `lsa.predict(lsa.embed(X, y, x_q), W_PV, W_KQ)` to round-off
    (tested against the literal map).

    **Arguments:**

    - `W_PV`, `W_KQ`: the merged value-projection and key-query matrices, `(d+1, d+1)` each.
    """

    W_PV: Float[Array, "d+1 d+1"]
    W_KQ: Float[Array, "d+1 d+1"]

    def __init__(self, W_PV: Float[ArrayLike, "d+1 d+1"], W_KQ: Float[ArrayLike, "d+1 d+1"]):
        pv = as_float_array(W_PV, "W_PV")
        kq = as_float_array(W_KQ, "W_KQ")
        if pv.ndim != 2 or pv.shape[0] != pv.shape[1] or pv.shape[0] < 2:
            raise ValueError(f"`W_PV` must be a square (d+1, d+1) matrix, d >= 1; got {pv.shape}.")
        if kq.shape != pv.shape:
            raise ValueError(f"`W_KQ` must have the shape of W_PV {pv.shape}; got {kq.shape}.")
        self.W_PV = jnp.asarray(pv)
        self.W_KQ = jnp.asarray(kq)

    @property
    def name(self) -> str:
        return "LSA"

    @property
    def d(self) -> int:
        return int(self.W_PV.shape[0]) - 1

    def check_dimension(self, d: int) -> None:
        if d != self.d:
            raise ValueError(f"LSA weights are for d = {self.d} but the prompts have d = {d}.")

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        if mask is None:
            return lsa.predict_prompt(X, y, x_q, self.W_PV, self.W_KQ)
        # masked examples are zero columns of E; rho is the number of unmasked examples.
        M = X.shape[1]
        Xm, ym = _apply_mask(X, y, mask)
        n = jnp.sum(mask)
        full = lsa.predict_prompt(Xm, ym, x_q, self.W_PV, self.W_KQ)
        return jnp.where(n > 0, full * (M / jnp.where(n > 0, n, 1.0)), 0.0)

    def _stats_directions(self, x_q: Float[Array, "B d"]) -> Float[Array, "B 2 d"]:
        # S enters only through a^T S v with a = W_PV[d, :d] and v = W_KQ[:d, :d] x_q, and g
        # through a^T g and v^T g.
        a = jnp.broadcast_to(self.W_PV[-1, :-1], x_q.shape)
        return jnp.stack([a, x_q @ self.W_KQ[:-1, :-1].T], axis=1)

    def _from_stats(self, stats: PromptStats) -> Float[Array, " B"]:
        # lsa.predict_prompt on the pseudo-examples, normalised by M, with the label entry of
        # E E^T completed by rss: w_row^T (E E^T / M) W_KQ[:, :d] x_q, where
        # E E^T = [[S + x_q x_q^T, g], [g^T, c]].
        X, y, x_q = stats.X, stats.y, stats.x_q
        v = x_q @ self.W_KQ[:, :-1].T  # (B, d+1)
        ctx = jnp.sum(X * v[:, None, :-1], axis=-1) + y * v[:, -1:]  # (B, r)
        qry = jnp.sum(x_q * v[:, :-1], axis=-1)
        top = jnp.sum(X * ctx[:, :, None], axis=1) + x_q * qry[:, None]  # S v + g v_d + x_q qry
        bot = jnp.sum(y * ctx, axis=-1) + stats.rss * v[:, -1]  # g^T v + c v_d
        w = self.W_PV[-1]
        return (top @ w[:-1] + bot * w[-1]) / stats.M


# ----------------------------------------------------------------------------------------------
# least squares, ridge, Bayes ridge


class _PenalisedLeastSquares(Predictor):
    """`y_hat = x_q^T (X^T X + lam I)^{-1} X^T y` by SVD (`_min_norm_solve`; minimum norm for
    `lam = 0`), from the prompt or from its statistics. Subclasses give `lam` by `_penalty`."""

    def _penalty(self) -> Float[Array, ""]:
        raise NotImplementedError

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        Xm, ym = _apply_mask(X, y, mask)
        w = _min_norm_solve(Xm, ym, self._penalty())
        return jnp.einsum("bd,bd->b", w, x_q)

    def _from_stats(self, stats: PromptStats) -> Float[Array, " B"]:
        # X = Q T: the same singular values, so the tolerance rule counts the M original rows.
        w = _min_norm_solve(stats.X, stats.y, self._penalty(), rows=stats.M)
        return jnp.einsum("bd,bd->b", w, stats.x_q)


class OLS(_PenalisedLeastSquares):
    """Ordinary least squares, minimum-norm when underdetermined [AKY eq. 10, λ = 0] (§11.2).

    `w = X^+ y` (Moore–Penrose pseudo-inverse by SVD), so for `M < d` (or a rank-deficient
    design) it is the minimum-norm interpolant; `OLS()` equals `Ridge(0)`.
    """

    @property
    def name(self) -> str:
        return "OLS"

    def _penalty(self) -> Float[Array, ""]:
        return _scalar(0.0)


class Ridge(_PenalisedLeastSquares):
    """Ridge regression with the sum-of-squares convention [AKY eqs. 9–10] (theory.md §11.1).

    `w = argmin sum_i (w^T x_i - y_i)^2 + lam ||w||^2 = (X^T X + lam I)^{-1} X^T y`, the same as
    `sklearn.linear_model.Ridge(alpha=lam, fit_intercept=False)` (tested). `lam = 0` is `OLS()`
    (minimum norm when underdetermined).

    **Arguments:**

    - `lam`: the ridge parameter, `>= 0`.
    """

    lam: Float[Array, ""]

    def __init__(self, lam: float):
        self.lam = _scalar(check_nonnegative(lam, "lam"))

    @property
    def name(self) -> str:
        return f"Ridge({_fmt(self.lam)})"

    def _penalty(self) -> Float[Array, ""]:
        return self.lam


class BayesRidge(_PenalisedLeastSquares):
    """The Bayes-optimal predictor for `w ~ N(0, tau^2 I)`, noise `N(0, s^2)` [AKY eqs. 18–19].

    `E[y | x, D] = x^T (X^T X + (s^2/tau^2) I)^{-1} X^T y`: ridge with `lam = s^2 / tau^2`
    (theory.md §11.5). `noise_var = 0` gives min-norm OLS.

    **Arguments:**

    - `noise_var`: label-noise variance `s^2 >= 0`.
    - `prior_var`: prior variance `tau^2 > 0` of each task coordinate.
    """

    noise_var: Float[Array, ""]
    prior_var: Float[Array, ""]

    def __init__(self, noise_var: float, prior_var: float = 1.0):
        self.noise_var = _scalar(check_nonnegative(noise_var, "noise_var"))
        self.prior_var = _scalar(check_positive(prior_var, "prior_var"))

    @property
    def lam(self) -> Float[Array, ""]:
        """The equivalent ridge parameter `s^2 / tau^2`."""
        return self.noise_var / self.prior_var

    @property
    def name(self) -> str:
        return f"BayesRidge({_fmt(self.lam)})"

    def _penalty(self) -> Float[Array, ""]:
        return self.lam


# ----------------------------------------------------------------------------------------------
# gradient descent, SGD, averaging


class GD(Predictor):
    """Batch gradient descent from `w_0 = 0`, "GD(alpha)" [AKY §4.3] (theory.md §11.2).

    `w_{k+1} = w_k - 2 alpha (X^T X w_k - X^T y + lam w_k)`, i.e. gradient steps on the sum of
    squares `sum_i (w^T x_i - y_i)^2 + lam ||w||^2`. One step gives `w_1 = 2 alpha X^T y`, so
    `y_hat = h^T (2 alpha M I) x_q` with `h = (1/M) sum_i y_i x_i` (linear in h).

    **Arguments:**

    - `alpha`: the step size, `> 0`.
    - `steps`: the number of full-batch steps, an integer `>= 1` (default 1).
    - `lam`: optional weight decay, `>= 0` (irrelevant for one step from 0).
    """

    alpha: Float[Array, ""]
    lam: Float[Array, ""]
    steps: int = eqx.field(static=True)

    def __init__(self, alpha: float, steps: int = 1, lam: float = 0.0):
        self.alpha = _scalar(check_positive(alpha, "alpha"))
        self.steps = check_length(steps, "steps")
        self.lam = _scalar(check_nonnegative(lam, "lam"))

    @property
    def name(self) -> str:
        extra = f", steps={self.steps}" if self.steps != 1 else ""
        extra += f", lam={_fmt(self.lam)}" if float(self.lam) != 0.0 else ""
        return f"GD({_fmt(self.alpha)}{extra})"

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        Xm, ym = _apply_mask(X, y, mask)
        S = jnp.einsum("bmi,bmj->bij", Xm, Xm)
        b = jnp.einsum("bmi,bm->bi", Xm, ym)

        def step(_: int, w: Array) -> Array:
            grad = jnp.einsum("bij,bj->bi", S, w) - b + self.lam * w
            return w - 2.0 * self.alpha * grad

        w = jax.lax.fori_loop(0, self.steps, step, jnp.zeros_like(b))
        return jnp.einsum("bd,bd->b", w, x_q)

    def _stats_directions(self, x_q: Float[Array, "B d"]) -> Float[Array, "B 1 d"] | None:
        # one step from 0: y_hat = 2 alpha g^T x_q; more steps need powers of S
        return x_q[:, None, :] if self.steps == 1 else None

    def _from_stats(self, stats: PromptStats) -> Float[Array, " B"]:
        # the iteration sees the prompt only through X^T X and X^T y
        return self._predict(stats.X, stats.y, stats.x_q)


class SGD(Predictor):
    """One-pass SGD with batch size 1, "SGD(alpha)" [AKY §4.3] (theory.md §11.2).

    `w_1 = 0` and, for each example `(x, y)` in order,
    `w <- w - alpha clip(2 (x x^T w - x y + lam w), -clip, clip)` (entrywise clip of the gradient,
    as the released code of Akyürek et al. does with `clip = 20`). The query prediction uses all
    `M` examples; at a prefix `i` the prediction is `w_i^T x_i` after examples `0 .. i-1`.

    **Arguments:**

    - `alpha`: the step size, `> 0`.
    - `lam`: weight decay, `>= 0` (default 0).
    - `clip`: the entrywise gradient bound, `> 0` (default 20; `math.inf` for no clipping).
    """

    alpha: Float[Array, ""]
    lam: Float[Array, ""]
    clip: Float[Array, ""]

    def __init__(self, alpha: float, lam: float = 0.0, clip: float = 20.0):
        self.alpha = _scalar(check_positive(alpha, "alpha"))
        self.lam = _scalar(check_nonnegative(lam, "lam"))
        clip_f = float(clip)
        if not clip_f > 0.0:
            raise ValueError(f"`clip` must be > 0 (math.inf for no clipping); got {clip!r}.")
        self.clip = _scalar(clip_f)

    @property
    def name(self) -> str:
        extra = f", lam={_fmt(self.lam)}" if float(self.lam) != 0.0 else ""
        return f"SGD({_fmt(self.alpha)}{extra})"

    def _scan(self, X: Array, y: Array, mask: Array | None) -> tuple[Array, Array]:
        B, M, d = X.shape
        m = jnp.ones((M,), _F64) if mask is None else mask

        def step(w: Array, inp: tuple[Array, Array, Array]) -> tuple[Array, Array]:
            x, yy, keep = inp
            pred = jnp.einsum("bd,bd->b", w, x)
            grad = 2.0 * (x * (pred - yy)[:, None] + self.lam * w)
            grad = jnp.clip(grad, -self.clip, self.clip)
            w_new = jnp.where(keep > 0, w - self.alpha * grad, w)
            return w_new, pred

        w, preds = jax.lax.scan(step, jnp.zeros((B, d), _F64), (jnp.swapaxes(X, 0, 1), y.T, m))
        return w, preds.T

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        w, _ = self._scan(X, y, mask)
        return jnp.einsum("bd,bd->b", w, x_q)

    def _prefixes(self, X, y):  # type: ignore[no-untyped-def]
        return self._scan(X, y, None)[1]


class Averaging(Predictor):
    """Averaging, `y_hat = x_q^T (1/M) sum_i y_i x_i = h^T x_q` (Garg et al.; theory.md §11.2).

    The predictor linear in h with `G = I`.
    """

    @property
    def name(self) -> str:
        return "Averaging"

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        Xm, ym = _apply_mask(X, y, mask)
        n = X.shape[1] if mask is None else jnp.sum(mask)
        n_safe = jnp.where(n > 0, n, 1.0)
        h = jnp.einsum("bmd,bm->bd", Xm, ym) / n_safe
        return jnp.where(n > 0, jnp.einsum("bd,bd->b", h, x_q), 0.0)

    def _stats_directions(self, x_q: Float[Array, "B d"]) -> Float[Array, "B 1 d"]:
        return x_q[:, None, :]

    def _from_stats(self, stats: PromptStats) -> Float[Array, " B"]:
        return jnp.einsum("bd,bd->b", stats.g, stats.x_q) / stats.M


# ----------------------------------------------------------------------------------------------
# nearest neighbours


class KNN(Predictor):
    """k-nearest-neighbour regression [AKY §4.3] (theory.md §11.2).

    The prediction is the mean of the labels of the `k` in-context inputs nearest to the query
    (Euclidean distance). With `weighting="distance"` it is the weighted mean with weights
    `|x_q - x_i|^{-exponent}`; if some neighbours are at distance exactly 0, only those count,
    with equal weights (as `sklearn.neighbors.KNeighborsRegressor(weights="distance")`, which is
    `exponent = 1`; the paper's text says exponent 2 — UNCERTAIN, theory.md §15).

    **Arguments:**

    - `k`: the number of neighbours, an integer `>= 1` (default 3). Calling on prompts with
      `M < k` raises `ValueError`; on a prefix shorter than `k` all available examples are used.
    - `weighting`: `"uniform"` (default) or `"distance"`.
    - `exponent`: the distance exponent for `weighting="distance"`, `> 0` (default 1).
    """

    exponent: Float[Array, ""]
    k: int = eqx.field(static=True)
    weighting: str = eqx.field(static=True)

    def __init__(self, k: int = 3, weighting: str = "uniform", exponent: float = 1.0):
        self.k = check_length(k, "k")
        if weighting not in ("uniform", "distance"):
            raise ValueError(f"`weighting` must be 'uniform' or 'distance'; got {weighting!r}.")
        self.weighting = weighting
        self.exponent = _scalar(check_positive(exponent, "exponent"))

    @property
    def name(self) -> str:
        if self.weighting == "uniform":
            return f"KNN({self.k})"
        return f"KNN({self.k}, distance^{_fmt(self.exponent)})"

    def min_examples(self) -> int:
        return self.k

    def check_dims(self, M: int, d: int) -> None:
        self.check_dimension(d)
        if M < self.k:
            raise ValueError(
                f"{self.name} needs k = {self.k} <= M, the number of in-context examples; "
                f"got M = {M}. Use a smaller k or a longer prompt."
            )

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        M = X.shape[1]
        k = min(self.k, M)
        d2 = jnp.sum((X - x_q[:, None, :]) ** 2, axis=-1)  # (B, M), exact zeros for repeats
        if mask is not None:
            d2 = jnp.where(mask[None, :] > 0, d2, jnp.inf)
        neg, idx = jax.lax.top_k(-d2, k)
        d2k = -neg
        yk = jnp.take_along_axis(y, idx, axis=1)
        valid = jnp.isfinite(d2k)
        if self.weighting == "uniform":
            wts = valid.astype(_F64)
        else:
            dist = jnp.sqrt(jnp.where(valid, d2k, 1.0))
            zero = valid & (dist == 0.0)
            pos = valid & ~zero
            inv = jnp.where(pos, jnp.where(pos, dist, 1.0) ** (-self.exponent), 0.0)
            wts = jnp.where(jnp.any(zero, axis=-1, keepdims=True), zero.astype(_F64), inv)
        tot = jnp.sum(wts, axis=-1)
        num = jnp.sum(wts * yk, axis=-1)
        return jnp.where(tot > 0, num / jnp.where(tot > 0, tot, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# preconditioner view


def linear_G(predictor: Predictor, d: int, M: int) -> Float[np.ndarray, "d d"] | None:
    """The preconditioner `G` with `y_hat = h^T G x_q`, `h = (1/M) sum_i y_i x_i` (theory.md §6).

    Defined for the predictors that are linear in `h` on prompts of length `M`:

    - `LSAPredictor` with `a = W_PV[d, :d] = 0` and `b = W_KQ[d, :d] = 0`: `G = u U` with
      `u = W_PV[d, d]`, `U = W_KQ[:d, :d]` (rho = M convention; [ZFB Lemma 5.1], §5);
    - `GD(alpha)` with one step: `G = 2 alpha M I` ([AKY §4.3], §11.2);
    - `Averaging()`: `G = I`.

    Every other predictor (OLS, ridge, several GD steps, SGD, KNN, an LSA with `a` or `b` non-zero)
    returns `None`. Use `G` with `theory.shift_risk`, `theory.spd_linear`, `theory.ilwd_linear`.

    **Arguments:**

    - `predictor`: the predictor.
    - `d`: input dimension; `M`: prompt length (integers `>= 1`).

    **Returns:** `G` as a float64 numpy array of shape `(d, d)`, or `None`.
    """
    d = check_length(d, "d")
    M = check_length(M, "M")
    if isinstance(predictor, LSAPredictor):
        if predictor.d != d:
            raise ValueError(f"LSA weights are for d = {predictor.d}, not d = {d}.")
        pv = np.asarray(predictor.W_PV)
        kq = np.asarray(predictor.W_KQ)
        if np.any(pv[-1, :-1] != 0.0) or np.any(kq[-1, :-1] != 0.0):
            return None
        return pv[-1, -1] * kq[:-1, :-1]
    if isinstance(predictor, GD):
        if predictor.steps != 1:
            return None
        return 2.0 * float(predictor.alpha) * M * np.eye(d)
    if isinstance(predictor, Averaging):
        return np.eye(d)
    if not isinstance(predictor, Predictor):
        raise TypeError(f"`predictor` must be a Predictor; got {type(predictor).__name__}.")
    return None
