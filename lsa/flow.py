"""The gradient flow `d theta/dt = -grad L(theta)` as a diffrax ODE [ZFB eq. 3.9].

Two flows are provided.

**Reduced population flow** (`gradient_flow`): the ODE of ZFB Lemma 5.2 in `(U, u)` on the
manifold `a = b = 0`, where the paper's initialisation keeps it. Near the minimum it is stiff
(with condition number 100 the stiffness ratio reaches 1e4-6e5), so the default method
(`EigenMethod`) exploits the structure:

- in Lambda's eigenbasis, `V = Q^T U Q`, Lambda and Gamma are diagonal and the vector field is
  elementwise: `dV_ij/dt = -u^2 gamma_i lambda_i lambda_j V_ij + u lambda_i^2 [i = j]`;
- each off-diagonal entry therefore has the closed form `V_ij(t) = V_ij(0) exp(-c_ij s(t))`,
  `c_ij = gamma_i lambda_i lambda_j`, `s(t) = int_0^t u^2`; only the diagonal `p = diag V`, `u`
  and `s` are integrated: a state of size d + 2 instead of d^2 + 1;
- the Jacobian of that state is diagonal plus a border of two rows and columns (`u`, `s`), so
  the Newton systems of the implicit solver (Kvaerno5, order 5, L-stable) are solved in O(d)
  by a Schur complement (`BorderedDiagonal`, a lineax solver) instead of an O(d^3) LU.

`DirectMethod` integrates the plain `(U, u)` ODE in the original coordinates with any diffrax
solver (default Tsit5); it is the independent cross-check and the benchmark baseline.

**Empirical flow** (`empirical_flow`): all `2 (d+1)^2` entries of `(W_PV, W_KQ)` under the
empirical loss over a fixed prompt set, from any start, computed from per-prompt statistics.

Stopping. A solve ends when the estimated relative distance to the fixed point,
`||f(y)||_max / (r_min(u) ||y||_max)` with `r_min(u) = u^2 min_ij gamma_i lambda_i lambda_j` the
slowest linear rate, falls below `eps`. At the small-sigma saddle the estimate is of order
`1/sigma^2` (huge), so the rule does not fire there. A horizon `t_max` (from the plateau and
convergence time scales, with a margin) and `max_steps` stop runaway solves; hitting either is
reported as a failure with diagnostics (`FlowError`), never as a quiet number.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_covariance, check_length, check_square, warn_sigma
from .loss import (
    PromptStats,
    QuadraticLoss,
    empirical_loss,
    gamma_matrix,
    population_loss,
    quadratic_form_loss,
    quadratic_loss,
)
from .model import from_reduced
from .prompts import Init

__all__ = [
    "BorderedDiagonal",
    "DirectMethod",
    "EigenMethod",
    "EmpiricalResult",
    "ExpSumTable",
    "FlowError",
    "FlowOptions",
    "FlowResult",
    "empirical_flow",
    "gradient_flow",
    "reduced_vector_field",
]


class FlowError(RuntimeError):
    """A gradient-flow solve failed (max steps, horizon, NaN, divergence).

    `diagnostics` holds the solver statistics and the last state's summary.
    """

    def __init__(self, message: str, diagnostics: dict[str, Any]):
        details = ", ".join(f"{k}={v}" for k, v in diagnostics.items())
        super().__init__(f"{message} [{details}]")
        self.diagnostics = diagnostics


# ----------------------------------------------------------------------------------------
# A lineax solver for "diagonal plus a border": the Newton matrices of the eigenbasis flow.
# ----------------------------------------------------------------------------------------


class BorderedDiagonal(lx.AbstractLinearSolver):
    """Solve `[[A, B], [C, E]] x = b` with `A` diagonal `(n-k, n-k)` and a border of width `k`.

    The structure is read off the operator with `1 + 2k` matrix-vector products (one with
    ones on the interior block, `k` columns and `k` transposed rows of the border), then the
    system is solved by the Schur complement `E - C A^{-1} B` (a `k x k` solve): O(n k^2)
    instead of the O(n^3) of a dense LU. Exact (to round-off) whenever the interior block is
    diagonal; it is used only where the vector field guarantees that.
    """

    border: int = eqx.field(static=True, default=2)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        n = operator.in_size()
        k = self.border
        dtype = operator.in_structure().dtype  # type: ignore[union-attr]
        m = n - k
        ones = jnp.concatenate([jnp.ones(m, dtype), jnp.zeros(k, dtype)])
        diag = operator.mv(ones)[:m]
        eye_k = jnp.eye(k, dtype=dtype)
        basis = [jnp.concatenate([jnp.zeros(m, dtype), eye_k[j]]) for j in range(k)]
        cols = jnp.stack([operator.mv(e) for e in basis], axis=1)  # (n, k)
        opT = operator.transpose()
        rows = jnp.stack([opT.mv(e) for e in basis], axis=0)  # (k, n)
        return diag, cols[:m], rows[:, :m], cols[m:]

    def compute(self, state, vector, options):
        del options
        diag, Bm, Cm, Em = state
        m = diag.shape[0]
        b1, b2 = vector[:m], vector[m:]
        Ai_b1 = b1 / diag
        Ai_B = Bm / diag[:, None]
        schur = Em - Cm @ Ai_B
        x2 = jnp.linalg.solve(schur, b2 - Cm @ Ai_b1)
        x1 = Ai_b1 - Ai_B @ x2
        x = jnp.concatenate([x1, x2])
        ok = jnp.all(jnp.isfinite(x))
        return x, lx.RESULTS.where(ok, lx.RESULTS.successful, lx.RESULTS.singular), {}

    def transpose(self, state, options):
        del options
        diag, Bm, Cm, Em = state
        return (diag, Cm.T, Bm.T, Em.T), {}

    def conj(self, state, options):
        del options
        return state, {}

    def assume_full_rank(self) -> bool:
        return True


class FlooredChord(diffrax.VeryChord):
    """diffrax's `VeryChord` with one change to its stopping test: a correction smaller than
    `floor` times the tolerance counts as converged, whatever the estimated contraction rate.

    Near a steady state the first chord correction is already at round-off, so the rate
    estimate (ratio of two successive corrections) is noise over noise; `VeryChord` then often
    declares divergence (rate > 2) and the step is rejected, so the step size can never grow
    and a solve past convergence churns until `max_steps` (measured: 1e5 steps, 57% rejected).
    A correction 1000x below the tolerance is converged by any standard, so accepting it is
    safe.
    """

    floor: float = 1e-3

    def terminate(self, fn, y, args, options, state, tags):
        done, result = super().terminate(fn, y, args, options, state, tags)
        tiny = (state.step >= 2) & (state.diffsize < self.floor)
        ok = optx.RESULTS.successful
        return done | tiny, optx.RESULTS.where(tiny & (state.result == ok), ok, result)


# ----------------------------------------------------------------------------------------
# Methods and options: small immutable objects carrying their tolerances.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EigenMethod:
    """Default reduced-flow method: Lambda's eigenbasis, closed-form off-diagonals, Kvaerno5 with
    the O(d) `BorderedDiagonal` Newton solve. Fast and accurate for any conditioning.

    - `rtol`: relative tolerance of the step-size controller (max norm);
    - `atol_factor`: absolute tolerance `= rtol * atol_factor * sigma^2`, so the error control
      follows the trajectory through the small-sigma plateau (solver notes);
    - `newton_rtol`, `newton_atol_factor`, `newton_atol_floor`: tolerances of the chord
      (simplified Newton) iteration on the stage derivatives
      (atol `= newton_atol_factor * min(max(sigma^2, newton_atol_floor), 1)`). The floor matters
      for tiny sigma: once the state is O(1), a chord atol of `1e-8 sigma^2` (1.4e-17 at
      sigma = 1e-4 sigma_max, d = 10) asks for corrections below round-off, and the solve
      churned to max_steps (200k steps, 117k rejected; 1769 steps with the floor). diffrax's
      default reuses the step-size tolerances there; at rtol 1e-10 that demands a correction
      near round-off, the iteration is declared divergent and ~50% of steps are rejected
      (measured: 5925 steps, 2910 rejected, against 584 and 3 with these values, d = 5).
    """

    rtol: float = 1e-11
    atol_factor: float = 1e-2
    newton_rtol: float = 1e-6
    newton_atol_factor: float = 1e-8
    newton_atol_floor: float = 1e-6

    name = "eigen"


@dataclasses.dataclass(frozen=True)
class DirectMethod:
    """The reduced ODE of Lemma 5.2 in the original `(U, u)` coordinates with any diffrax solver.

    Explicit solvers (the default Tsit5) become stability-limited on ill-conditioned Lambda;
    this method exists as an independent cross-check and as a benchmark baseline.
    """

    solver: diffrax.AbstractSolver = dataclasses.field(default_factory=diffrax.Tsit5)
    rtol: float = 1e-10
    atol_factor: float = 1e-2

    name = "direct"


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """Options shared by the flows.

    - `eps`: stop when the estimated relative distance to the fixed point is below `eps`;
    - `t_end`: integrate to this time; the stopping rule still ends the solve earlier once the
      flow has converged (past that point the state is constant to `eps`; continuing would only
      make the implicit solver chase round-off), and the result says so;
    - `t_max`: horizon; default from the plateau and convergence time scales times `margin`;
    - `max_steps`: the solver's step budget;
    - `n_save`: number of log-spaced save times;
    - `progress`: show a progress bar (tqdm) during the solve.
    """

    eps: float = 1e-10
    t_end: float | None = None
    t_max: float | None = None
    margin: float = 20.0
    max_steps: int = 200_000
    n_save: int = 400
    progress: bool = False

    def __post_init__(self) -> None:
        if not (0 < self.eps < 1):
            raise ValueError(f"`eps` must lie in (0, 1); got {self.eps}.")
        if self.t_end is not None and not self.t_end > 0:
            raise ValueError(f"`t_end` must be > 0; got {self.t_end}.")
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1; got {self.max_steps}.")
        if self.n_save < 2:
            raise ValueError(f"`n_save` must be >= 2; got {self.n_save}.")


METHODS: dict[str, Callable[[], EigenMethod | DirectMethod]] = {
    "eigen": EigenMethod,
    "direct": DirectMethod,
}


def _resolve_method(method: Any) -> EigenMethod | DirectMethod:
    if isinstance(method, EigenMethod | DirectMethod):
        return method
    if isinstance(method, str):
        try:
            return METHODS[method]()
        except KeyError:
            raise ValueError(
                f"unknown solver `method={method!r}`; choose one of {sorted(METHODS)} or pass "
                "an EigenMethod / DirectMethod instance."
            ) from None
    raise TypeError(f"`method` must be a string or a method object; got {type(method).__name__}.")


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """A solved reduced gradient flow.

    Arrays are numpy float64. Trajectory arrays have one row per saved time (log-spaced, plus
    `t = 0` and the final time); rows after the end of the solve are dropped.

    - `ts (T,)`, `u (T,)`, `loss (T,)` (population loss with the 1/2), `U_norm2 (T,)`
      (`||U||_F^2`), `balance (T,)` (`u^2 - ||U||_F^2`, conserved by Lemma A.3);
    - `u_final`, `U_final (d, d)`, `W_PV`, `W_KQ` (`(d+1, d+1)`): the end point;
    - `t_final`: when the solve ended; `stop_reason`: `"converged"` (stopping rule) or
      `"t_end"` (fixed horizon reached);
    - `stats`: solver statistics (steps, accepted, rejected, wall and compile seconds);
    - `U_at(i)`: the full `U` at saved time `i` in the original basis.
    """

    ts: np.ndarray
    u: np.ndarray
    loss: np.ndarray
    U_norm2: np.ndarray
    balance: np.ndarray
    u_final: float
    U_final: np.ndarray
    t_final: float
    stop_reason: str
    stats: dict[str, Any]
    method: str
    _U_fn: Callable[[int], np.ndarray] = dataclasses.field(repr=False)

    @property
    def W_PV(self) -> np.ndarray:
        return np.asarray(from_reduced(self.u_final, self.U_final)[0])

    @property
    def W_KQ(self) -> np.ndarray:
        return np.asarray(from_reduced(self.u_final, self.U_final)[1])

    @property
    def product(self) -> np.ndarray:
        """`u U` at the end: the preconditioner G of the trained predictor `h^T G x_q`."""
        return self.u_final * self.U_final

    def U_at(self, i: int) -> np.ndarray:
        return self._U_fn(i)

    def as_dict(self) -> dict[str, Any]:
        """Trajectory columns as plain arrays (for tables and `.npz`)."""
        return {
            "t": self.ts,
            "u": self.u,
            "loss": self.loss,
            "U_norm2": self.U_norm2,
            "balance": self.balance,
        }


# ----------------------------------------------------------------------------------------
# Sums of decaying exponentials in O(1): binned Taylor tables
# ----------------------------------------------------------------------------------------


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
            return ExpSumTable(np.ones(64), np.zeros((64, order + 1, n_w)), np.zeros(n_w))
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
        # Pad to a power-of-two number of bins with zero-weight bins: the table's shape then
        # depends only on the rate span's order of magnitude, so a new problem of the same d
        # reuses the compiled solve instead of recompiling for a new shape.
        nb_pad = max(64, 1 << (nb - 1).bit_length())
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


# ----------------------------------------------------------------------------------------
# Vector fields
# ----------------------------------------------------------------------------------------


def reduced_vector_field(
    U: Float[ArrayLike, "d d"], u: Float[ArrayLike, ""], Lambda: Float[ArrayLike, "d d"], N: Any
) -> tuple[Float[Array, "d d"], Float[Array, ""]]:
    """The right-hand side of ZFB Lemma 5.2 (eq. 5.4), written literally:

    `dU/dt = -u^2 Gamma Lambda U Lambda + u Lambda^2`,
    `du/dt = -tr[u Gamma Lambda U Lambda U^T - Lambda^2 U^T]`.
    """
    U = jnp.asarray(U)
    Lam = jnp.asarray(Lambda)
    G = gamma_matrix(Lam, N)
    GLUL = G @ Lam @ U @ Lam
    dU = -(u**2) * GLUL + u * Lam @ Lam
    du = -jnp.trace(u * GLUL @ U.T - Lam @ Lam @ U.T)
    return jnp.asarray(dU), du


def _eig_parts(y, args):
    centers, moments = args[2], args[3]
    p, u, s = y[:-2], y[-2], y[-1]
    F, off2 = exp_sum(s, centers, moments)  # sum c_ij V_ij(t)^2 and sum V_ij(t)^2, i != j
    return p, u, s, F, off2


def _eig_vf(t, y, args):
    lam2, c_d = args[0], args[1]
    p, u, _, F, _ = _eig_parts(y, args)
    dp = -(u**2) * c_d * p + u * lam2
    du = -u * (jnp.sum(c_d * p**2) + F) + jnp.sum(lam2 * p)
    return jnp.concatenate([dp, jnp.stack([du, u**2])])


def _eig_metrics(t, y, args):
    lam2, c_d, trace = args[0], args[1], args[5]
    p, u, _, F, off2 = _eig_parts(y, args)
    quad = jnp.sum(c_d * p**2) + F
    loss = 0.5 * (u**2 * quad - 2.0 * u * jnp.sum(lam2 * p) + trace)
    U2 = jnp.sum(p**2) + off2
    return {"y": y, "loss": loss, "U_norm2": U2}


def _direct_vf(t, y, args):
    Lam, N = args[0], args[1]
    d = Lam.shape[0]
    U, u = y[:-1].reshape(d, d), y[-1]
    dU, du = reduced_vector_field(U, u, Lam, N)
    return jnp.concatenate([dU.reshape(-1), du[None]])


def _direct_metrics(t, y, args):
    Lam, N = args[0], args[1]
    d = Lam.shape[0]
    U, u = y[:-1].reshape(d, d), y[-1]
    return {"y": y, "loss": population_loss(U, u, Lam, N), "U_norm2": jnp.sum(U**2)}


def _stop_cond(vf, pu_slice, rate_fn):
    def cond(t, y, args, **kwargs):
        del kwargs
        f = vf(t, y, args)[pu_slice]
        r = rate_fn(y, args)
        scale = jnp.max(jnp.abs(y[pu_slice]))
        return jnp.max(jnp.abs(f)) <= args[-1] * r * scale

    return cond


def _eig_rate(y, args):
    return y[-2] ** 2 * args[4]


def _direct_rate(y, args):
    return y[-1] ** 2 * args[2]


# ----------------------------------------------------------------------------------------
# The solve, compiled once per (method, d, options) and reused for new problem data.
# ----------------------------------------------------------------------------------------


def _f64(x: Any) -> Array:
    """Problem data and tolerances enter the compiled solves as float64 arrays, never as Python
    floats: `eqx.filter_jit` treats Python floats as static, so each new value would recompile
    (about 1-5 s) instead of reusing the compiled solve."""
    return jnp.asarray(x, dtype=jnp.float64)


def _controller(rtol, atol):
    return diffrax.PIDController(rtol=rtol, atol=atol, norm=optx.max_norm)


@eqx.filter_jit
def _solve_eig(
    y0, args, ts, t1, dt0, rtol, atol, newton_rtol, newton_atol, *, use_event, max_steps, progress
):
    solver = diffrax.Kvaerno5(
        root_finder=FlooredChord(
            rtol=newton_rtol,
            atol=newton_atol,
            norm=optx.max_norm,
            linear_solver=BorderedDiagonal(border=2),
        )
    )
    event = diffrax.Event(_stop_cond(_eig_vf, slice(0, -1), _eig_rate)) if use_event else None
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_eig_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, fn=_eig_metrics),
        stepsize_controller=_controller(rtol, atol),
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
    )


@eqx.filter_jit
def _solve_direct(y0, args, ts, t1, dt0, rtol, atol, solver, *, use_event, max_steps, progress):
    event = diffrax.Event(_stop_cond(_direct_vf, slice(None), _direct_rate)) if use_event else None
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_direct_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, fn=_direct_metrics),
        stepsize_controller=_controller(rtol, atol),
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
    )


def _time_scales(lam: np.ndarray, gam: np.ndarray, sigma: float, eps: float) -> tuple[float, float]:
    """(plateau escape time, slow convergence time) from the solver notes' formulas."""
    u_star2 = float(np.sqrt(np.sum(gam**-2.0)))  # ||Gamma^-1||_F, the limit u*^2
    t_esc = math.log(max(math.sqrt(u_star2) / sigma, math.e)) / float(np.sqrt(np.sum(lam**4)))
    r_min = u_star2 * float(np.min(gam[:, None] * lam[:, None] * lam[None, :]))
    t_conv = math.log(1e4 / eps) / r_min
    return t_esc, t_conv


