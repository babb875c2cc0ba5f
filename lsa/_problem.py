"""The one problem builder of the reduced population flow [ZFB Lemma 5.2], shared by
`lsa.flow.gradient_flow` and `lsa.batch.batch_gradient_flow` (both integrate in s; the single
solve integrates in t when a fixed end time `t_end` is asked).

Everything the two solvers have in common is computed here, on the host, for `B` problems at
once (`gradient_flow` uses `B = 1`): Lambda's eigendecomposition, Gamma's eigenvalues, the
unit scale, the start in the eigenbasis, the time scales and the horizon, the tolerances and
the exp-sum tables of the off-diagonal sums.

**Units.** Scaling Lambda by `c` (same Theta, sigma the same fraction of sigma_max) is an exact
reparametrisation of the flow: `u(t) = c^{-1/2} u~(c^2 t)`, the same for `U`. The solvers
therefore work in units where `tr(Lambda)/d = 1`: with `a = tr(Lambda)/d`,

    Lambda^ = Lambda / a,   u^ = a^{1/2} u,   U^ = a^{1/2} U,   tau = a^2 t,
    s^ = a^3 s,   loss^ = loss / a,

and every tolerance, floor, time scale and stopping threshold is expressed in those units
(the stopping statistic is scale-free). A solve of `c Lambda` is then the same computation as
a solve of `Lambda` (up to round-off in `a`), so its step count does not depend on `c`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._expsum import ExpSumTable, stack_tables
from ._options import DirectMethod, EigenMethod, FlowOptions


@dataclasses.dataclass(frozen=True)
class Problem:
    """`B` reduced flows in solver units (suffix-free fields are in those units unless said).

    - `scale (B,)`: `a = tr(Lambda)/d`; original = solver quantity mapped by `to_t`, `to_u`...;
    - `lam`, `gam (B, d)`: eigenvalues of Lambda and Gamma in **original** units, ascending;
      `Q (B, d, d)`: eigenvectors (`Lambda = Q diag(lam) Q^T`); `N (B,)`;
    - `lam_s`, `gam_s (B, d)`: the same in solver units;
    - `u0 (B,)`, `p0 (B, d)`, `off0 (B, d, d)`: the start (`u`, diagonal and off-diagonal part
      of `V = Q^T U Q`); `sigma (B,)`: its scale `max(|u0|, ||U0||_F)`;
    - `rates (B, d, d)`: `gamma_i lam_i lam_j` (the off-diagonal decay rates in s);
      `r_coef (B,)`: their minimum; `c_d (B, d)`: `gamma_i lam_i^2`;
    - `t_esc`, `t_conv (B,)`: plateau escape and convergence time scales; `t1 (B,)`: the end of
      the solve (`t_end`, `t_max`, or `margin * (t_esc + t_conv)`); `t_first (B,)`: the first
      save time and initial step;
    - `rtol`; `atol`, `newton_atol (B,)`: absolute tolerances of the error control and of the
      chord iteration.
    """

    scale: np.ndarray
    lam: np.ndarray
    gam: np.ndarray
    Q: np.ndarray
    N: np.ndarray
    lam_s: np.ndarray
    gam_s: np.ndarray
    u0: np.ndarray
    p0: np.ndarray
    off0: np.ndarray
    sigma: np.ndarray
    rates: np.ndarray
    r_coef: np.ndarray
    c_d: np.ndarray
    t_esc: np.ndarray
    t_conv: np.ndarray
    t1: np.ndarray
    t_first: np.ndarray
    rtol: float
    atol: np.ndarray
    newton_atol: np.ndarray

    @property
    def size(self) -> int:
        return int(self.scale.shape[0])

    @property
    def d(self) -> int:
        return int(self.lam.shape[1])

    # unit maps from solver units back to the caller's (broadcast over trailing axes with
    # `_col`): t = tau / a^2, u = u^ / a^{1/2}, s = s^ / a^3, loss = a loss^.
    def to_t(self, tau: Any) -> np.ndarray:
        return np.asarray(tau) / _col(self.scale**2, tau)

    def to_u(self, u: Any) -> np.ndarray:
        return np.asarray(u) / _col(np.sqrt(self.scale), u)

    def to_s(self, s: Any) -> np.ndarray:
        return np.asarray(s) / _col(self.scale**3, s)

    def to_loss(self, loss: Any) -> np.ndarray:
        return np.asarray(loss) * _col(self.scale, loss)

    def to_u2(self, x: Any) -> np.ndarray:
        """Quadratic quantities in `U` (`||U||_F^2`): `/ a`."""
        return np.asarray(x) / _col(self.scale, x)

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Exp-sum tables of `(F, off2) = sum_{i != j} (rates_ij, 1) off0_ij^2 exp(-2 rates_ij s)`
        per member: `(B, nb)` centres, `(B, nb, order+1, 2)` moments (one padding rule)."""
        d = self.d
        mask = ~np.eye(d, dtype=bool)
        tables = []
        for b in range(self.size):
            r, o2 = self.rates[b][mask], self.off0[b][mask] ** 2
            tables.append(ExpSumTable.build(r, np.stack([r * o2, o2], axis=1)))
        return stack_tables(tables)


