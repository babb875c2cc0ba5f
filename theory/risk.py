"""Closed-form test risks of the trained LSA layer and of predictors linear in h.

ZFB §6–§8 and AKY §11 of theory.md.

Conventions (theory.md): `Gamma` uses the **training** length `N` and covariance `Lambda`; test
prompts have length `M` and are normalised by `M`; the test risk `R = E(y_hat - target)^2` has
**no** factor 1/2. A predictor "linear in h" is y_hat = h^T G x_q with h = (1/M) sum_i y_i x_i; the
trained layer has G = Gamma^{-1}. Plain numpy/scipy, float64.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

from theory._validate import (
    check_finite_array,
    check_int,
    check_psd,
    check_real,
    check_spd,
    check_square,
    check_vector,
)

__all__ = [
    "corollary43_epsilon",
    "covariate_scaling_limit",
    "covariate_scaling_risk",
    "covariate_scaling_risk_isotropic",
    "covariate_shift_risk",
    "fixed_task_risk",
    "minnorm_ols_risk",
    "noisy_training_minimiser",
    "ols_risk",
    "optimal_preconditioner",
    "prompt_moment",
    "query_shift_risk",
    "risk",
    "risk_floor",
    "risk_isotropic",
    "risk_limit_large_N",
    "shift_risk",
    "shift_risk_limit",
    "task_shift_risk",
    "theorem42_average_bound",
    "theorem42_risk",
    "trained_prediction",
]


# ----------------------------------------------------------------------------------------------
# private helpers (inputs already validated)


def _gamma_parts(lam: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues w of Lambda, eigenvectors v, and eigenvalues of Gamma in the same basis."""
    w, v = np.linalg.eigh(lam)
    gv = (1.0 + 1.0 / n) * w + np.sum(w) / n
    return w, v, gv


def _gamma_inv(lam: np.ndarray, n: int) -> np.ndarray:
    _, v, gv = _gamma_parts(lam, n)
    out = (v / gv) @ v.T
    return 0.5 * (out + out.T)


def _floor_terms(w: np.ndarray, gv: np.ndarray) -> tuple[float, float, float]:
    """tr(Gamma^{-2} Lambda^3), tr(Gamma^{-2} Lambda^2), tr(Gamma^{-2} Lambda) from eigenvalues."""
    return (
        float(np.sum(w**3 / gv**2)),
        float(np.sum(w**2 / gv**2)),
        float(np.sum(w / gv**2)),
    )


def _ehh(lx: np.ndarray, sw: np.ndarray, s2: float, m: int) -> np.ndarray:
    out = (1.0 + 1.0 / m) * lx @ sw @ lx + ((np.trace(lx @ sw) + s2) / m) * lx
    return 0.5 * (out + out.T)


# ----------------------------------------------------------------------------------------------
# §6: the trained layer on a test prompt