def gradient_flow(
    Lambda: Float[ArrayLike, "d d"],
    N: int,
    init: Init,
    *,
    method: EigenMethod | DirectMethod | str = "eigen",
    options: FlowOptions | None = None,
) -> FlowResult:
    """Integrate the reduced population gradient flow of ZFB Lemma 5.2 from `init`.

    Trains one LSA layer on the population loss (3.8) with `x ~ N(0, Lambda)`, `w ~ N(0, I)`
    and training prompt length `N`. Theorem 4.1 predicts the limit `u U -> Gamma^{-1}` (eq. 4.1)
    when `init` follows Assumption 3.3 with `sigma < sigma_max`.

    **Arguments:**

    - `Lambda`: `(d, d)` symmetric positive definite training covariance.
    - `N`: training prompt length (>= 1).
    - `init`: the start `(u, U)`, e.g. from `paper_init` (any start on `a = b = 0` works).
    - `method`: `"eigen"` (default, `EigenMethod()`), `"direct"`, or a method object.
    - `options`: `FlowOptions` (stopping rule, horizon, step budget, saving, progress).

    **Returns:**

    A `FlowResult`. Raises `FlowError` with diagnostics if the solver fails (max steps, NaN or
    divergence) or the horizon is reached before the stopping rule fires.
    """
    lam_np = check_covariance(Lambda)
    d = lam_np.shape[0]
    N = check_length(N, "N")
    method = _resolve_method(method)
    options = FlowOptions() if options is None else options
    U0 = check_square(init.U, "init.U", d)
    u0 = float(init.u)
    if not math.isfinite(u0):
        raise ValueError("`init.u` must be finite.")
    lam, Q = np.linalg.eigh(lam_np)
    gam = (1.0 + 1.0 / N) * lam + lam.sum() / N
    if _is_balanced(u0, U0):
        # sigma_max = sqrt(2 / (sqrt(d) ||Gamma||_op)) from the eigenvalues already at hand
        warn_sigma(abs(u0), math.sqrt(2.0 / (math.sqrt(d) * float(gam.max()))))
    sigma = max(abs(u0), float(np.linalg.norm(U0)), 1e-300)
    t_esc, t_conv = _time_scales(lam, gam, sigma, options.eps)
    if options.t_end is not None:
        t1 = float(options.t_end)
    elif options.t_max is not None:
        t1 = float(options.t_max)
    else:
        t1 = options.margin * (t_esc + t_conv)
    t_first = min(t_esc, 1.0 / float(np.max(gam * lam**2))) * 1e-3
    ts = np.concatenate([[0.0], np.geomspace(min(t_first, t1 / 10), t1, options.n_save - 1)])
    ts = np.minimum(ts, t1)  # geomspace can overshoot its end point by one ulp
    use_event = True
    rtol = method.rtol
    atol = rtol * method.atol_factor * min(sigma**2, 1.0)
    r_coef = float(np.min(gam[:, None] * lam[:, None] * lam[None, :]))
    dt0 = t_first

    t_start = time.perf_counter()
    if isinstance(method, EigenMethod):
        V0 = Q.T @ U0 @ Q
        p0 = np.diag(V0).copy()
        off = V0 - np.diag(p0)
        R = gam[:, None] * lam[:, None] * lam[None, :]
        c_d = gam * lam**2
        mask = ~np.eye(d, dtype=bool)
        table = ExpSumTable.build(R[mask], np.stack([(R * off**2)[mask], (off**2)[mask]], axis=1))
        args = (
            jnp.asarray(lam**2),
            jnp.asarray(c_d),
            *table.args(),
            jnp.asarray(r_coef),
            jnp.asarray(lam.sum()),
            jnp.asarray(options.eps),
        )
        y0 = jnp.asarray(np.concatenate([p0, [u0, 0.0]]))
        newton_atol = method.newton_atol_factor * min(max(sigma**2, method.newton_atol_floor), 1.0)
        sol = _solve_eig(
            y0,
            args,
            jnp.asarray(ts),
            _f64(t1),
            _f64(dt0),
            _f64(rtol),
            _f64(atol),
            _f64(method.newton_rtol),
            _f64(newton_atol),
            use_event=use_event,
            max_steps=options.max_steps,
            progress=options.progress,
        )
    else:
        dargs = tuple(map(_f64, (lam_np, N, r_coef, options.eps)))
        y0 = jnp.asarray(np.concatenate([U0.reshape(-1), [u0]]))
        sol = _solve_direct(
            y0,
            dargs,
            jnp.asarray(ts),
            _f64(t1),
            _f64(dt0),
            _f64(rtol),
            _f64(atol),
            method.solver,
            use_event=use_event,
            max_steps=options.max_steps,
            progress=options.progress,
        )
    jax.block_until_ready(sol.ys)
    wall = time.perf_counter() - t_start

    ts_out = np.asarray(sol.ts)
    ys = np.asarray(sol.ys["y"])
    loss = np.asarray(sol.ys["loss"])
    U2 = np.asarray(sol.ys["U_norm2"])
    # After an event diffrax writes the end state into the first unreached save slot and
    # fills the rest (including the t1 slot) with inf; without an event the t1 slot holds it.
    finite = np.nonzero(np.isfinite(ts_out))[0]
    idx = finite[np.concatenate([np.diff(ts_out[finite]) > 0, [True]])]
    ts_out, ys, loss, U2 = ts_out[idx], ys[idx], loss[idx], U2[idx]
    stats = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_accepted_steps": int(sol.stats["num_accepted_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "max_steps": options.max_steps,
        "wall_seconds": wall,
        "t_horizon": t1,
        "rtol": rtol,
        "atol": atol,
        "result": str(sol.result),
    }
    final = ys[-1] if len(ys) else np.full(y0.shape, np.nan)
    t_final = float(ts_out[-1]) if len(ts_out) else float("nan")
    diag = {
        "method": method.name,
        "d": d,
        "N": N,
        "t_final": t_final,
        "u_final": float(final[-2] if isinstance(method, EigenMethod) else final[-1]),
        **{k: stats[k] for k in ("num_steps", "num_rejected_steps", "t_horizon")},
    }
    if sol.result == diffrax.RESULTS.max_steps_reached:
        raise FlowError(
            "gradient flow hit max_steps before the stopping rule fired; raise "
            "FlowOptions(max_steps=...) or loosen eps",
            diag,
        )
    if not np.all(np.isfinite(final)) or not np.all(np.isfinite(loss)):
        raise FlowError("gradient flow produced NaN or inf (divergence)", diag)
    if sol.result == diffrax.RESULTS.event_occurred:
        stop_reason = "converged"
    elif sol.result == diffrax.RESULTS.successful:
        if options.t_end is None:
            raise FlowError(
                "gradient flow reached the horizon t_max without meeting the stopping rule "
                f"(eps={options.eps}); raise FlowOptions(t_max=...) or margin",
                diag,
            )
        stop_reason = "t_end"
    else:
        raise FlowError(f"solver failed: {sol.result}", diag)

    if isinstance(method, EigenMethod):
        u_traj = ys[:, -2]

        U_fn: Callable[[int], np.ndarray] = functools.partial(_U_eig, ys, off, R, Q)

    else:
        u_traj = ys[:, -1]

        U_fn = functools.partial(_U_direct, ys, d)

    U_final = U_fn(len(ts_out) - 1)
    return FlowResult(
        ts=ts_out,
        u=u_traj,
        loss=loss,
        U_norm2=U2,
        balance=u_traj**2 - U2,
        u_final=float(u_traj[-1]),
        U_final=U_final,
        t_final=t_final,
        stop_reason=stop_reason,
        stats=stats,
        method=method.name,
        _U_fn=U_fn,
    )