def _col(x: np.ndarray, like: Any) -> np.ndarray:
    """`x (B,)` shaped to broadcast against `like (B, ...)`; a scalar stays a scalar."""
    nd = np.ndim(like)
    if x.shape[0] == 1 and nd == 0:
        return x[0]
    return x.reshape(x.shape + (1,) * (nd - 1))


def spectra(Lams: np.ndarray, N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(lam, Q, gam)` for `(B, d, d)` covariances: `Lambda_b = Q_b diag(lam_b) Q_b^T` (ascending)
    and `gam = (1 + 1/N) lam + tr(Lambda)/N`, the eigenvalues of Gamma [ZFB Thm 4.1]."""
    lam, Q = np.linalg.eigh(0.5 * (Lams + np.swapaxes(Lams, 1, 2)))
    gam = (1.0 + 1.0 / N)[:, None] * lam + (lam.sum(axis=1) / N)[:, None]
    return lam, Q, gam


def time_scales(
    lam: np.ndarray, gam: np.ndarray, sigma: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(plateau escape time, slow convergence time) per row, from the solver notes' formulas:
    `ln(u*/sigma) / ||Lambda^2||_F` and `ln(1e4/eps) / (u*^2 min_ij gamma_i lam_i lam_j)`, with
    `u*^2 = ||Gamma^{-1}||_F`. Valid in any units (both scale as `1/a^2`)."""
    lam, gam = np.atleast_2d(lam), np.atleast_2d(gam)
    sigma = np.atleast_1d(np.asarray(sigma, np.float64))
    u_star2 = np.sqrt(np.sum(gam**-2.0, axis=1))
    t_esc = np.log(np.maximum(np.sqrt(u_star2) / sigma, math.e)) / np.sqrt(np.sum(lam**4, axis=1))
    r_min = u_star2 * np.min(gam[:, :, None] * lam[:, :, None] * lam[:, None, :], axis=(1, 2))
    t_conv = math.log(1e4 / eps) / r_min
    return t_esc, t_conv


def build_problem(
    Lams: np.ndarray,
    N: np.ndarray,
    u0: np.ndarray,
    U0: np.ndarray,
    method: EigenMethod | DirectMethod,
    options: FlowOptions,
) -> Problem:
    """Build `B` problems from validated host arrays in the caller's units: `Lams (B, d, d)`
    symmetric positive definite, `N (B,)`, the start `u0 (B,)`, `U0 (B, d, d)`."""
    N = np.asarray(N, np.float64)
    lam, Q, gam = spectra(Lams, N)
    d = lam.shape[1]
    a = lam.sum(axis=1) / d
    lam_s, gam_s = lam / a[:, None], gam / a[:, None]
    sqa = np.sqrt(a)
    u0_s = np.asarray(u0, np.float64) * sqa
    U0_s = np.asarray(U0, np.float64) * sqa[:, None, None]
    sigma = np.maximum(np.maximum(np.abs(u0_s), np.linalg.norm(U0_s, axis=(1, 2))), 1e-300)

    t_esc, t_conv = time_scales(lam_s, gam_s, sigma, options.eps)
    if options.t_end is not None:
        t1 = float(options.t_end) * a**2
    elif options.t_max is not None:
        t1 = float(options.t_max) * a**2
    else:
        t1 = options.margin * (t_esc + t_conv)
    c_d = gam_s * lam_s**2
    t_first = np.minimum(t_esc, 1.0 / np.max(c_d, axis=1)) * 1e-3

    V0 = np.swapaxes(Q, 1, 2) @ U0_s @ Q
    p0 = np.diagonal(V0, axis1=1, axis2=2).copy()
    off0 = V0 - p0[:, :, None] * np.eye(d)
    rates = gam_s[:, :, None] * lam_s[:, :, None] * lam_s[:, None, :]

    rtol = float(method.rtol)
    atol = rtol * method.atol_factor * np.minimum(sigma**2, 1.0)
    if isinstance(method, EigenMethod):
        floor = method.newton_atol_floor
        newton_atol = method.newton_atol_factor * np.minimum(np.maximum(sigma**2, floor), 1.0)
    else:
        newton_atol = np.full_like(atol, np.nan)
    return Problem(
        scale=a, lam=lam, gam=gam, Q=Q, N=N, lam_s=lam_s, gam_s=gam_s,
        u0=u0_s, p0=p0, off0=off0, sigma=sigma, rates=rates,
        r_coef=np.min(rates.reshape(rates.shape[0], -1), axis=1), c_d=c_d,
        t_esc=t_esc, t_conv=t_conv, t1=np.broadcast_to(t1, a.shape).astype(np.float64),
        t_first=t_first, rtol=rtol, atol=atol, newton_atol=newton_atol,
    )  # fmt: skip
