"""Training on random covariances: ZFB Def. 4.4, Theorem 4.5, App. C (theory.md §9).

Each prompt draws `Lambda_tau = diag(lambda_1 .. lambda_d)` with iid entries of a law with
moments `m1 = E lambda`, `m2 = E lambda^2`, `m3 = E lambda^3`; conditional on it the inputs and
the query are iid `N(0, Lambda_tau)`, and `w ~ N(0, I)`. Everything here depends on the law only
through `moments = (m1, m2, m3)` (default `(1, 2, 6)`: Exp(1), the paper's law).

Conventions (as in `theory.risk`): `Gamma_tau` uses the **training** length `N`; a test prompt of
length `M` is normalised by `M`; the test risk `R = E(y_hat - <w, x_q>)^2` has **no** factor 1/2;
a test covariance `c Lambda_new` means that `c` multiplies the covariance (it is the square of a
covariate scale `x -> sqrt(c) x`). A layer "linear in h" predicts `y_hat = h^T G x_q`,
`h = (1/M) sum_i y_i x_i`; the layer trained on random covariances has `G = g I` with
`g = beta / alpha` (Cor. C.2, eq. C.8).

Plain numpy, float64; never imports `lsa` or `simulations`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

from theory._validate import check_int, check_real, check_spd, check_square

__all__ = [
    "EXP1_MOMENTS",
    "OneThird",
    "RandomCovarianceCoefficients",
    "average_implicit_map",
    "check_moments",
    "fixed_test_risk",
    "fixed_trained_random_risk",
    "initial_loss_sigma_bound",
    "one_third_statements",
    "random_covariance_coefficients",
    "random_covariance_limit_risk",
    "random_covariance_limits",
    "random_covariance_loss",
    "random_covariance_min_loss",
    "random_covariance_minimum",
    "random_covariance_risk",
    "random_test_risk",
    "random_trained_fixed_risk",
    "regression_slope",
    "risk_per_dimension",
    "theorem45_numerators",
    "theorem45_sigma_bounds",
]

#: Moments `(E lambda, E lambda^2, E lambda^3)` of Exp(1), the law of ZFB's Figure 1.
EXP1_MOMENTS: tuple[float, float, float] = (1.0, 2.0, 6.0)


def check_moments(moments: object) -> tuple[float, float, float]:
    """Validate the first three moments `(m1, m2, m3)` of a law of strictly positive entries.

    A positive random variable has `m1, m2, m3 > 0`, `m2 >= m1^2` (Jensen: the variance is
    `>= 0`) and `m1 m3 >= m2^2` (Cauchy-Schwarz: `E[l^{1/2} l^{3/2}]^2 <= E[l] E[l^3]`). Equality
    (to a relative `1e-12`) is allowed: it is a point mass.

    **Arguments:** `moments`, a sequence of three finite numbers.

    **Returns:** `(m1, m2, m3)` as floats. Raises `ValueError` naming the violated condition.
    """
    try:
        vals = [float(v) for v in moments]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"moments must be a sequence (m1, m2, m3) of three numbers, got {moments!r}; "
            "pass e.g. (1.0, 2.0, 6.0) for Exp(1)."
        ) from exc
    if len(vals) != 3:
        raise ValueError(
            f"moments must have exactly three entries (m1, m2, m3) = (E l, E l^2, E l^3), got "
            f"{len(vals)}; pass e.g. (1.0, 2.0, 6.0) for Exp(1)."
        )
    m1, m2, m3 = vals
    for name, v in (("m1", m1), ("m2", m2), ("m3", m3)):
        if not math.isfinite(v) or v <= 0.0:
            raise ValueError(
                f"moments: {name} must be finite and > 0 (the covariance entries are strictly "
                f"positive), got {name} = {v!r}."
            )
    if m2 < m1 * m1 * (1.0 - 1e-12):
        raise ValueError(
            f"moments: m2 = {m2:g} < m1^2 = {m1 * m1:g}, impossible (a variance would be "
            "negative); pass the raw (not central) second moment E[l^2] = Var + mean^2."
        )
    if m1 * m3 < m2 * m2 * (1.0 - 1e-12):
        raise ValueError(
            f"moments: m1 m3 = {m1 * m3:g} < m2^2 = {m2 * m2:g}, impossible for a positive law "
            "(Cauchy-Schwarz); pass the raw third moment E[l^3] (not the skewness or a central "
            "moment)."
        )
    return m1, m2, m3


class RandomCovarianceCoefficients(NamedTuple):
    """The coefficients of Cor. C.2 for iid entries (theory.md §9.4, §9.6).

    - `alpha = E[(Gamma_tau)_ii lambda_i^2]`, the same for every `i`;
    - `beta = E[lambda_i^2]`;
    - `omega = E[(Gamma_tau)_ii lambda_i lambda_j]`, `i != j`.
    """

    alpha: float
    beta: float
    omega: float


def _dn(d: object, N: object) -> tuple[int, int]:
    return check_int(d, "d"), check_int(N, "N")


def random_covariance_coefficients(
    d: int, N: int, moments: ArrayLike = EXP1_MOMENTS
) -> RandomCovarianceCoefficients:
    """`alpha`, `beta`, `omega` of ZFB Cor. C.2 (eq. C.4) for iid entries (theory.md §9.6).

    With `Gamma_tau = ((N+1)/N) Lambda_tau + (tr Lambda_tau / N) I`:

        alpha = ((N+1)/N) m3 + (m3 + (d-1) m1 m2) / N
        beta  = m2
        omega = ((N+1)/N) m1 m2 + (2 m1 m2 + (d-2) m1^3) / N.

    **Arguments:** `d` (>= 1), `N` (training length, >= 1), `moments = (m1, m2, m3)`.
    """
    dd, n = _dn(d, N)
    m1, m2, m3 = check_moments(moments)
    alpha = (n + 1.0) / n * m3 + (m3 + (dd - 1.0) * m1 * m2) / n
    omega = (n + 1.0) / n * m1 * m2 + (2.0 * m1 * m2 + (dd - 2.0) * m1**3) / n
    return RandomCovarianceCoefficients(alpha=alpha, beta=m2, omega=omega)


def random_covariance_minimum(d: int, N: int, moments: ArrayLike = EXP1_MOMENTS) -> float:
    """The global minimum of ZFB Theorem 4.5 (eq. 4.12, Cor. C.2 eq. C.8): `u* U* = g I`.

    `g = beta / alpha` (theory.md §9.6, named g_rc there); for Exp(1), `g = N / (3N + d + 5)`,
    which tends to 1/3 as `N -> infinity`.

    **Arguments:** `d` (>= 1), `N` (training length, >= 1), `moments = (m1, m2, m3)`.

    **Returns:** `g` as a float.
    """
    c = random_covariance_coefficients(d, N, moments)
    return c.beta / c.alpha


def random_covariance_limits(
    d: int, N: int, moments: ArrayLike = EXP1_MOMENTS
) -> tuple[float, float]:
    """The limits of the balanced flow, ZFB eq. C.15 (theory.md §9.4), for iid entries.

    `u -> [sum_i (beta/alpha)^2]^{1/4} = d^{1/4} g^{1/2}` and
    `u_ii -> [sum_i (beta/alpha)^2]^{-1/4} beta/alpha = d^{-1/4} g^{1/2}`, off-diagonals -> 0.

    **Returns:** `(u*, U*_ii)`.
    """
    dd, _ = _dn(d, N)
    g = random_covariance_minimum(d, N, moments)
    s = dd * g * g
    return s**0.25, s**-0.25 * g


def random_covariance_loss(
    u: float, U: Float[ArrayLike, "d d"], N: int, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """The population loss (4.10) on the manifold `a = b = 0`, from eq. C.5 (theory.md §9.4):

        L = (1/2) alpha u^2 sum_i U_ii^2 + (1/2) omega u^2 sum_{i!=j} U_ij^2
            - beta u sum_i U_ii + (1/2) d m1,

    i.e. `l_rdm + E[tr Lambda_tau]/2`, with the factor 1/2 of eq. 3.8.
    """
    Um = check_square(U, "U")
    uu = check_real(u, "u")
    dd = Um.shape[0]
    co = random_covariance_coefficients(dd, N, moments)
    diag = np.diag(Um)
    off2 = float(np.sum(Um**2) - np.sum(diag**2))
    m1 = check_moments(moments)[0]
    quad = co.alpha * float(np.sum(diag**2)) + co.omega * off2
    return 0.5 * uu * uu * quad - co.beta * uu * float(np.sum(diag)) + 0.5 * dd * m1


def random_covariance_min_loss(d: int, N: int, moments: ArrayLike = EXP1_MOMENTS) -> float:
    """`min L = (1/2)(d m1 - d beta^2/alpha)` (Cor. C.2, eq. C.6, plus `E tr Lambda / 2`)."""
    dd, _ = _dn(d, N)
    co = random_covariance_coefficients(d, N, moments)
    return 0.5 * dd * (check_moments(moments)[0] - co.beta**2 / co.alpha)


# ----------------------------------------------------------------------------------------------
# risks of a layer y_hat = h^T G x_q


def _gamma_m_moments(dd: int, m: int, mom: tuple[float, float, float]) -> tuple[float, float]:
    """`E[delta_i lambda_i]` and `E[delta_i lambda_j]` (i != j), `delta_i = (Gamma_M)_ii lambda_i`,
    `Gamma_M = (1 + 1/M) Lambda + tr(Lambda)/M I`: the test-side analogues of alpha and omega."""
    m1, m2, m3 = mom
    same = (1.0 + 1.0 / m) * m3 + (m3 + (dd - 1.0) * m1 * m2) / m
    other = (1.0 + 1.0 / m) * m1 * m2 + (2.0 * m1 * m2 + (dd - 2.0) * m1**3) / m
    return same, other


def fixed_test_risk(G: Float[ArrayLike, "d d"], Lambda_x: Float[ArrayLike, "d d"], M: int) -> float:
    """Risk of `y_hat = h^T G x_q` on test prompts of length `M` with a **fixed** covariance
    `Lambda_x` (inputs and query iid `N(0, Lambda_x)`, `w ~ N(0, I)`, clean target) [DERIVED]:

        R = tr(G Lambda_x G^T Gamma_M(Lambda_x) Lambda_x) - 2 tr(Lambda_x G Lambda_x) + tr Lambda_x,
        Gamma_M(Lambda) = (1 + 1/M) Lambda + tr(Lambda)/M I,

    from `E[S A S] = (1 + 1/M) Lambda A Lambda + tr(A Lambda) Lambda / M` for the empirical second
    moment `S` of `M` Gaussian inputs and symmetric `A` (theory.md §7.3 with `G` general).
    """
    lx = check_spd(Lambda_x, "Lambda_x")
    d = lx.shape[0]
    Gm = check_square(G, "G", d)
    m = check_int(M, "M")
    gam_m = (1.0 + 1.0 / m) * lx + np.trace(lx) / m * np.eye(d)
    return float(
        np.trace(Gm @ lx @ Gm.T @ gam_m @ lx) - 2.0 * np.trace(lx @ Gm @ lx) + np.trace(lx)
    )


def random_test_risk(
    G: Float[ArrayLike, "d d"], M: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """Risk of `y_hat = h^T G x_q` on a test prompt of length `M` whose covariance is
    `c Lambda_new`, `Lambda_new = diag(lambda)` with iid entries of the law (moments), the inputs
    and the query iid `N(0, c Lambda_new)` given it [DERIVED; theory.md §9.6 for `G = g I`].

    `fixed_test_risk` averaged over `Lambda_x = c Lambda_new`: with
    `delta_i = (Gamma_M(Lambda_x))_ii (Lambda_x)_ii`,

        R = sum_ij G_ij^2 E[delta_i (Lambda_x)_jj] - 2 c m2 tr G + c d m1,

    where `E[delta_i lambda_j]` (times `c^3`) is the test-side alpha (`i = j`) or omega (`i != j`)
    with `N` replaced by `M`.
    """
    Gm = check_square(G, "G")
    d = Gm.shape[0]
    m = check_int(M, "M")
    cc = check_real(c, "c", positive=True)
    mom = check_moments(moments)
    same, other = _gamma_m_moments(d, m, mom)
    K = np.full((d, d), other)
    np.fill_diagonal(K, same)
    quad = cc**3 * float(np.sum(Gm**2 * K))
    return quad - 2.0 * cc**2 * mom[1] * float(np.trace(Gm)) + cc * d * mom[0]


def random_covariance_risk(
    d: int, N: int, M: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """Test risk of the layer trained on random covariances (ZFB Thm 4.5, eq. 4.13; theory.md
    §9.6 [DERIVED]) on a fresh prompt of length `M` with covariance `c Lambda_new`,
    `Lambda_new` drawn from the training law:

        R = d [ g^2 c^3 ((1 + 1/M) m3 + (m3 + (d-1) m1 m2)/M) - 2 g c^2 m2 + c m1 ],

    `g = random_covariance_minimum(d, N, moments)`. `R = E(y_hat - <w, x_q>)^2`, no factor 1/2;
    at `M = N`, `c = 1` it is `d (m1 - beta^2/alpha) = 2 min L`.

    **Arguments:** `d`, `N` (training length), `M` (test length), `c` (> 0, multiplies the
    covariance), `moments = (m1, m2, m3)` of the training law.
    """
    dd, n = _dn(d, N)
    m = check_int(M, "M")
    cc = check_real(c, "c", positive=True)
    m1, m2, m3 = check_moments(moments)
    g = random_covariance_minimum(dd, n, (m1, m2, m3))
    a_m = (1.0 + 1.0 / m) * m3 + (m3 + (dd - 1.0) * m1 * m2) / m
    return dd * (g * g * cc**3 * a_m - 2.0 * g * cc**2 * m2 + cc * m1)


def fixed_trained_random_risk(
    d: int, N: int, M: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """Risk of the layer trained on the **fixed** covariance `Lambda = I` (ZFB Thm 4.1:
    `G = Gamma^{-1} = N/(N + d + 1) I`) on a random test covariance `c Lambda_new`
    (`random_test_risk` at that `G`) [DERIVED]."""
    dd, n = _dn(d, N)
    return random_test_risk(n / (n + dd + 1.0) * np.eye(dd), M, c, moments)


def random_trained_fixed_risk(
    d: int, N: int, M: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """Risk of the layer trained on random covariances (`G = g I`) on test prompts with the
    **fixed** covariance `c I` (`fixed_test_risk` at that `G`):
    `R = d [g^2 c^3 (1 + (d+1)/M) - 2 g c^2 + c]` [DERIVED]."""
    dd, n = _dn(d, N)
    cc = check_real(c, "c", positive=True)
    g = random_covariance_minimum(dd, n, moments)
    return fixed_test_risk(g * np.eye(dd), cc * np.eye(dd), M)


def random_covariance_limit_risk(c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS) -> float:
    """`lim_{M, N -> inf} R / d = c^3 m2^2/m3 - 2 c^2 m2^2/m3 + c m1` (`g -> m2/m3`; ZFB eq. 4.13;
    theory.md §9.6). For Exp(1): `c [(2/3) c^2 - (4/3) c + 1]`, 1/3 at `c = 1`."""
    cc = check_real(c, "c", positive=True)
    m1, m2, m3 = check_moments(moments)
    g = m2 / m3
    return g * g * cc**3 * m3 - 2.0 * g * cc**2 * m2 + cc * m1


# ----------------------------------------------------------------------------------------------
# the three "1/3" statements


def average_implicit_map(
    d: int, N: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """Statement (i): the average implicit linear map of the trained layer (ZFB eq. 4.13).

    `E[y_hat | x_q, w, Lambda_new] = x_q^T (g c Lambda_new) w` exactly at any `M` (the query term
    vanishes at the minimum, `E[h | w, Lambda] = Lambda w`); averaged over `Lambda_new` as if it
    were independent of `x_q` the map is `g c E[lambda] I`:

        g c m1 = c m1 m2 / alpha     (Exp(1), c = 1: N / (3N + d + 5) -> 1/3).

    Equivalently, the regression slope of `y_hat` on `<w, x'>` for a probe query `x'`
    independent of `Lambda_new` with `E[x' x'^T] = I`.
    """
    cc = check_real(c, "c", positive=True)
    return random_covariance_minimum(d, N, moments) * cc * check_moments(moments)[0]


def risk_per_dimension(
    d: int, N: int, M: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """Statement (ii): `R / d` (`random_covariance_risk / d`); at `M = N`, `c = 1`,
    `m1 - beta^2/alpha`; for Exp(1) `-> 1/3` as `M, N -> infinity`."""
    dd, _ = _dn(d, N)
    return random_covariance_risk(d, N, M, c, moments) / dd


def regression_slope(d: int, N: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS) -> float:
    """Statement (iii): the population regression slope `Cov(y_hat, y_q) / Var(y_q)` of the
    prediction on the target over the joint law [DERIVED].

    `E[y_hat y_q] = g E[w^T S x_q x_q^T w] = g E tr(c Lambda c Lambda) = g c^2 d m2` (the query
    and the prompt share `Lambda`), `Var(y_q) = c d m1`, so the slope is

        g c m2 / m1     (Exp(1), c = 1: 2N / (3N + d + 5) -> 2/3, not 1/3),

    independent of `M`. It differs from the average map `g c m1` by the factor `m2 / m1^2`
    because `x_q` and `Lambda_new` are dependent (large `lambda_i` make large `x_q,i`).
    """
    cc = check_real(c, "c", positive=True)
    m1, m2, _ = check_moments(moments)
    return random_covariance_minimum(d, N, moments) * cc * m2 / m1


class OneThird(NamedTuple):
    """The three statements at finite sizes and their `M, N -> infinity` limits."""

    average_map: float
    risk_per_dim: float
    slope: float
    average_map_limit: float
    risk_per_dim_limit: float
    slope_limit: float


def one_third_statements(
    d: int, N: int, M: int, c: float = 1.0, moments: ArrayLike = EXP1_MOMENTS
) -> OneThird:
    """Statements (i)-(iii) at `(d, N, M, c)` and their limits: `c m1 m2/m3` (map),
    `random_covariance_limit_risk(c)` (risk per dimension) and `c m2^2 / (m1 m3)` (slope). For
    Exp(1), `c = 1`: 1/3, 1/3 and 2/3."""
    m1, m2, m3 = check_moments(moments)
    cc = check_real(c, "c", positive=True)
    return OneThird(
        average_map=average_implicit_map(d, N, c, moments),
        risk_per_dim=risk_per_dimension(d, N, M, c, moments),
        slope=regression_slope(d, N, c, moments),
        average_map_limit=cc * m1 * m2 / m3,
        risk_per_dim_limit=random_covariance_limit_risk(c, moments),
        slope_limit=cc * m2 * m2 / (m1 * m3),
    )


# ----------------------------------------------------------------------------------------------
# Theorem 4.5's sigma condition (UNCERTAIN form, theory.md §15 item 2)


def theorem45_numerators(
    Theta: Float[ArrayLike, "d d"], moments: ArrayLike = EXP1_MOMENTS
) -> tuple[float, float]:
    """The two candidate numerators of (4.11) for iid entries: `||E[Lambda] Theta||_F^2 =
    m1^2 ||Theta||_F^2` and `tr(E[Lambda^2] Theta Theta^T) = m2 ||Theta||_F^2`."""
    Th = check_square(Theta, "Theta")
    m1, m2, _ = check_moments(moments)
    t = float(np.sum(Th**2))
    return m1 * m1 * t, m2 * t


def theorem45_sigma_bounds(
    d: int, mean_term: float, second_term: float, denominator: float
) -> dict[str, float]:
    """Both candidate forms of Theorem 4.5's condition (4.11) (RECONSTRUCTED, UNCERTAIN:
    theory.md §9.2, §15 item 2): `sigma^2 < 2 num / (sqrt(d) den)` with

    - `num = ||E[Lambda_tau] Theta||_F^2` (`mean_term`, the reconstruction of theory.md) or
      `num = tr(E[Lambda_tau^2] Theta Theta^T)` (`second_term`, the alternative reading);
    - `den = E[ ||Gamma_tau||_op ||Lambda_tau||_F^2 ]` (`denominator`).

    **Returns:** `{"mean": sigma bound, "second": sigma bound, "conservative": the smaller}`.
    """
    dd = check_int(d, "d")
    a = check_real(mean_term, "mean_term", positive=True)
    b = check_real(second_term, "second_term", positive=True)
    den = check_real(denominator, "denominator", positive=True)
    s_a = math.sqrt(2.0 * a / (math.sqrt(dd) * den))
    s_b = math.sqrt(2.0 * b / (math.sqrt(dd) * den))
    return {"mean": s_a, "second": s_b, "conservative": min(s_a, s_b)}


def initial_loss_sigma_bound(
    Theta: Float[ArrayLike, "d d"], N: int, moments: ArrayLike = EXP1_MOMENTS
) -> float:
    """The exact `sigma` below which the start of Assumption 3.3 has `l_rdm(0) < 0` (the fact
    the proof of Lemma A.4 needs, here for random covariances) [DERIVED]:

        sigma^2 < 2 tr(E[Lambda^2] T) / E[tr(Gamma Lambda T Lambda T)],   T = Theta Theta^T,
        E[tr(Gamma Lambda T Lambda T)] = alpha sum_i T_ii^2 + omega sum_{i!=j} T_ij^2.

    Both candidate bounds of `theorem45_sigma_bounds` lie below it (their denominator bounds
    `tr(Gamma Lambda T Lambda T) <= ||Gamma||_op ||Lambda||_F^2` for `||T||_F = 1`, times
    `sqrt(d) >= 1`, and `||E[Lambda] Theta||_F^2 <= tr(E[Lambda^2] T)` by Jensen).
    """
    Th = check_square(Theta, "Theta")
    T = Th @ Th.T
    nrm = float(np.linalg.norm(T))
    if nrm == 0.0:
        raise ValueError("Theta must be non-zero (Assumption 3.3).")
    T = T / nrm
    d = T.shape[0]
    co = random_covariance_coefficients(d, N, moments)
    diag = np.diag(T)
    quad = co.alpha * float(np.sum(diag**2)) + co.omega * float(np.sum(T**2) - np.sum(diag**2))
    return math.sqrt(2.0 * co.beta * float(np.trace(T)) / quad)