def trained_prediction(
    X: Float[ArrayLike, "B M d"],
    y: Float[ArrayLike, "B M"],
    x_q: Float[ArrayLike, "B d"],
    Lambda: Float[ArrayLike, "d d"],
    N: int,
) -> Float[np.ndarray, " B"]:
    """Prediction of the trained LSA layer on test prompts [ZFB eq. 4.3, Cor. 4.3] (theory.md §6).

    y_hat = h^T Gamma^{-1} x_q with h = (1/M) sum_{i=1}^M y_i x_i (test normaliser rho = M, Gamma
    from the training N and Lambda). This is an exact identity for the full LSA map at W_*.

    **Arguments:**

    - `X`: in-context inputs, shape (B, M, d).
    - `y`: in-context labels, shape (B, M).
    - `x_q`: query inputs, shape (B, d).
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** predictions, shape (B,).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    d = lam.shape[0]
    Xa = check_finite_array(X, "X")
    ya = check_finite_array(y, "y")
    qa = check_finite_array(x_q, "x_q")
    if Xa.ndim != 3 or Xa.shape[2] != d or Xa.shape[1] < 1:
        raise ValueError(f"X must have shape (B, M, {d}) with M >= 1, got {Xa.shape}.")
    B, M = Xa.shape[0], Xa.shape[1]
    if ya.shape != (B, M):
        raise ValueError(f"y must have shape (B, M) = ({B}, {M}) to match X, got {ya.shape}.")
    if qa.shape != (B, d):
        raise ValueError(f"x_q must have shape (B, d) = ({B}, {d}) to match X, got {qa.shape}.")
    h = np.einsum("bm,bmd->bd", ya, Xa) / M
    return np.einsum("bi,ij,bj->b", h, _gamma_inv(lam, n), qa)


# ----------------------------------------------------------------------------------------------
# §7: Theorem 4.2 and the task-averaged risk R(N, M)


def risk(Lambda: Float[ArrayLike, "d d"], N: int, M: int) -> float:
    """Exact test risk of the trained layer averaged over w ~ N(0, I) (theory.md §7.3 [DERIVED]).

    R(N, M) = (1/N^2)[tr(Gamma^{-2}Lambda^3) + 2 tr(Lambda) tr(Gamma^{-2}Lambda^2)
                      + tr(Lambda)^2 tr(Gamma^{-2}Lambda)]
              + (1/M)[tr(Gamma^{-2}Lambda^3) + tr(Lambda) tr(Gamma^{-2}Lambda^2)],
    the average of [ZFB eq. 4.6] over tasks. No factor 1/2; R(N, N) = 2 min L.

    **Arguments:**

    - `Lambda`: training (= test) covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.

    **Returns:** R(N, M) as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    w, _, gv = _gamma_parts(lam, n)
    t3, t2, t1 = _floor_terms(w, gv)
    tr = float(np.sum(w))
    return (t3 + 2.0 * tr * t2 + tr * tr * t1) / n**2 + (t3 + tr * t2) / m


def risk_isotropic(d: int, N: int, M: int) -> float:
    """Exact task-averaged test risk for Lambda = I (theory.md §7.3, isotropic form [DERIVED]).

    R = d(d+1) [(d+1) + N^2/M] / (N+d+1)^2.

    **Arguments:**

    - `d`: input dimension, an integer >= 1.
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.

    **Returns:** R as a float.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    m = check_int(M, "M")
    return dd * (dd + 1.0) * ((dd + 1.0) + n * (n / m)) / (n + dd + 1.0) ** 2


def risk_floor(Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """The M -> infinity limit of R(N, M): the O(1/N^2) error floor (theory.md §7.3 [DERIVED]).

    tr(Lambda (I - Gamma^{-1}Lambda)^2) = (1/N^2)[tr(Gamma^{-2}Lambda^3)
    + 2 tr(Lambda) tr(Gamma^{-2}Lambda^2) + tr(Lambda)^2 tr(Gamma^{-2}Lambda)].

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the floor as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    w, _, gv = _gamma_parts(lam, n)
    # 1 - lambda/gamma = (lambda + tr Lambda) / (N gamma): no cancellation at large N
    one_minus = (w + np.sum(w)) / (n * gv)
    return float(np.sum(w * one_minus**2))


