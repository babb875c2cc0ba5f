"""Closed-form learning curve of the reduced flow for isotropic `Lambda = lam I` [DERIVED].

With `Lambda = lam I` and the balanced start of Assumption 3.3 with `Theta Theta^T = I / sqrt(d)`
(so `U(0) = sigma I / sqrt(d)`, `u(0) = sigma`), the ODE of ZFB Lemma 5.2 (eq. 5.4)

    dU/dt = -u^2 Gamma Lambda U Lambda + u Lambda^2,
    du/dt = -tr[u Gamma Lambda U Lambda U^T - Lambda^2 U^T]

keeps `U(t) = m(t) I`, and balancedness (Lemma A.3) gives `u = sqrt(d) m`. With `Gamma = g I`,
`g = lam (N + 1 + d) / N`, the squared scale `z = m^2` obeys the logistic equation

    dz/dt = r z (1 - z / K),   r = 2 sqrt(d) lam^2,   K = 1 / (sqrt(d) g),

so `z(t) = K / (1 + (K / z0 - 1) exp(-r t))` with `z0 = sigma^2 / d`. Then `u U = sqrt(d) z I`
tends to `Gamma^{-1}` (Theorem 4.1), and the population loss (ZFB eq. 3.8, theory.md §4.3) is

    L(t) = (1/2) [ g lam^2 d^2 z^2 - 2 lam^2 d^{3/2} z + d lam ].

The **escape time** (the time `u U` needs to reach a fraction `f` of `Gamma^{-1}`) follows:
`t_f = [ln(K / z0 - 1) - ln(1 / f - 1)] / r`, and `t_{1/2} = ln(K / z0 - 1) / r`. For small
`sigma` it grows like `ln(1 / sigma^2) / (2 sqrt(d) lam^2)`: the plateau of the small start.

Derivation and checks: `docs/learning_curve.md`; `simulations/checks/learning_curve.py` compares
the diffrax trajectory with `z(t)` at every saved time. Plain numpy; never imports `lsa`.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from theory._validate import check_int, check_real

__all__ = ["IsotropicCurve", "isotropic_escape_time", "isotropic_learning_curve"]


class IsotropicCurve(dict[str, np.ndarray]):
    """The closed-form trajectory at times `t`: keys `t`, `z` (`m^2`, `U = m I`), `u`, `m`,
    `uU` (the scalar of `u U = uU * I`) and `loss` (with the 1/2 of ZFB eq. 3.8)."""


def _params(d: int, N: int, lam: float, sigma: float) -> tuple[int, float, float, float, float]:
    d = check_int(d, "d", minimum=1)
    N = check_int(N, "N", minimum=1)
    lam = check_real(lam, "lam", positive=True)
    sigma = check_real(sigma, "sigma", positive=True)
    g = lam * (N + 1 + d) / N
    r = 2.0 * np.sqrt(d) * lam**2
    K = 1.0 / (np.sqrt(d) * g)
    z0 = sigma**2 / d
    return d, g, r, K, z0


def isotropic_learning_curve(
    t: Float[np.ndarray, " T"] | float, d: int, N: int, lam: float, sigma: float
) -> IsotropicCurve:
    """The exact solution of ZFB Lemma 5.2 (eq. 5.4) for `Lambda = lam I` from
    `u(0) = sigma`, `U(0) = sigma I / sqrt(d)` (Assumption 3.3 with `Theta Theta^T = I/sqrt d`).

    **Arguments:** `t` (times `>= 0`, any shape), `d`, `N` (training length), `lam` (the
    covariance scale, `> 0`), `sigma` (the start's scale, `> 0`; any value: the closed form
    holds beyond Theorem 4.1's bound too).

    **Returns:** an `IsotropicCurve` (see its docstring); `uU -> N / (lam (N + 1 + d))`.
    """
    d, g, r, K, z0 = _params(d, N, lam, sigma)
    tt = np.asarray(t, dtype=np.float64)
    if np.any(~np.isfinite(tt)) or np.any(tt < 0):
        raise ValueError("`t` must be finite and >= 0.")
    # z = K z0 e^{rt} / (K + z0 (e^{rt} - 1)), written with e^{-rt} (no overflow at large t)
    e = np.exp(-r * tt)
    z = K * z0 / (z0 + (K - z0) * e)
    m = np.sqrt(z)
    u = np.sqrt(d) * m
    loss = 0.5 * (g * lam**2 * d**2 * z**2 - 2.0 * lam**2 * d**1.5 * z + d * lam)
    return IsotropicCurve(t=tt, z=z, m=m, u=u, uU=np.sqrt(d) * z, loss=loss)


def isotropic_escape_time(d: int, N: int, lam: float, sigma: float, fraction: float = 0.5) -> float:
    """Time at which `u U` reaches `fraction * Gamma^{-1}` on the isotropic learning curve
    (`isotropic_learning_curve`): `[ln(K/z0 - 1) - ln(1/fraction - 1)] / r`.

    `fraction` must lie in `(0, 1)`; if the start is already beyond it the result is
    negative (the curve, continued backwards, passed it before `t = 0`). Starts above the limit
    (`z0 > K`) never reach a fraction below 1 from below: ValueError.
    """
    _d, _g, r, K, z0 = _params(d, N, lam, sigma)
    f = check_real(fraction, "fraction", positive=True)
    if not f < 1.0:
        raise ValueError(f"`fraction` must lie in (0, 1); got {fraction}.")
    if not z0 < K:
        raise ValueError(
            "the start is at or above the limit (sigma^2 / d >= 1 / (sqrt(d) g)); u U decreases "
            "to Gamma^{-1} and has no escape time. Use a smaller `sigma`."
        )
    return float((np.log(K / z0 - 1.0) - np.log(1.0 / f - 1.0)) / r)
