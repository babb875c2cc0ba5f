"""Sums of decaying exponentials in O(1): binned Taylor tables (shared by `lsa.flow` and
`lsa.batch`, which evaluate the off-diagonal part of the reduced flow with them)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

#: Fewest bins of a table; see `padded_bins`.
MIN_BINS = 64


def padded_bins(nb: int) -> int:
    """The one padding rule for table sizes: the next power of two, at least `MIN_BINS`.

    Zero-weight bins are appended up to this size, so a table's shape depends only on the rate
    span's order of magnitude and a new problem of the same d reuses the compiled solve instead
    of recompiling for a new shape; a stack of padded tables is padded again to the largest
    (also a power of two) by `stack_tables`.
    """
    return max(MIN_BINS, 1 << (max(int(nb), 1) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class ExpSumTable:
    """`F_w(s) = sum_k w_k exp(-2 r_k s)` for `s >= 0`, evaluated in O(bins * order).

    The rates are binned geometrically (ratio `1 + width` per bin); inside a bin with centre
    `rho` each term is `exp(-2 rho s) exp(-2 (r_k - rho) s)`, and the second factor is replaced
    by its Taylor polynomial of degree `order`, whose coefficients are summed over the bin once
    (moments `sum_k w_k (r_k - rho)^m / m!`). With `x = 2 rho s` and `|r_k/rho - 1| <= q`, the
    remainder of one term is at most `|w_k| e^{-x(1-q)} (x q)^{order+1} / (order+1)!`, whose
    maximum over all `x >= 0` is `|w_k| (q/(1-q))^{order+1} (order+1)^{order+1} e^{-(order+1)}
    / (order+1)!`: a bound uniform in `s` (`error_bound`), 2e-17 of `sum |w|` at the defaults.
    """

    centers: np.ndarray  # (bins,)
    moments: np.ndarray  # (bins, order+1, n_weights)
    error_bound: np.ndarray  # (n_weights,) absolute, uniform in s

    @staticmethod
    def build(
        rates: np.ndarray, weights: np.ndarray, width: float = 0.2, order: int = 15
    ) -> ExpSumTable:
        rates = np.asarray(rates, np.float64).reshape(-1)
        weights = np.asarray(weights, np.float64).reshape(rates.shape[0], -1)
        n_w = weights.shape[1]
        if rates.size == 0:
            nb0 = padded_bins(1)
            return ExpSumTable(np.ones(nb0), np.zeros((nb0, order + 1, n_w)), np.zeros(n_w))
        if np.any(rates <= 0):
            raise ValueError("ExpSumTable needs strictly positive rates.")
        log_step = math.log1p(width)
        lo = float(np.log(rates.min()))
        idx = np.floor((np.log(rates) - lo) / log_step).astype(np.int64)
        nb = int(idx.max()) + 1
        centers = np.exp(lo + (np.arange(nb) + 0.5) * log_step)
        delta = rates - centers[idx]
        moments = np.zeros((nb, order + 1, n_w))
        term = weights.copy()
        for m in range(order + 1):
            if m > 0:
                term = term * (delta / m)[:, None]
            for w in range(n_w):
                moments[:, m, w] = np.bincount(idx, weights=term[:, w], minlength=nb)
        nb_pad = padded_bins(nb)
        centers = np.concatenate([centers, np.full(nb_pad - nb, centers[-1])])
        moments = np.concatenate([moments, np.zeros((nb_pad - nb, order + 1, n_w))])
        q = math.sqrt(1.0 + width) - 1.0
        k = order + 1
        tail = (q / (1 - q)) ** k * math.exp(k * math.log(k) - k - math.lgamma(k + 1))
        return ExpSumTable(centers, moments, tail * np.sum(np.abs(weights), axis=0))

    def args(self) -> tuple[Array, Array]:
        return jnp.asarray(self.centers), jnp.asarray(self.moments)


def exp_sum(s: Any, centers: Array, moments: Array) -> Array:
    """Evaluate an `ExpSumTable` at `s` (traceable): returns `(n_weights,)`."""
    order = moments.shape[1] - 1
    # Beyond s_cut every exp(-2 rho s) underflows to 0, so clipping s there is exact and keeps
    # (-2 s)^order finite.
    s = jnp.minimum(s, 400.0 / jnp.min(centers))
    pows = (-2.0 * s) ** jnp.arange(order + 1)
    return jnp.exp(-2.0 * s * centers) @ jnp.einsum("bmw,m->bw", moments, pows)


def stack_tables(tables: Sequence[ExpSumTable]) -> tuple[np.ndarray, np.ndarray]:
    """Stack tables to `(B, nb)` centres and `(B, nb, order+1, n_w)` moments, padding each to
    the largest bin count (a power of two by `padded_bins`) with zero-weight bins."""
    nb = padded_bins(max(t.centers.shape[0] for t in tables))
    B = len(tables)
    centers = np.ones((B, nb))
    moments = np.zeros((B, nb, *tables[0].moments.shape[1:]))
    for b, tb in enumerate(tables):
        k = tb.centers.shape[0]
        centers[b, :k] = tb.centers
        centers[b, k:] = tb.centers[-1]  # zero-weight padding bins
        moments[b, :k] = tb.moments
    return centers, moments