def _U_eig(ys: np.ndarray, off: np.ndarray, R: np.ndarray, Q: np.ndarray, i: int) -> np.ndarray:
    """U at saved row i: closed-form off-diagonals `V_ij(0) exp(-c_ij s)` plus the diagonal."""
    V = off * np.exp(-R * ys[i, -1]) + np.diag(ys[i, :-2])
    return Q @ V @ Q.T


def _U_direct(ys: np.ndarray, d: int, i: int) -> np.ndarray:
    return ys[i, :-1].reshape(d, d)


def _is_balanced(u0: float, U0: np.ndarray) -> bool:
    return abs(u0**2 - float(np.sum(U0**2))) <= 1e-10 * max(u0**2, 1e-300)


# ----------------------------------------------------------------------------------------
# Empirical flow over all entries
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EmpiricalResult:
    """A solved empirical gradient flow over all `2 (d+1)^2` entries of `(W_PV, W_KQ)`.

    `ts`, `loss (T,)` (empirical loss with the 1/2), `W_PV_traj`, `W_KQ_traj (T, d+1, d+1)`,
    the final `W_PV`, `W_KQ`, and `stats`.
    """

    ts: np.ndarray
    loss: np.ndarray
    W_PV_traj: np.ndarray
    W_KQ_traj: np.ndarray
    stats: dict[str, Any]

    @property
    def W_PV(self) -> np.ndarray:
        return self.W_PV_traj[-1]

    @property
    def W_KQ(self) -> np.ndarray:
        return self.W_KQ_traj[-1]


