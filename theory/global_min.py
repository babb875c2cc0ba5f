"""Closed forms for gradient flow on the population loss of one LSA layer (ZFB §3–§5).

All functions follow theory.md §3–§4: `Gamma` is built from the **training** prompt length `N`
and covariance `Lambda`; the population training loss `L` carries the factor 1/2; the reduced
loss `l~` satisfies `L = l~ + tr(Lambda)/2` on the manifold a = b = 0. Plain numpy/scipy, float64.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

from theory._validate import (
    check_finite_array,
    check_int,
    check_real,
    check_spd,
    check_square,
    check_theta,
)

__all__ = [
    "conserved_quantity",
    "gamma",
    "init_loss_bound",
    "isotropic_limit",
    "limit_reduced",
    "limit_weights",
    "linearised_rates",
    "loss_gap",
    "min_loss",
    "min_loss_isotropic",
    "mu_min",
    "pl_constant",
    "pl_envelope",
    "plateau_escape_time",
    "reduced_loss",
    "reduced_loss_grad",
    "sigma_max",
    "u_min",
]


# ----------------------------------------------------------------------------------------------
# private helpers (inputs already validated)


def _eig(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix."""
    w, v = np.linalg.eigh(lam)
    return w, v


def _gamma_eigs(w: np.ndarray, n: int) -> np.ndarray:
    """Eigenvalues of Gamma in the eigenbasis of Lambda (Gamma and Lambda commute)."""
    return (1.0 + 1.0 / n) * w + np.sum(w) / n