def risk_limit_large_N(Lambda: Float[ArrayLike, "d d"], M: int) -> float:
    """The N -> infinity limit of R(N, M) (theory.md §7.3 [DERIVED]; cf. [ZFB eq. 4.7]).

    R -> (d+1) tr(Lambda) / M.

    **Arguments:**

    - `Lambda`: covariance, symmetric positive definite, shape (d, d).
    - `M`: test prompt length, an integer >= 1.

    **Returns:** the limit as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    m = check_int(M, "M")
    return (lam.shape[0] + 1.0) * float(np.trace(lam)) / m


def theorem42_risk(
    Lambda: Float[ArrayLike, "d d"],
    N: int,
    M: int,
    a_D: Float[ArrayLike, " d"],
    Sigma_xy: Float[ArrayLike, "d d"],
    best_linear_error: float,
) -> float:
    """Test risk of the trained layer on a general distribution D [ZFB Thm 4.2, eq. 4.6] (§7.1).

    E(y_hat - y_q)^2 = min_w E(<w, x_q> - y_q)^2 + (1/M) tr(Sigma Gamma^{-2} Lambda)
      + (1/N^2)[||a_D||^2_{Gamma^{-2}Lambda^3} + 2 tr(Lambda) ||a_D||^2_{Gamma^{-2}Lambda^2}
                + tr(Lambda)^2 ||a_D||^2_{Gamma^{-2}Lambda}],
    where the x-marginal of D is N(0, Lambda), a_D = Lambda^{-1} E[x y] and Sigma = Cov(x y).

    **Arguments:**

    - `Lambda`: training covariance (= x-marginal of D), symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.
    - `a_D`: Lambda^{-1} E[x y], shape (d,).
    - `Sigma_xy`: Cov(x y), symmetric positive semi-definite, shape (d, d).
    - `best_linear_error`: min_w E(<w, x_q> - y_q)^2, >= 0.

    **Returns:** the risk as a float (no factor 1/2).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    d = lam.shape[0]
    a = check_vector(a_D, "a_D", d)
    sig = check_psd(Sigma_xy, "Sigma_xy", d)
    best = check_real(best_linear_error, "best_linear_error", nonnegative=True)
    w, v, gv = _gamma_parts(lam, n)
    ac = v.T @ a  # coordinates in the eigenbasis
    sc = np.diag(v.T @ sig @ v)
    tr = float(np.sum(w))
    variance = float(np.sum(sc * w / gv**2)) / m
    bias = (
        float(np.sum(ac**2 * w**3 / gv**2))
        + 2.0 * tr * float(np.sum(ac**2 * w**2 / gv**2))
        + tr * tr * float(np.sum(ac**2 * w / gv**2))
    ) / n**2
    return best + variance + bias


def fixed_task_risk(
    w: Float[ArrayLike, " d"], Lambda: Float[ArrayLike, "d d"], N: int, M: int
) -> float:
    """Test risk of the trained layer for a fixed noiseless task w (theory.md §7.2; [ZFB eq. 4.6]).

    E(y_hat - w^T x_q)^2 =
        (1/M)[||w||^2_{Gamma^{-2}Lambda^3} + tr(Gamma^{-2}Lambda^2) ||w||^2_Lambda]
      + (1/N^2)[||w||^2_{Gamma^{-2}Lambda^3} + 2 tr(Lambda) ||w||^2_{Gamma^{-2}Lambda^2}
                + tr(Lambda)^2 ||w||^2_{Gamma^{-2}Lambda}].

    **Arguments:**

    - `w`: the task vector, shape (d,).
    - `Lambda`: training (= test) covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.

    **Returns:** the risk as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    wv = check_vector(w, "w", lam.shape[0])
    g_inv = _gamma_inv(lam, n)
    g2 = g_inv @ g_inv
    lam2 = lam @ lam
    tr = float(np.trace(lam))

    def q(a: np.ndarray) -> float:
        return float(wv @ a @ wv)

    n3, n2, n1 = q(g2 @ lam2 @ lam), q(g2 @ lam2), q(g2 @ lam)
    return (n3 + float(np.trace(g2 @ lam2)) * q(lam)) / m + (
        n3 + 2.0 * tr * n2 + tr * tr * n1
    ) / n**2


def theorem42_average_bound(Lambda: Float[ArrayLike, "d d"], N: int, M: int) -> tuple[float, float]:
    """The paper's upper bounds on the task-averaged risk [ZFB Thm 4.2, Cor. 4.3] (theory.md §7.3).

    bound   = (d+1) tr(Lambda)/M + (1/N^2)[tr Lambda + 2d tr Lambda + tr(Lambda^{-1}) tr(Lambda)^2],
    coarser = (d+1) tr(Lambda)/M + (1 + 2d + d^2 kappa) tr(Lambda)/N^2,
    with kappa the condition number of Lambda; R(N, M) <= bound <= coarser.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.

    **Returns:** the pair (bound, coarser_bound).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    d = lam.shape[0]
    w = np.linalg.eigvalsh(lam)
    tr = float(np.sum(w))
    kappa = float(w[-1] / w[0])
    var = (d + 1.0) * tr / m
    bound = var + (tr + 2.0 * d * tr + float(np.sum(1.0 / w)) * tr * tr) / n**2
    coarser = var + (1.0 + 2.0 * d + d * d * kappa) * tr / n**2
    return bound, coarser


