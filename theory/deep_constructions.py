"""Closed forms for the explicit LSA-stack constructions (issue 10, part 5; docs/deep.md).

Implicit maps [Akyuerek et al. ICLR 2023, §3 and App. A–C; Ahn et al. NeurIPS 2023, Lemma 1]:
with S = X^T X / n, h = X^T y / n, L steps of GD w <- w - a_l (S w - h) from w_0 = 0 give

    w_L = (I - prod_l (I - a_l S)) S^{-1} h = p_L(S) h,     p_L(s) = (1 - q(s)) / s,

(by induction: w_L - S^{-1} h = prod_l (I - a_l S)(w_0 - S^{-1} h); p_L is a polynomial of degree
L - 1, so S need not be invertible). `gd_polynomial` evaluates p_L.

Ridge by Chebyshev-Richardson [DERIVED here, classical Chebyshev semi-iteration]: the iteration
w <- w - beta_k ((S + lam I) w - h) with beta_k = 1 / t_k, t_k the roots of the shifted Chebyshev
polynomial on [A, B] = [s_lo + lam, s_hi + lam], has w_L - w_lam = -Q_L(S + lam I) w_lam with

    Q_L(t) = T_L((B + A - 2t) / (B - A)) / T_L((B + A) / (B - A)),

and |Q_L| <= 1 / T_L((kappa + 1)/(kappa - 1)), kappa = B / A, on [A, B], attained at the L + 1
extremal points t_j = (B + A)/2 - (B - A)/2 cos(j pi / L). Since T_L(x) = cosh(L arccosh x) for
x >= 1 and (kappa + 1)/(kappa - 1) = cosh(log((sqrt(kappa) + 1)/(sqrt(kappa) - 1))),

    1 / T_L((kappa + 1)/(kappa - 1)) = 2 sigma^L / (1 + sigma^{2L}),
    sigma = (sqrt kappa - 1)/(sqrt kappa + 1),

geometric in L with ratio sigma. Here T_L is evaluated by the cos/cosh formulas, independently of
the product of linear factors that the LSA stack realises.

Plain numpy; `theory` never imports `lsa` (docs/architecture.md).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

from theory._validate import check_int, check_real

__all__ = [
    "chebyshev_T",
    "chebyshev_extremal_points",
    "chebyshev_richardson_steps",
    "chebyshev_ridge_bound",
    "chebyshev_ridge_residual",
    "gd_polynomial",
]


def _interval(lam: object, s_lo: object, s_hi: object) -> tuple[float, float, float]:
    lam_f = check_real(lam, "lam", nonnegative=True)
    lo = check_real(s_lo, "s_lo", positive=True)
    hi = check_real(s_hi, "s_hi", positive=True)
    if not hi > lo:
        raise ValueError(f"s_hi must exceed s_lo; got s_lo={lo}, s_hi={hi}.")
    return lam_f, lo + lam_f, hi + lam_f


def chebyshev_T(L: int, x: Float[ArrayLike, " *m"]) -> Float[np.ndarray, " *m"]:
    """The Chebyshev polynomial T_L(x): cos(L arccos x) on |x| <= 1, sign(x)^L cosh(L arccosh|x|)
    outside."""
    L = check_int(L, "L", minimum=0)
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    inside = np.cos(L * np.arccos(np.clip(x, -1.0, 1.0)))
    outside = np.sign(x) ** L * np.cosh(L * np.arccosh(np.maximum(ax, 1.0)))
    return np.where(ax <= 1.0, inside, outside)


def chebyshev_ridge_bound(L: int, lam: float, s_lo: float, s_hi: float) -> float:
    """1 / T_L((kappa + 1)/(kappa - 1)), kappa = (s_hi + lam)/(s_lo + lam): the worst-case
    relative error ||w_L - w_lam|| / ||w_lam|| of L Chebyshev-Richardson steps for prompts whose
    S = X^T X / n has its spectrum in [s_lo, s_hi] (module docstring). Returned in the stable form
    2 sigma^L / (1 + sigma^{2L})."""
    L = check_int(L, "L", minimum=1)
    _, A, B = _interval(lam, s_lo, s_hi)
    kappa = B / A
    sigma = (np.sqrt(kappa) - 1.0) / (np.sqrt(kappa) + 1.0)
    return float(2.0 * sigma**L / (1.0 + sigma ** (2 * L)))


def chebyshev_ridge_residual(
    L: int, lam: float, s_lo: float, s_hi: float, s: Float[ArrayLike, " *m"]
) -> Float[np.ndarray, " *m"]:
    """Q_L(s + lam): the factor by which L Chebyshev-Richardson steps leave the ridge solution's
    component at an eigenvalue s of S, w_L - w_lam = -Q_L(S + lam I) w_lam."""
    L = check_int(L, "L", minimum=1)
    lam_f, A, B = _interval(lam, s_lo, s_hi)
    t = np.asarray(s, dtype=np.float64) + lam_f
    return chebyshev_T(L, (B + A - 2.0 * t) / (B - A)) / chebyshev_T(L, (B + A) / (B - A))


def chebyshev_richardson_steps(
    L: int, lam: float, s_lo: float, s_hi: float
) -> Float[np.ndarray, " L"]:
    """beta_k = 1 / t_k, t_k = (B + A)/2 - (B - A)/2 cos((2k - 1) pi / (2L)), the reciprocal roots
    of Q_L on [A, B] = [s_lo + lam, s_hi + lam] (the Richardson steps for (S + lam I) w = h)."""
    L = check_int(L, "L", minimum=1)
    _, A, B = _interval(lam, s_lo, s_hi)
    k = np.arange(1, L + 1)
    t = 0.5 * (B + A) - 0.5 * (B - A) * np.cos((2 * k - 1) * np.pi / (2 * L))
    return 1.0 / t


def chebyshev_extremal_points(L: int, lam: float, s_lo: float, s_hi: float) -> np.ndarray:
    """The L + 1 eigenvalues s in [s_lo, s_hi] at which |Q_L(s + lam)| equals the bound."""
    L = check_int(L, "L", minimum=1)
    lam_f, A, B = _interval(lam, s_lo, s_hi)
    j = np.arange(L + 1)
    return 0.5 * (B + A) - 0.5 * (B - A) * np.cos(j * np.pi / L) - lam_f


def gd_polynomial(
    a: Float[ArrayLike, " L"], s: Float[ArrayLike, " *m"]
) -> Float[np.ndarray, " *m"]:
    """p_L(s) = (1 - prod_l (1 - a_l s)) / s, evaluated by the recursion p <- p + a_l (1 - s p)
    (one GD step on the scalar problem s w = 1): w_L = p_L(S) h for L GD steps from 0."""
    a_arr = np.asarray(a, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.size < 1 or not np.all(np.isfinite(a_arr)):
        raise ValueError(f"a must be a non-empty 1-d array of finite step sizes; got {a!r}.")
    s_arr = np.asarray(s, dtype=np.float64)
    p = np.zeros_like(s_arr)
    for a_l in a_arr:
        p = p + a_l * (1.0 - s_arr * p)
    return p