def _from_eigs(v: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """The symmetric matrix V diag(vals) V^T."""
    out = (v * vals) @ v.T
    return 0.5 * (out + out.T)


def _gamma_matrix(lam: np.ndarray, n: int) -> np.ndarray:
    d = lam.shape[0]
    return (1.0 + 1.0 / n) * lam + (np.trace(lam) / n) * np.eye(d)


def _gamma_op(lam: np.ndarray, n: int) -> float:
    w = np.linalg.eigvalsh(lam)
    return float(np.max(_gamma_eigs(w, n)))


def _check_reduced_point(U: ArrayLike, u: object, d: int | None = None) -> tuple[np.ndarray, float]:
    Ua = check_square(U, "U", d)
    ua = check_real(u, "u")
    return Ua, ua


def _check_sigma_below_max(sigma: float, lam: np.ndarray, n: int) -> None:
    smax = float(np.sqrt(2.0 / (np.sqrt(lam.shape[0]) * _gamma_op(lam, n))))
    if not sigma < smax:
        raise ValueError(
            f"sigma = {sigma:.6g} must be < sigma_max = {smax:.6g} (Theorem 4.1, "
            f"sigma^2 sqrt(d) ||Gamma||_op < 2); pass a smaller sigma."
        )


# ----------------------------------------------------------------------------------------------
# §3: Gamma, sigma_max and the limit of Theorem 4.1


def gamma(Lambda: Float[ArrayLike, "d d"], N: int) -> Float[np.ndarray, "d d"]:
    """The matrix Gamma of [ZFB Thm 4.1] (theory.md §3).

    Gamma = (1 + 1/N) Lambda + (tr(Lambda)/N) I_d, always built from the **training** prompt length
    `N` and the training covariance `Lambda`.

    **Arguments:**

    - `Lambda`: training covariance of the inputs, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** Gamma, shape (d, d).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    return _gamma_matrix(lam, n)


def sigma_max(Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """Largest initialisation scale allowed by [ZFB Thm 4.1] (theory.md §3).

    sigma_max = sqrt(2 / (sqrt(d) ||Gamma||_op)); Theorem 4.1 needs sigma < sigma_max.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** sigma_max as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    return float(np.sqrt(2.0 / (np.sqrt(lam.shape[0]) * _gamma_op(lam, n))))


def limit_reduced(
    Lambda: Float[ArrayLike, "d d"], N: int
) -> tuple[float, Float[np.ndarray, "d d"]]:
    """The balanced limit (u*, U*) of gradient flow [ZFB Thm 4.1, eqs. 4.1 and 5.9] (theory.md §3).

    u* = ||Gamma^{-1}||_F^{1/2} and U* = Gamma^{-1} / ||Gamma^{-1}||_F^{1/2}, so u* U* = Gamma^{-1}
    and u*^2 = ||U*||_F^2.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:**

    - `u_star`: the limit of u = w^PV_22 (float).
    - `U_star`: the limit of U = W^KQ_11, shape (d, d).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    w, v = _eig(lam)
    inv_g = 1.0 / _gamma_eigs(w, n)
    u_star = float(np.sqrt(np.sqrt(np.sum(inv_g**2))))
    U_star = _from_eigs(v, inv_g / u_star)
    return u_star, U_star


def limit_weights(
    Lambda: Float[ArrayLike, "d d"], N: int
) -> tuple[Float[np.ndarray, "d+1 d+1"], Float[np.ndarray, "d+1 d+1"]]:
    """The limiting LSA weights (W^PV_*, W^KQ_*) of [ZFB Thm 4.1, eq. 4.1] (theory.md §3).

    W^KQ_* = [tr(Gamma^{-2})]^{-1/4} [[Gamma^{-1}, 0], [0, 0]] and
    W^PV_* = [tr(Gamma^{-2})]^{+1/4} [[0, 0], [0, 1]]. All other blocks are zero.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the pair **(W_PV, W_KQ)**, in this order, each of shape (d+1, d+1).
    """
    u_star, U_star = limit_reduced(Lambda, N)
    d = U_star.shape[0]
    W_PV = np.zeros((d + 1, d + 1))
    W_PV[d, d] = u_star
    W_KQ = np.zeros((d + 1, d + 1))
    W_KQ[:d, :d] = U_star
    return W_PV, W_KQ


def isotropic_limit(d: int, N: int) -> tuple[float, float]:
    """The limit of [ZFB Thm 4.1] for Lambda = I (theory.md §3, isotropic case [DERIVED]).

    With g = 1 + (d+1)/N: W^KQ_11 = d^{-1/4} g^{-1/2} I_d and W^PV_22 = d^{1/4} g^{-1/2}.

    **Arguments:**

    - `d`: input dimension, an integer >= 1.
    - `N`: training prompt length, an integer >= 1.

    **Returns:**

    - `kq_scale`: the scalar multiplying I_d in W^KQ_11.
    - `pv_scale`: the entry W^PV_22.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    g = 1.0 + (dd + 1.0) / n
    return float(dd**-0.25 * g**-0.5), float(dd**0.25 * g**-0.5)


# ----------------------------------------------------------------------------------------------
# §4.3–§4.5: reduced loss, gradient, minimum, gap identity, conserved quantity


def reduced_loss(
    U: Float[ArrayLike, "d d"], u: float, Lambda: Float[ArrayLike, "d d"], N: int
) -> float:
    """Population training loss L on the manifold a = b = 0 [ZFB Lemma A.1, eq. 5.5] (§4.3).

    L(U, u) = (1/2)[u^2 tr(Gamma Lambda U Lambda U^T) - 2u tr(Lambda^2 U^T) + tr Lambda]
            = l~(U, u) + tr(Lambda)/2   (with the factor 1/2 of eq. 3.8).

    **Arguments:**

    - `U`: the block W^KQ_11, shape (d, d) (need not be symmetric).
    - `u`: the entry w^PV_22.
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** L(U, u) as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    Ua, ua = _check_reduced_point(U, u, lam.shape[0])
    g = _gamma_matrix(lam, n)
    quad = float(np.trace(g @ lam @ Ua @ lam @ Ua.T))
    lin = float(np.sum((lam @ lam) * Ua))
    return 0.5 * (ua * ua * quad - 2.0 * ua * lin + float(np.trace(lam)))


def reduced_loss_grad(
    U: Float[ArrayLike, "d d"], u: float, Lambda: Float[ArrayLike, "d d"], N: int
) -> tuple[Float[np.ndarray, "d d"], float]:
    """Gradient of the reduced loss [ZFB Lemma 5.2, eq. 5.4] (theory.md §4.3).

    dL/dU = u^2 Gamma Lambda U Lambda - u Lambda^2 and
    dL/du = u tr(Gamma Lambda U Lambda U^T) - tr(Lambda^2 U^T). The ODE of Lemma 5.2 is
    (dU/dt, du/dt) = -(dL/dU, dL/du).

    **Arguments:**

    - `U`: the block W^KQ_11, shape (d, d).
    - `u`: the entry w^PV_22.
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:**

    - `dL_dU`: shape (d, d).
    - `dL_du`: float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    Ua, ua = _check_reduced_point(U, u, lam.shape[0])
    g = _gamma_matrix(lam, n)
    lam2 = lam @ lam
    glul = g @ lam @ Ua @ lam
    dU = ua * ua * glul - ua * lam2
    du = ua * float(np.sum(glul * Ua)) - float(np.sum(lam2 * Ua))
    return dU, du


def min_loss(Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """Global minimum of the population loss [ZFB Cor. A.2, Lemma 5.3] (theory.md §4.4).

    min L = (1/2)[tr Lambda - tr(Lambda^2 Gamma^{-1})], attained exactly when u U = Gamma^{-1}.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** min L as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    w = np.linalg.eigvalsh(lam)
    return float(0.5 * (np.sum(w) - np.sum(w**2 / _gamma_eigs(w, n))))


def min_loss_isotropic(d: int, N: int) -> float:
    """Global minimum of the population loss for Lambda = I [ZFB Lemma 5.3] (theory.md §4.4).

    min L = d(d+1) / (2(N+d+1)).

    **Arguments:**

    - `d`: input dimension, an integer >= 1.
    - `N`: training prompt length, an integer >= 1.

    **Returns:** min L as a float.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    return dd * (dd + 1.0) / (2.0 * (n + dd + 1.0))


def loss_gap(
    U: Float[ArrayLike, "d d"], u: float, Lambda: Float[ArrayLike, "d d"], N: int
) -> float:
    """Distance to the minimum, l~ - min l~, by the gap identity [ZFB Lemma 5.3] (theory.md §4.4).

    l~ - min l~ = (1/2) ||Gamma^{1/2} (u Lambda^{1/2} U Lambda^{1/2} - Lambda Gamma^{-1})||_F^2,
    with symmetric square roots from an eigendecomposition of Lambda.

    **Arguments:**

    - `U`: the block W^KQ_11, shape (d, d).
    - `u`: the entry w^PV_22.
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the gap (>= 0) as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    Ua, ua = _check_reduced_point(U, u, lam.shape[0])
    w, v = _eig(lam)
    gv = _gamma_eigs(w, n)
    lam_half = _from_eigs(v, np.sqrt(w))
    g_half = _from_eigs(v, np.sqrt(gv))
    target = _from_eigs(v, w / gv)
    resid = g_half @ (ua * lam_half @ Ua @ lam_half - target)
    return 0.5 * float(np.sum(resid * resid))


def conserved_quantity(U: Float[ArrayLike, "d d"], u: float) -> float:
    """The conserved quantity u^2 - ||U||_F^2 of the reduced flow [ZFB Lemma A.3] (theory.md §4.5).

    It is constant along the ODE of Lemma 5.2 from any start, and 0 (balancedness) from the
    initialisation of Assumption 3.3.

    **Arguments:**

    - `U`: the block W^KQ_11, shape (d, d).
    - `u`: the entry w^PV_22.

    **Returns:** u^2 - ||U||_F^2 as a float.
    """
    Ua, ua = _check_reduced_point(U, u)
    return ua * ua - float(np.sum(Ua * Ua))


# ----------------------------------------------------------------------------------------------
# §4.6–§4.8: initial loss, lower bound on u, PL constant


def init_loss_bound(
    sigma: float, Theta: Float[ArrayLike, "d d"], Lambda: Float[ArrayLike, "d d"], N: int
) -> float:
    """Upper bound on the reduced loss at the initialisation [ZFB Lemma A.4] (theory.md §4.6).

    l~(0) <= (sigma^2/2) ||Lambda Theta||_F^2 [sqrt(d) sigma^2 ||Gamma||_op - 2]. The bound is on
    the reduced loss l~ (the loss **without** tr(Lambda)/2) at u = sigma, U = sigma Theta Theta^T;
    it is negative when sigma < sigma_max.

    **Arguments:**

    - `sigma`: initialisation scale, > 0.
    - `Theta`: initialisation direction with ||Theta Theta^T||_F = 1, shape (d, d).
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the bound as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    s = check_real(sigma, "sigma", positive=True)
    th = check_theta(Theta, lam.shape[0])
    d = lam.shape[0]
    lt = float(np.sum((lam @ th) ** 2))
    return 0.5 * s * s * lt * (np.sqrt(d) * s * s * _gamma_op(lam, n) - 2.0)


def u_min(
    sigma: float, Theta: Float[ArrayLike, "d d"], Lambda: Float[ArrayLike, "d d"], N: int
) -> float:
    """Lower bound on u(t) along the flow [ZFB Lemma A.5; RECONSTRUCTED] (theory.md §4.7).

    u(t)^2 >= u_min^2 = sigma^2 ||Lambda Theta||_F^2 (2 - sqrt(d) sigma^2 ||Gamma||_op)
    / (2 sqrt(d) ||Lambda||_op^2) for all t >= 0. Requires sigma < sigma_max.

    **Arguments:**

    - `sigma`: initialisation scale, 0 < sigma < sigma_max.
    - `Theta`: initialisation direction with ||Theta Theta^T||_F = 1, shape (d, d).
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** u_min (the bound on u itself, not squared) as a float.
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    s = check_real(sigma, "sigma", positive=True)
    th = check_theta(Theta, lam.shape[0])
    _check_sigma_below_max(s, lam, n)
    d = lam.shape[0]
    lt = float(np.sum((lam @ th) ** 2))
    lam_op = float(np.max(np.linalg.eigvalsh(lam)))
    num = s * s * lt * (2.0 - np.sqrt(d) * s * s * _gamma_op(lam, n))
    return float(np.sqrt(num / (2.0 * np.sqrt(d) * lam_op**2)))


def pl_constant(
    sigma: float, Theta: Float[ArrayLike, "d d"], Lambda: Float[ArrayLike, "d d"], N: int
) -> float:
    """PL constant mu of [ZFB Lemma 5.4, eq. 5.7; RECONSTRUCTED] (theory.md §4.8).

    ||grad l~||^2 >= mu (l~ - min l~) along the flow, with
    mu = 2 u_min^2 / (tr(Lambda^{-1} Gamma^{-1}) tr(Lambda^{-1})). A worst-case (loose) constant.

    **Arguments:**

    - `sigma`: initialisation scale, 0 < sigma < sigma_max.
    - `Theta`: initialisation direction with ||Theta Theta^T||_F = 1, shape (d, d).
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** mu as a float.
    """
    um = u_min(sigma, Theta, Lambda, N)
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    w = np.linalg.eigvalsh(lam)
    t1 = float(np.sum(1.0 / (w * _gamma_eigs(w, n))))
    t2 = float(np.sum(1.0 / w))
    return 2.0 * um * um / (t1 * t2)


def pl_envelope(t: Float[ArrayLike, "*T"], gap0: float, mu: float) -> Float[np.ndarray, "*T"]:
    """The PL envelope exp(-mu t) gap0 [ZFB Lemma 5.4, eq. 5.8] (theory.md §4.8).

    l~(t) - min l~ <= exp(-mu t) (l~(0) - min l~) for the mu of `pl_constant`.

    **Arguments:**

    - `t`: times >= 0, any shape.
    - `gap0`: the initial gap l~(0) - min l~, >= 0.
    - `mu`: the PL constant, >= 0.

    **Returns:** the envelope, same shape as `t`.
    """
    ta = check_finite_array(t, "t")
    if np.any(ta < 0):
        raise ValueError("t must be >= 0 (times along the flow).")
    g0 = check_real(gap0, "gap0", nonnegative=True)
    m = check_real(mu, "mu", nonnegative=True)
    return np.exp(-m * ta) * g0


def plateau_escape_time(sigma: float, Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """Heuristic time for the flow to leave the small-initialisation plateau.

    t_escape ~ ln(u*/sigma) / ||Lambda^2||_F. This is a **solver-notes heuristic**, not a
    statement of ZFB: near the origin (U, u) grow like exp(||Lambda^2||_F t) (the linear part of the
    Lemma 5.2 ODE, theory.md §4.2), so growing from scale sigma to u* takes about that long. Use
    it only to choose integration horizons.

    **Arguments:**

    - `sigma`: initialisation scale, > 0.
    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the heuristic escape time (negative if sigma > u*).
    """
    s = check_real(sigma, "sigma", positive=True)
    u_star, _ = limit_reduced(Lambda, N)
    lam = check_spd(Lambda, "Lambda")
    return float(np.log(u_star / s) / np.linalg.norm(lam @ lam, "fro"))


# ----------------------------------------------------------------------------------------------
# linearisation of the Lemma 5.2 ODE at the balanced minimum


def _reduced_jacobian(lam: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Analytic Jacobian of the Lemma 5.2 right-hand side at (u*, U*), and the null direction.

    The state is x = (vec U, u) with row-major vec, so vec(A X B) = (A kron B^T) vec(X).
    Returns (J, n_hat) with J of shape (d^2+1, d^2+1) and n_hat the unit vector along
    (vec U*, -u*), the tangent of the minimiser manifold u U = Gamma^{-1}.
    """
    d = lam.shape[0]
    w, v = _eig(lam)
    gv = _gamma_eigs(w, n)
    inv_g = 1.0 / gv
    us = float(np.sqrt(np.sqrt(np.sum(inv_g**2))))
    Us = _from_eigs(v, inv_g / us)
    g = _from_eigs(v, gv)
    gl = g @ lam
    lam2 = lam @ lam
    glul = gl @ Us @ lam
    # F_U = -u^2 Gamma Lambda U Lambda + u Lambda^2
    # F_u = -u tr(Gamma Lambda U Lambda U^T) + tr(Lambda^2 U^T)
    j_uu_mat = -(us**2) * np.kron(gl, lam.T)  # dF_U / dvecU
    j_u_s = (-2.0 * us * glul + lam2).reshape(-1)  # dF_U / du
    j_s_u = (-2.0 * us * glul + lam2).reshape(-1)  # dF_u / dvecU (Gamma Lambda = Lambda Gamma)
    j_s_s = -float(np.sum(glul * Us))  # dF_u / du
    J = np.zeros((d * d + 1, d * d + 1))
    J[: d * d, : d * d] = j_uu_mat
    J[: d * d, d * d] = j_u_s
    J[d * d, : d * d] = j_s_u
    J[d * d, d * d] = j_s_s
    null = np.concatenate([Us.reshape(-1), [-us]])
    return J, null / np.linalg.norm(null)


def linearised_rates(Lambda: Float[ArrayLike, "d d"], N: int) -> Float[np.ndarray, " k"]:
    """Decay rates of the reduced flow linearised at the balanced minimum [DERIVED; ZFB Lemma 5.2].

    The ODE of [ZFB Lemma 5.2] (theory.md §4.2) is linearised at (u*, U*) of Theorem 4.1 with the
    analytic Jacobian J (size d^2 + 1) of (dU/dt, du/dt) with respect to (vec U, u). J = -Hess l~ is
    symmetric and has one zero eigenvalue, along the minimiser manifold u U = Gamma^{-1}; that
    direction, (U*, -u*), is also the normal of the balanced level set u^2 = ||U||_F^2. Restricting
    -J to the orthogonal complement (the tangent space of the balanced level set) leaves k = d^2
    positive rates.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the k = d^2 rates, sorted ascending, shape (k,).
    """
    lam = check_spd(Lambda, "Lambda")
    n = check_int(N, "N")
    J, null = _reduced_jacobian(lam, n)
    # orthonormal basis of the complement of the null direction
    q, _ = np.linalg.qr(np.column_stack([null, np.eye(null.size)]))
    basis = q[:, 1:]
    hess = -(basis.T @ J @ basis)
    rates = np.linalg.eigvalsh(0.5 * (hess + hess.T))
    return np.sort(rates)


def mu_min(Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """Smallest linearised decay rate at the balanced minimum [DERIVED from ZFB Lemma 5.2].

    The asymptotic local convergence rate of the reduced flow: `min(linearised_rates(Lambda, N))`.
    Compare with the worst-case PL constant of eq. 5.7 (`pl_constant`), which is much smaller.

    **Arguments:**

    - `Lambda`: training covariance, symmetric positive definite, shape (d, d).
    - `N`: training prompt length, an integer >= 1.

    **Returns:** the smallest rate as a float.
    """
    return float(linearised_rates(Lambda, N)[0])