def _emp_loss(w, data):
    if isinstance(data, QuadraticLoss):
        return quadratic_form_loss(w[0], w[1], data)
    return empirical_loss(w[0], w[1], data)


def _emp_vf(t, y, data):
    g = jax.grad(_emp_loss)(y, data)
    return jax.tree_util.tree_map(jnp.negative, g)


def _emp_metrics(t, y, data):
    return {"y": y, "loss": _emp_loss(y, data)}


@eqx.filter_jit
def _solve_emp(y0, stats, ts, t1, dt0, rtol, atol, newton_atol, *, max_steps, progress):
    solver = diffrax.Kvaerno5(
        root_finder=FlooredChord(rtol=1e-6, atol=newton_atol, norm=optx.max_norm)
    )
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_emp_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=stats,
        saveat=diffrax.SaveAt(ts=ts, fn=_emp_metrics),
        stepsize_controller=_controller(rtol, atol),
        max_steps=max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
    )


def empirical_flow(
    stats: PromptStats | QuadraticLoss,
    W_PV: Float[ArrayLike, "d+1 d+1"],
    W_KQ: Float[ArrayLike, "d+1 d+1"],
    t_end: float,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    n_save: int = 200,
    max_steps: int = 100_000,
    progress: bool = False,
    quadratic: bool | None = None,
) -> EmpiricalResult:
    """Gradient flow of the empirical loss `L_hat` [ZFB eq. 3.7] over all entries, to `t_end`.

    The loss is evaluated from the per-prompt statistics `S = E E^T / N` and `x_q`
    (`lsa.prompt_stats`), never by re-applying the literal map. By default (`quadratic=True`,
    d <= 12) the statistics are folded once into the exact `QuadraticLoss`, so every
    right-hand side costs `O(((d+1)^2 d)^2)` whatever the number of prompts. Kvaerno5 with a
    dense Jacobian: the state has only `2 (d+1)^2` entries, so this is cheap and robust to the
    stiffness of ill-conditioned Lambda.

    **Returns:** an `EmpiricalResult`; raises `FlowError` on solver failure or NaN.
    """
    W_PV = np.asarray(W_PV, dtype=np.float64)
    W_KQ = np.asarray(W_KQ, dtype=np.float64)
    D = W_PV.shape[-1] if isinstance(stats, QuadraticLoss) else stats.S.shape[-1]
    if isinstance(stats, PromptStats) and (quadratic or (quadratic is None and D <= 13)):
        stats = quadratic_loss(stats)
    for name, W in (("W_PV", W_PV), ("W_KQ", W_KQ)):
        if W.shape != (D, D):
            raise ValueError(f"`{name}` must have shape ({D}, {D}) to match the prompts.")
        if not np.all(np.isfinite(W)):
            raise ValueError(f"`{name}` contains NaN or inf.")
    if not t_end > 0:
        raise ValueError(f"`t_end` must be > 0; got {t_end}.")
    ts = np.minimum(np.concatenate([[0.0], np.geomspace(t_end * 1e-6, t_end, n_save - 1)]), t_end)
    y0 = (jnp.asarray(W_PV), jnp.asarray(W_KQ))
    t_start = time.perf_counter()
    sol = _solve_emp(
        y0,
        stats,
        jnp.asarray(ts),
        _f64(t_end),
        _f64(t_end * 1e-6),
        _f64(rtol),
        _f64(atol),
        _f64(1e-9),
        max_steps=max_steps,
        progress=progress,
    )
    jax.block_until_ready(sol.ys)
    wall = time.perf_counter() - t_start
    stats_out = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "wall_seconds": wall,
        "result": str(sol.result),
    }
    Wp = np.asarray(sol.ys["y"][0])
    Wk = np.asarray(sol.ys["y"][1])
    loss = np.asarray(sol.ys["loss"])
    if sol.result != diffrax.RESULTS.successful:
        raise FlowError(f"empirical flow failed: {sol.result}", stats_out)
    if not (np.all(np.isfinite(Wp)) and np.all(np.isfinite(Wk))):
        raise FlowError("empirical flow produced NaN or inf", stats_out)
    return EmpiricalResult(ts=ts, loss=loss, W_PV_traj=Wp, W_KQ_traj=Wk, stats=stats_out)