def corollary43_epsilon(Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """In-context learning error level of [ZFB Cor. 4.3] (theory.md §6).

    epsilon = (1 + 2d + d^2 kappa) tr(Lambda) / N^2, kappa the condition number of Lambda.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** epsilon as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    d = lam.shape[0]
    w = np.linalg.eigvalsh(lam)
    kappa = float(w[-1] / w[0])
    return (1.0 + 2.0 * d + d * d * kappa) * float(np.sum(w)) / n**2


# ----------------------------------------------------------------------------------------------
# §8.3–§8.4: predictors linear in h under distribution shift


def prompt_moment(
    Lambda_x: Float[ArrayLike, "d d"], Sigma_w: Float[ArrayLike, "d d"], s2: float, M: int
) -> Float[np.ndarray, "d d"]:
    """Second moment E[h h^T] of the prompt moment vector (theory.md §8.3 [DERIVED]).

    E[h h^T] = (1 + 1/M) Lambda_x Sigma_w Lambda_x + ((tr(Lambda_x Sigma_w) + s^2)/M) Lambda_x, for
    h = (1/M) sum_i y_i x_i, x_i ~ N(0, Lambda_x), y_i = w^T x_i + eps_i, E[w w^T] = Sigma_w.

    **Arguments:**

    - `Lambda_x`: test prompt covariance, symmetric positive definite, shape (d, d).
    - `Sigma_w`: task second moment E[w w^T], symmetric positive semi-definite, shape (d, d).
    - `s2`: label-noise variance, >= 0.
    - `M`: test prompt length, an integer >= 1.

    **Returns:** E[h h^T], shape (d, d).
    """
    lx = check_spd(Lambda_x, "Lambda_x")
    sw = check_psd(Sigma_w, "Sigma_w", lx.shape[0])
    s = check_real(s2, "s2", nonnegative=True)
    m = check_int(M, "M")
    return _ehh(lx, sw, s, m)


def shift_risk(
    G: Float[ArrayLike, "d d"],
    Lambda_x: Float[ArrayLike, "d d"],
    Omega: Float[ArrayLike, "d d"],
    Sigma_w: Float[ArrayLike, "d d"],
    s2: float,
    M: int,
    noisy_target: bool = False,
) -> float:
    """Exact risk of y_hat = h^T G x_q under any shift (theory.md §8.3 [DERIVED]).

    R = tr(G Omega G^T E[h h^T]) - 2 tr(Omega G^T Lambda_x Sigma_w) + tr(Omega Sigma_w)
        [+ s^2 if the target is y_q = w^T x_q + eps_q],
    with Gaussian prompt covariates x_i ~ N(0, Lambda_x), any task law with E[w w^T] = Sigma_w, and
    any query law with E[x_q x_q^T] = Omega. The trained layer has G = Gamma^{-1}(Lambda, N).

    **Arguments:**

    - `G`: the preconditioner, shape (d, d) (need not be symmetric).
    - `Lambda_x`: test prompt covariance, symmetric positive definite, shape (d, d).
    - `Omega`: query second moment, symmetric positive semi-definite, shape (d, d).
    - `Sigma_w`: task second moment, symmetric positive semi-definite, shape (d, d).
    - `s2`: label-noise variance, >= 0.
    - `M`: test prompt length, an integer >= 1.
    - `noisy_target`: if True the target carries the label noise too (adds s^2).

    **Returns:** the risk as a float (no factor 1/2).
    """
    lx = check_spd(Lambda_x, "Lambda_x")
    d = lx.shape[0]
    Ga = check_square(G, "G", d)
    om = check_psd(Omega, "Omega", d)
    sw = check_psd(Sigma_w, "Sigma_w", d)
    s = check_real(s2, "s2", nonnegative=True)
    m = check_int(M, "M")
    ehh = _ehh(lx, sw, s, m)
    out = (
        float(np.trace(Ga @ om @ Ga.T @ ehh))
        - 2.0 * float(np.trace(om @ Ga.T @ lx @ sw))
        + float(np.trace(om @ sw))
    )
    return out + (s if noisy_target else 0.0)


def shift_risk_limit(
    G: Float[ArrayLike, "d d"],
    Lambda_x: Float[ArrayLike, "d d"],
    Omega: Float[ArrayLike, "d d"],
    Sigma_w: Float[ArrayLike, "d d"],
) -> float:
    """The M -> infinity limit of `shift_risk` (theory.md §8.3 [DERIVED]).

    R -> tr(Omega (G^T Lambda_x - I) Sigma_w (Lambda_x G - I)) (clean target).

    **Arguments:**

    - `G`: the preconditioner, shape (d, d).
    - `Lambda_x`: test prompt covariance, symmetric positive definite, shape (d, d).
    - `Omega`: query second moment, symmetric positive semi-definite, shape (d, d).
    - `Sigma_w`: task second moment, symmetric positive semi-definite, shape (d, d).

    **Returns:** the limit as a float.
    """
    lx = check_spd(Lambda_x, "Lambda_x")
    d = lx.shape[0]
    Ga = check_square(G, "G", d)
    om = check_psd(Omega, "Omega", d)
    sw = check_psd(Sigma_w, "Sigma_w", d)
    eye = np.eye(d)
    return float(np.trace(om @ (Ga.T @ lx - eye) @ sw @ (lx @ Ga - eye)))


def optimal_preconditioner(
    Lambda_x: Float[ArrayLike, "d d"], Sigma_w: Float[ArrayLike, "d d"], s2: float, M: int
) -> Float[np.ndarray, "d d"]:
    """Minimiser over G of the shift risk (theory.md §8.4 [DERIVED]).

    G* = E[h h^T]^{-1} Lambda_x Sigma_w, whatever the query law. With Lambda_x = Lambda,
    Sigma_w = I, s2 = 0 and M = N this is Gamma^{-1} (a second route to ZFB Lemma 5.3).

    **Arguments:**

    - `Lambda_x`: test prompt covariance, symmetric positive definite, shape (d, d).
    - `Sigma_w`: task second moment, symmetric positive semi-definite, shape (d, d).
    - `s2`: label-noise variance, >= 0.
    - `M`: test prompt length, an integer >= 1.

    **Returns:** G*, shape (d, d).
    """
    lx = check_spd(Lambda_x, "Lambda_x")
    sw = check_psd(Sigma_w, "Sigma_w", lx.shape[0])
    s = check_real(s2, "s2", nonnegative=True)
    m = check_int(M, "M")
    if not float(np.trace(lx @ sw)) + s > 0.0:
        raise ValueError(
            "E[h h^T] is singular because Sigma_w = 0 and s2 = 0; "
            "pass a non-zero Sigma_w or s2 > 0."
        )
    return np.linalg.solve(_ehh(lx, sw, s, m), lx @ sw)


# ----------------------------------------------------------------------------------------------
# §8.5: named cases for the trained layer G = Gamma^{-1}(Lambda, N)


def task_shift_risk(
    Lambda: Float[ArrayLike, "d d"],
    N: int,
    M: int,
    Sigma_w: Float[ArrayLike, "d d"],
    s2: float = 0.0,
    noisy_target: bool = False,
) -> float:
    """Exact risk of the trained layer under task shift (theory.md §8.5 [DERIVED]; [ZFB Sec. 4.2]).

    Prompt and query ~ N(0, Lambda) as in training; the task has any law with E[w w^T] = Sigma_w,
    and labels carry noise of variance s2. In the eigenbasis of Lambda (eigenvalues l_i, Gamma
    eigenvalues g_i, S = V^T Sigma_w V):
    R = sum_i (l_i/g_i^2)[(1+1/M) l_i^2 S_ii + (tr(Lambda Sigma_w) + s^2) l_i / M]
        - 2 sum_i (l_i^2/g_i) S_ii + tr(Lambda Sigma_w) [+ s^2 for a noisy target].
    Label noise adds s^2 tr(Gamma^{-2} Lambda^2)/M.

    **Arguments:**

    - `Lambda`: training (= test) covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.
    - `Sigma_w`: task second moment, symmetric positive semi-definite, shape (d, d).
    - `s2`: label-noise variance, >= 0.
    - `noisy_target`: if True the target carries the label noise too (adds s^2).

    **Returns:** the risk as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    sw = check_psd(Sigma_w, "Sigma_w", lam.shape[0])
    s = check_real(s2, "s2", nonnegative=True)
    w, v, gv = _gamma_parts(lam, n)
    sd = np.diag(v.T @ sw @ v)
    tls = float(np.sum(w * sd))
    quad = float(np.sum(w / gv**2 * ((1.0 + 1.0 / m) * w**2 * sd + (tls + s) * w / m)))
    cross = float(np.sum(w**2 / gv * sd))
    return quad - 2.0 * cross + tls + (s if noisy_target else 0.0)


def query_shift_risk(
    Lambda: Float[ArrayLike, "d d"], N: int, M: int, Omega: Float[ArrayLike, "d d"]
) -> float:
    """Exact risk of the trained layer under query shift (theory.md §8.5 [DERIVED]; [ZFB eq. 4.8]).

    Prompt x_i ~ N(0, Lambda), w ~ N(0, I) (or any law with E[w w^T] = I), no noise, and a query
    with any law of second moment Omega:
    R = tr(Gamma^{-1} Omega Gamma^{-1} [(1+1/M) Lambda^2 + (tr Lambda / M) Lambda])
        - 2 tr(Omega Gamma^{-1} Lambda) + tr Omega.

    **Arguments:**

    - `Lambda`: training (= test prompt) covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.
    - `Omega`: query second moment, symmetric positive semi-definite, shape (d, d).

    **Returns:** the risk as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    om = check_psd(Omega, "Omega", lam.shape[0])
    gi = _gamma_inv(lam, n)
    inner = (1.0 + 1.0 / m) * lam @ lam + (float(np.trace(lam)) / m) * lam
    return (
        float(np.trace(gi @ om @ gi @ inner))
        - 2.0 * float(np.trace(om @ gi @ lam))
        + float(np.trace(om))
    )


def covariate_shift_risk(
    Lambda: Float[ArrayLike, "d d"], N: int, M: int, Omega: Float[ArrayLike, "d d"]
) -> float:
    """Exact risk of the trained layer under covariate shift (§8.5 [DERIVED]; [ZFB Sec. 4.2]).

    Prompt and query both ~ N(0, Omega), w ~ N(0, I), no noise; G = Gamma^{-1}(Lambda, N):
    R = tr(Gamma^{-1} Omega Gamma^{-1} [(1+1/M) Omega^2 + (tr Omega / M) Omega])
        - 2 tr(Gamma^{-1} Omega^2) + tr Omega.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.
    - `Omega`: test covariance of prompt and query, symmetric positive definite, shape (d, d).

    **Returns:** the risk as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    om = check_spd(Omega, "Omega", lam.shape[0])
    gi = _gamma_inv(lam, n)
    inner = (1.0 + 1.0 / m) * om @ om + (float(np.trace(om)) / m) * om
    return (
        float(np.trace(gi @ om @ gi @ inner))
        - 2.0 * float(np.trace(gi @ om @ om))
        + float(np.trace(om))
    )


def covariate_scaling_risk(Lambda: Float[ArrayLike, "d d"], N: int, M: int, c: float) -> float:
    """Exact risk of the trained layer when test covariates are scaled by c (theory.md §8.5).

    Covariate shift with Omega = c^2 Lambda ([ZFB Sec. 4.2]; [DERIVED] finite-(N, M) form). In the
    eigenbasis of Lambda (l_i, Gamma eigenvalues g_i, o_i = c^2 l_i):
    R = sum_i (o_i/g_i^2)[(1+1/M) o_i^2 + (sum_j o_j) o_i / M] - 2 sum_i o_i^2/g_i + sum_i o_i.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.
    - `c`: the scale factor, > 0.

    **Returns:** the risk as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    m = check_int(M, "M")
    cc = check_real(c, "c", positive=True)
    w, _, gv = _gamma_parts(lam, n)
    o = cc * cc * w
    quad = float(np.sum(o / gv**2 * ((1.0 + 1.0 / m) * o**2 + float(np.sum(o)) * o / m)))
    return quad - 2.0 * float(np.sum(o**2 / gv)) + float(np.sum(o))


def covariate_scaling_risk_isotropic(d: int, N: int, M: int, c: float) -> float:
    """Covariate-scaling risk for Lambda = I (theory.md §8.5, isotropic finite-(N, M) [DERIVED]).

    With g = 1 + (d+1)/N: R = c^2 d [c^4 (1 + (d+1)/M)/g^2 - 2c^2/g + 1].

    **Arguments:**

    - `d`: input dimension, an integer >= 1.
    - `N`: training prompt length, an integer >= 1.
    - `M`: test prompt length, an integer >= 1.
    - `c`: the scale factor, > 0.

    **Returns:** the risk as a float.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    m = check_int(M, "M")
    cc = check_real(c, "c", positive=True)
    g = 1.0 + (dd + 1.0) / n
    c2 = cc * cc
    return c2 * dd * (c2 * c2 * (1.0 + (dd + 1.0) / m) / g**2 - 2.0 * c2 / g + 1.0)


def covariate_scaling_limit(Lambda: Float[ArrayLike, "d d"], c: float) -> float:
    """The M, N -> infinity limit of the covariate-scaling risk (theory.md §8.5; [ZFB Sec. 4.2]).

    R -> c^2 (c^2 - 1)^2 tr Lambda; relative to the target variance c^2 tr Lambda, (c^2 - 1)^2.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `c`: the scale factor, > 0.

    **Returns:** the limit as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    cc = check_real(c, "c", positive=True)
    return cc * cc * (cc * cc - 1.0) ** 2 * float(np.trace(lam))


# ----------------------------------------------------------------------------------------------
# §8.6–§8.7: noisy training and baselines


def noisy_training_minimiser(
    Lambda: Float[ArrayLike, "d d"], N: int, s2: float
) -> Float[np.ndarray, "d d"]:
    """Minimiser of the training loss with label noise (theory.md §8.6 [DERIVED; not in ZFB]).

    G* = (Gamma + (s^2/N) I)^{-1}; in the isotropic case a GD step of size N/(N + d + 1 + s^2).

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.
    - `s2`: training label-noise variance, >= 0.

    **Returns:** G*, shape (d, d).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    s = check_real(s2, "s2", nonnegative=True)
    _, v, gv = _gamma_parts(lam, n)
    out = (v / (gv + s / n)) @ v.T
    return 0.5 * (out + out.T)


def ols_risk(
    s2: float, Omega: Float[ArrayLike, "d d"], Lambda_x: Float[ArrayLike, "d d"], M: int
) -> float:
    """Risk of ordinary least squares on a Gaussian design (theory.md §8.7; classical).

    s^2 tr(Omega Lambda_x^{-1}) / (M - d - 1) against the clean target w^T x_q (add s^2 for a noisy
    target). Requires M >= d + 2.

    **Arguments:**

    - `s2`: label-noise variance, >= 0.
    - `Omega`: query second moment, symmetric positive semi-definite, shape (d, d).
    - `Lambda_x`: prompt covariance, symmetric positive definite, shape (d, d).
    - `M`: prompt length, an integer >= d + 2.

    **Returns:** the risk as a float.
    """
    lx = check_spd(Lambda_x, "Lambda_x")
    d = lx.shape[0]
    om = check_psd(Omega, "Omega", d)
    s = check_real(s2, "s2", nonnegative=True)
    m = check_int(M, "M")
    if m < d + 2:
        raise ValueError(
            f"M must be >= d + 2 = {d + 2} for the OLS risk to be finite, got M = {m}."
        )
    return s * float(np.trace(np.linalg.solve(lx, om))) / (m - d - 1.0)


def minnorm_ols_risk(d: int, M: int, tau2: float, s2: float) -> float:
    """Risk of min-norm least squares, Lambda = I, w ~ (0, tau^2 I) (theory.md §8.7; classical).

    tau^2 (d - M) + s^2 M / (d - M - 1) against the clean target. Requires 1 <= M <= d - 2.

    **Arguments:**

    - `d`: input dimension, an integer >= 3.
    - `M`: prompt length, an integer with 1 <= M <= d - 2.
    - `tau2`: prior variance of each task coordinate, >= 0.
    - `s2`: label-noise variance, >= 0.

    **Returns:** the risk as a float.
    """
    dd = check_int(d, "d")
    m = check_int(M, "M")
    t = check_real(tau2, "tau2", nonnegative=True)
    s = check_real(s2, "s2", nonnegative=True)
    if m > dd - 2:
        raise ValueError(
            f"M must be <= d - 2 = {dd - 2} for the min-norm OLS risk to be finite, got M = {m}."
        )
    return t * (dd - m) + s * m / (dd - m - 1.0)
