"""Akyürek et al.'s metrics for predictors linear in h (theory.md §11.2–§11.3): SPD and ILWD
between two such predictors, and gradient descent from zero as one (`gd_G`).

A predictor "linear in h" is y_hat = h^T G x_q with h = (1/M) sum_i y_i x_i; the trained LSA
layer has G = Gamma^{-1} (`theory.risk`). Plain numpy, float64.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

from theory._validate import check_int, check_psd, check_real, check_spd, check_square

__all__ = ["gd_G", "ilwd_linear", "spd_linear"]


# ----------------------------------------------------------------------------------------------
# §11.2–§11.3: Akyürek et al. predictors and metrics for predictors linear in h


def spd_linear(
    G1: Float[ArrayLike, "d d"],
    G2: Float[ArrayLike, "d d"],
    Lambda: Float[ArrayLike, "d d"],
    Ehh: Float[ArrayLike, "d d"],
) -> float:
    """Squared prediction difference of two predictors linear in h [AKY eq. 15] (theory.md §11.3).

    SPD = tr((G1 - G2) Lambda (G1 - G2)^T E[h h^T]) for y_hat_k = h^T G_k x_q, x_q ~ N(0, Lambda)
    independent of the prompt ([DERIVED] closed form).

    **Arguments:**

    - `G1`, `G2`: the preconditioners, shape (d, d).
    - `Lambda`: query covariance, symmetric positive definite, shape (d, d).
    - `Ehh`: E[h h^T] (see `prompt_moment`), symmetric positive semi-definite, shape (d, d).

    **Returns:** SPD as a float (not normalised by d).
    """
    lam = check_spd(Lambda, "Lambda")
    d = lam.shape[0]
    a = check_square(G1, "G1", d)
    b = check_square(G2, "G2", d)
    e = check_psd(Ehh, "Ehh", d)
    diff = a - b
    return float(np.trace(diff @ lam @ diff.T @ e))


def ilwd_linear(
    G1: Float[ArrayLike, "d d"], G2: Float[ArrayLike, "d d"], Ehh: Float[ArrayLike, "d d"]
) -> float:
    """Implicit linear weight difference of two predictors linear in h [AKY eqs. 16–17] (§11.3).

    ILWD = tr((G1 - G2)(G1 - G2)^T E[h h^T]); the implied weight of y_hat = h^T G x_q is G^T h
    ([DERIVED] closed form).

    **Arguments:**

    - `G1`, `G2`: the preconditioners, shape (d, d).
    - `Ehh`: E[h h^T] (see `prompt_moment`), symmetric positive semi-definite, shape (d, d).

    **Returns:** ILWD as a float (not normalised by d).
    """
    e = check_psd(Ehh, "Ehh")
    d = e.shape[0]
    a = check_square(G1, "G1", d)
    b = check_square(G2, "G2", d)
    diff = a - b
    return float(np.trace(diff @ diff.T @ e))


def gd_G(alpha: float, M: int, d: int) -> Float[np.ndarray, "d d"]:
    """Preconditioner of one-step batch GD from 0, "GD(alpha)" [AKY Sec. 4.3] (theory.md §11.2).

    w = 2 alpha X^T Y, so y_hat = h^T G x_q with G = 2 alpha M I_d ([DERIVED]).

    **Arguments:**

    - `alpha`: step size, > 0.
    - `M`: number of in-context examples, an integer >= 1.
    - `d`: input dimension, an integer >= 1.

    **Returns:** G, shape (d, d).
    """
    a = check_real(alpha, "alpha", positive=True)
    m = check_int(M, "M")
    dd = check_int(d, "d")
    return 2.0 * a * m * np.eye(dd)
