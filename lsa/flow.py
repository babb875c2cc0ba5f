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
  and the time are integrated: a state of size d + 2 instead of d^2 + 1;
- the independent variable is `s` and `t(s)` is the last state (`dy/ds = f(y) / u^2`, the
  batched solver's formulation): the small-sigma plateau, long in t, and the fast escape, short
  in t, have similar lengths in s, so the steps are far more even (d = 200, kappa = 100, N = 20,
  rtol 1e-8, PI controller, chord rtol 1e-6: 458 steps, 26 rejected, 0.10 s, against 546
  and 59, 0.13 s in t; rtol 1e-6 with `EigenMethod`'s default chord rule: 174 steps, 11
  rejected, 0.046 s, against 249 and 49, 0.068 s in t).
  The stopping rule and the horizon (`t(s) = t_max`, located by a root finder) act on the same
  quantities as before, and the saved points (log-spaced in s) are mapped to physical times
  through the state. With a fixed end time (`FlowOptions(t_end=...)`) the solve integrates in t
  (state `p, u, s`) so that it ends exactly at `t_end` on a step;
- the Jacobian of that state is diagonal plus a border of two rows and columns (`u` and the
  time), so the Newton systems of the implicit solver (Kvaerno5, order 5, L-stable) are
  solved in O(d) by a Schur complement (`BorderedDiagonal`, a lineax solver) instead of an
  O(d^3) LU.

`DirectMethod` integrates the plain `(U, u)` ODE in the original coordinates with any diffrax
solver (default Tsit5); it is the independent cross-check and the benchmark baseline.

**Empirical flow** (`empirical_flow`): all `2 (d+1)^2` entries of `(W_PV, W_KQ)` under the
empirical loss over a fixed prompt set, from any start, computed from per-prompt statistics.

**Full-entry population flow** (`full_population_flow`, `lsa.full_flow`): all `2 (d+1)^2`
entries under the exact population loss of `lsa.full_loss` (Wick, docs/full_loss.md), from any
start; from Assumption 3.3 it is the reduced flow.

Units. Scaling Lambda by c (same Theta, sigma the same fraction of sigma_max) is an exact
reparametrisation, `u(t) = c^{-1/2} u~(c^2 t)`. The solve therefore runs in units where
`tr(Lambda)/d = 1` (`lsa._problem`, the problem builder shared with `lsa.batch`): Lambda, u, U
and t are scaled there, every tolerance, floor, time scale and the stopping statistic are
expressed in those units, and the trajectory, times and loss are mapped back. The step count
does not depend on the units of Lambda (tested on random settings).

Stopping. A solve ends when the estimated relative distance to the fixed point,
`||f(y)||_max / (r_min(u) ||y||_max)` with `r_min(u) = u^2 min_ij gamma_i lambda_i lambda_j` the
slowest linear rate, falls below `eps`. At the small-sigma saddle the estimate is of order
`1/sigma^2` (huge), so the rule does not fire there. A horizon `t_max` (from the plateau and
convergence time scales, with a margin) and `max_steps` stop runaway solves; hitting either is
reported as a failure with diagnostics (`FlowError`, whose `status` names the cause with the
names of `lsa.batch.STATUS`), never as a quiet number.

The solves hold no host callbacks unless `progress=True` (see `_checks_without_callbacks`), so
JAX's persistent compilation cache can store them when the caller enables it.
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
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from . import _export, _problem
from ._diffrax import (
    BorderedDiagonal,
    FlooredChord,
    _checks_without_callbacks,
    _controller,
    _f64,
    _progress_meter,
    failure_status,
)
from ._empirical import EmpiricalResult, empirical_flow
from ._export import enable_exported_solves
from ._expsum import ExpSumTable, exp_sum
from ._options import (
    METHODS,
    DirectMethod,
    EigenMethod,
    FlowError,
    FlowOptions,
    _resolve_method,
)
from ._validate import check_covariance, check_length, check_square, warn_sigma
from .full_flow import FullFlowResult, full_population_flow
from .loss import (
    gamma_matrix,
    population_loss,
)
from .model import from_reduced
from .precision import require_x64
from .prompts import Init
from .random_covariance import RandomCovarianceFlowResult, random_covariance_flow

__all__ = [
    "METHODS",
    "BorderedDiagonal",
    "DirectMethod",
    "EigenMethod",
    "EmpiricalResult",
    "ExpSumTable",
    "FlowError",
    "FlowOptions",
    "FlowResult",
    "FullFlowResult",
    "RandomCovarianceFlowResult",
    "empirical_flow",
    "enable_exported_solves",
    "exp_sum",
    "full_population_flow",
    "gradient_flow",
    "random_covariance_flow",
    "reduced_vector_field",
]


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """A solved reduced gradient flow.

    Arrays are numpy float64. Trajectory arrays have one row per saved point (log-spaced in
    `s = int u^2 dt` for the eigenbasis solve, in t with `t_end` or `DirectMethod`, plus
    `t = 0` and the final time); `ts` are always physical times. Rows after the end of the
    solve are dropped.

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


# In s = int_0^t u^2 (the solve's independent variable when no `t_end` is asked): the state is
# `(p, u, t)` and the field is the t-field divided by u^2. The plateau (u small, slow in t) and
# the fast phase have similar lengths in s, so the step-size controller sees a far milder
# problem (d = 200, kappa = 100: no rejected steps at rtol 1e-8, against ~10% in t).
def _eig_s_vf(s, y, args):
    lam2, c_d, centers, moments = args[0], args[1], args[2], args[3]
    p, u = y[:-2], y[-2]
    F, _ = exp_sum(s, centers, moments)
    iu = 1.0 / u
    dp = -c_d * p + lam2 * iu
    du = -(jnp.sum(c_d * p**2) + F) * iu + jnp.sum(lam2 * p) * iu**2
    return jnp.concatenate([dp, jnp.stack([du, iu**2])])


def _eig_s_metrics(s, y, args):
    lam2, c_d, centers, moments, trace = args[0], args[1], args[2], args[3], args[5]
    p, u = y[:-2], y[-2]
    F, off2 = exp_sum(s, centers, moments)
    quad = jnp.sum(c_d * p**2) + F
    loss = 0.5 * (u**2 * quad - 2.0 * u * jnp.sum(lam2 * p) + trace)
    return {"y": y, "s": s, "loss": loss, "U_norm2": jnp.sum(p**2) + off2}


def _eig_s_stop(t, y, args, **kwargs):
    """The stopping rule of the t-solve, `||f||_max <= eps u^2 r_min ||y||_max` over (p, u),
    with `f = u^2 g` and `g` the s-derivative: `||g||_max <= eps r_min ||y||_max`."""
    del kwargs
    g = _eig_s_vf(t, y, args)[:-1]  # diffrax names the independent variable (here s) `t`
    return jnp.max(jnp.abs(g)) <= args[6] * args[4] * jnp.max(jnp.abs(y[:-1]))


def _eig_s_horizon(t, y, args, **kwargs):
    """`t(s) - t1`: the horizon, located by a root finder so that the solve ends at `t1`."""
    del t, kwargs
    return y[-1] - args[7]


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


def _eig_kvaerno5(newton_rtol: Any, newton_atol: Any) -> diffrax.Kvaerno5:
    """Kvaerno5 for the eigenbasis state: a floored chord iteration whose Newton systems
    (diagonal plus a border of width 2: `u` and the clock) are solved in O(d)."""
    return diffrax.Kvaerno5(
        root_finder=FlooredChord(
            rtol=newton_rtol,
            atol=newton_atol,
            norm=optx.max_norm,
            linear_solver=BorderedDiagonal(border=2),
        )
    )


def _eig_diffeqsolve(vf, metrics, ts, t1, dt0, y0, args, tols, event, max_steps, progress):
    """The eigenbasis solve in either independent variable (`t` or `s`): Kvaerno5 with the
    O(d) Newton solver, PI control, save points `ts` (plus the end) through `metrics`."""
    rtol, atol, newton_rtol, newton_atol, pid = tols
    return diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        _eig_kvaerno5(newton_rtol, newton_atol),
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, fn=metrics),
        stepsize_controller=_controller(rtol, atol, *pid),
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=_progress_meter(progress),
    )


@eqx.filter_jit
def _solve_eig(
    y0, args, ts, t1, dt0, rtol, atol, newton_rtol, newton_atol, pid,
    *, use_event, max_steps, progress,
):  # fmt: skip
    event = diffrax.Event(_stop_cond(_eig_vf, slice(0, -1), _eig_rate)) if use_event else None
    tols = (rtol, atol, newton_rtol, newton_atol, pid)
    return _eig_diffeqsolve(
        _eig_vf, _eig_metrics, ts, t1, dt0, y0, args, tols, event, max_steps, progress
    )


@eqx.filter_jit
def _solve_eig_s(
    y0, args, ss, s1, ds0, rtol, atol, newton_rtol, newton_atol, pid, *, max_steps, progress
):  # fmt: skip
    event = diffrax.Event(
        (_eig_s_stop, _eig_s_horizon), root_finder=optx.Newton(rtol=1e-14, atol=1e-300)
    )
    tols = (rtol, atol, newton_rtol, newton_atol, pid)
    return _eig_diffeqsolve(
        _eig_s_vf, _eig_s_metrics, ss, s1, ds0, y0, args, tols, event, max_steps, progress
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
        progress_meter=_progress_meter(progress),
    )


def _time_scales(lam: np.ndarray, gam: np.ndarray, sigma: float, eps: float) -> tuple[float, float]:
    """(plateau escape time, slow convergence time) from the solver notes' formulas."""
    t_esc, t_conv = _problem.time_scales(lam, gam, np.asarray([sigma]), eps)
    return float(t_esc[0]), float(t_conv[0])


@dataclasses.dataclass(frozen=True)
class _Single:
    """A validated single-flow request (host values, caller's units)."""

    Lambda: np.ndarray
    N: int
    u0: float
    U0: np.ndarray
    method: EigenMethod | DirectMethod
    options: FlowOptions


def _validate(Lambda: Any, N: Any, init: Init, method: Any, options: Any) -> _Single:
    lam_np = check_covariance(Lambda)
    d = lam_np.shape[0]
    N = check_length(N, "N")
    method = _resolve_method(method)
    options = FlowOptions() if options is None else options
    U0 = check_square(init.U, "init.U", d)
    u0 = float(init.u)
    if not math.isfinite(u0):
        raise ValueError("`init.u` must be finite.")
    return _Single(lam_np, N, u0, U0, method, options)


def _save_grid(prob: _problem.Problem, n_save: int) -> np.ndarray:
    """`t = 0` and `n_save - 1` log-spaced times up to the end `t1` (solver units)."""
    t1, t_first = float(prob.t1[0]), float(prob.t_first[0])
    ts = np.concatenate([[0.0], np.geomspace(min(t_first, t1 / 10), t1, n_save - 1)])
    return np.minimum(ts, t1)  # geomspace can overshoot its end point by one ulp


def _run(req: _Single, prob: _problem.Problem) -> tuple[Any, dict[str, Any]]:
    """Integrate in solver units; returns diffrax's solution and the pieces to map it back."""
    method, options = req.method, req.options
    ts = _save_grid(prob, options.n_save)
    common = (jnp.asarray(ts), _f64(prob.t1[0]), _f64(prob.t_first[0]), _f64(prob.rtol),
              _f64(prob.atol[0]))  # fmt: skip
    flags = {"use_event": True, "max_steps": options.max_steps, "progress": options.progress}
    extra: dict[str, Any] = {}
    with _checks_without_callbacks():
        if isinstance(method, EigenMethod) and options.t_end is None and _IN_S:
            return _run_eig_s(req, prob)
        if isinstance(method, EigenMethod):
            centers, moments = prob.tables()
            args = (
                jnp.asarray(prob.lam_s[0] ** 2),
                jnp.asarray(prob.c_d[0]),
                jnp.asarray(centers[0]),
                jnp.asarray(moments[0]),
                _f64(prob.r_coef[0]),
                _f64(prob.lam_s[0].sum()),
                _f64(options.eps),
            )
            y0 = jnp.asarray(np.concatenate([prob.p0[0], [prob.u0[0], 0.0]]))
            pid = (_f64(method.pcoeff), _f64(method.icoeff))
            sol = _solve_eig(y0, args, *common, _f64(method.chord_rtol()),
                             _f64(prob.newton_atol[0]), pid, **flags)  # fmt: skip
            extra["U_fn"] = functools.partial(
                _U_eig, off=prob.off0[0], R=prob.rates[0], Q=prob.Q[0], root_a=prob.scale[0] ** 0.5
            )
            extra["u_col"] = -2
        else:
            lam_s = req.Lambda / prob.scale[0]
            dargs = tuple(map(_f64, (lam_s, req.N, prob.r_coef[0], options.eps)))
            U0_s = req.U0 * prob.scale[0] ** 0.5
            y0 = jnp.asarray(np.concatenate([U0_s.reshape(-1), [prob.u0[0]]]))
            sol = _solve_direct(y0, dargs, *common, method.solver, **flags)
            extra["U_fn"] = functools.partial(_U_direct, d=prob.d, root_a=prob.scale[0] ** 0.5)
            extra["u_col"] = -1
        jax.block_until_ready(sol.ys)
    return sol, extra


#: Integrate the eigenbasis solve in s (default) or in t, as before this formulation (kept for
#: comparisons and benchmarks; a fixed `t_end` always integrates in t).
_IN_S = True


def _s_grid(prob: _problem.Problem, n_save: int) -> tuple[np.ndarray, float, float]:
    """`s = 0` and `n_save - 1` log-spaced values of s (solver units), the end `s1` of the
    s-range and the first step: from the first save time (`t_first` at the smaller of `sigma^2`
    and `u*^2`) to four times the s that the horizon `t1` reaches at the larger of the two.
    The solve ends at the horizon `t(s) = t1` (an event) long before `s1` in practice."""
    u_star2 = float(np.sqrt(np.sum(prob.gam_s[0] ** -2.0)))
    sig2 = float(prob.sigma[0]) ** 2
    s_first = min(sig2, u_star2) * float(prob.t_first[0])
    s1 = 4.0 * max(u_star2, sig2) * float(prob.t1[0])
    ss = np.concatenate([[0.0], np.geomspace(min(s_first, s1 / 10), s1, n_save - 1)])
    return np.minimum(ss, s1), s1, s_first


def _run_eig_s(req: _Single, prob: _problem.Problem) -> tuple[Any, dict[str, Any]]:
    """The eigenbasis solve with s as the independent variable (state `(p, u, t)`)."""
    method, options = req.method, req.options
    ss, s1, ds0 = _s_grid(prob, options.n_save)
    centers, moments = prob.tables()
    args = (
        jnp.asarray(prob.lam_s[0] ** 2),
        jnp.asarray(prob.c_d[0]),
        jnp.asarray(centers[0]),
        jnp.asarray(moments[0]),
        _f64(prob.r_coef[0]),
        _f64(prob.lam_s[0].sum()),
        _f64(options.eps),
        _f64(prob.t1[0]),
    )
    y0 = jnp.asarray(np.concatenate([prob.p0[0], [prob.u0[0], 0.0]]))
    assert isinstance(method, EigenMethod)  # the s-solve is the eigenbasis method's
    pid = (_f64(method.pcoeff), _f64(method.icoeff))
    with _checks_without_callbacks():
        sol = _export.call_solve(
            "eig_s", _solve_eig_s,
            (y0, args, jnp.asarray(ss), _f64(s1), _f64(ds0), _f64(prob.rtol), _f64(prob.atol[0]),
             _f64(method.chord_rtol()), _f64(prob.newton_atol[0]), pid),
            max_steps=options.max_steps, progress=options.progress,
        )  # fmt: skip
        jax.block_until_ready(sol.ys)
    extra: dict[str, Any] = {
        "U_fn": functools.partial(
            _U_eig, off=prob.off0[0], R=prob.rates[0], Q=prob.Q[0], root_a=prob.scale[0] ** 0.5
        ),
        "u_col": -2,
        "in_s": True,
    }
    return sol, extra


def _outcome(sol: Any, final: np.ndarray, loss: np.ndarray, u_col: int, req: _Single) -> str:
    """The status name of a finished solve: diffrax's result, then checks of the final state."""
    R = diffrax.RESULTS
    res = sol.result
    if not (np.all(np.isfinite(final)) and np.all(np.isfinite(loss))):
        return "non_finite"
    if res == R.event_occurred:
        mask = sol.event_mask
        if isinstance(mask, tuple) and not bool(mask[0]):  # the s-solve's horizon event
            return "t_end" if req.options.t_end is not None else "horizon"
        return "converged"
    if res == R.successful:
        return "t_end" if req.options.t_end is not None else "horizon"
    if final[u_col] * math.copysign(1.0, req.u0) <= 0:
        return "u_nonpositive"
    return failure_status(res)


_MESSAGES = {
    "max_steps": "gradient flow hit max_steps before the stopping rule fired; raise "
    "FlowOptions(max_steps=...) or loosen eps",
    "horizon": "gradient flow reached the horizon t_max without meeting the stopping rule "
    "(eps={eps}); raise FlowOptions(t_max=...) or margin",
    "non_finite": "gradient flow produced NaN or inf (divergence)",
    "u_nonpositive": "gradient flow ended with u crossed to the other sign of u(0)",
    "newton_failure": "gradient flow stopped: the implicit solver's Newton iteration failed",
    "step_size_underflow": "gradient flow stopped: the step size underflowed",
    "solver_failure": "solver failed: {result}",
}


def gradient_flow(
    Lambda: Float[ArrayLike, "d d"],
    N: int,
    init: Init,
    *,
    method: EigenMethod | DirectMethod | str = "eigen",
    options: FlowOptions | None = None,
) -> FlowResult:
    """Integrate the reduced population gradient flow of ZFB Lemma 5.2 (eq. 5.4) from `init`.

    Trains one LSA layer on the population loss (3.8) by gradient flow (3.9) with
    `x ~ N(0, Lambda)`, `w ~ N(0, I)` and training prompt length `N`. Theorem 4.1 predicts the
    limit `u U -> Gamma^{-1}` (eq. 4.1) when `init` follows Assumption 3.3 with
    `sigma < sigma_max`. The solve runs in units where `tr(Lambda)/d = 1` (`lsa._problem`), so
    its step count and accuracy do not depend on the units of Lambda; results are in the
    caller's units.

    **Arguments:**

    - `Lambda`: `(d, d)` symmetric positive definite training covariance.
    - `N`: training prompt length (>= 1).
    - `init`: the start `(u, U)`, e.g. from `paper_init` (any start on `a = b = 0` works).
    - `method`: `"eigen"` (default, `EigenMethod()`), `"direct"`, or a method object.
    - `options`: `FlowOptions` (stopping rule, horizon, step budget, saving, progress).

    **Returns:**

    A `FlowResult`. Raises `FlowError` with diagnostics (`status`: `max_steps`, `horizon`,
    `non_finite`, `u_nonpositive`, `newton_failure`, `step_size_underflow` or
    `solver_failure`; the last state) if the solver fails or the horizon is reached before the
    stopping rule fires.
    """
    require_x64("lsa.gradient_flow")
    req = _validate(Lambda, N, init, method, options)
    prob = _problem.build_problem(
        req.Lambda[None], np.array([req.N]), np.array([req.u0]), req.U0[None], req.method,
        req.options,
    )  # fmt: skip
    if _is_balanced(req.u0, req.U0):
        # sigma_max = sqrt(2 / (sqrt(d) ||Gamma||_op)) from the eigenvalues already at hand
        warn_sigma(abs(req.u0), math.sqrt(2.0 / (math.sqrt(prob.d) * float(prob.gam.max()))))
    t_start = time.perf_counter()
    sol, extra = _run(req, prob)
    wall = time.perf_counter() - t_start
    return _package(req, prob, sol, extra, wall)


def _package(
    req: _Single, prob: _problem.Problem, sol: Any, extra: dict[str, Any], wall: float
) -> FlowResult:
    """Map the solution back to the caller's units; raise `FlowError` unless it succeeded."""
    ts_out = np.asarray(sol.ts)
    ys = np.asarray(sol.ys["y"])
    loss = np.asarray(sol.ys["loss"])
    U2 = np.asarray(sol.ys["U_norm2"])
    # After an event diffrax writes the end state into the first unreached save slot and
    # fills the rest (including the t1 slot) with inf; without an event the t1 slot holds it.
    finite = np.nonzero(np.isfinite(ts_out))[0]
    idx = finite[np.concatenate([np.diff(ts_out[finite]) > 0, [True]])]
    ts_out, ys, loss, U2 = ts_out[idx], ys[idx], loss[idx], U2[idx]
    u_col = extra["u_col"]
    if extra.get("in_s"):
        # the independent variable was s: physical times are the state's t; U_at needs s
        ts_t = prob.to_t(ys[:, -1])
        if len(ts_t):
            ts_t[0] = 0.0
        ys = ys.copy()
        ys[:, -1] = np.asarray(sol.ys["s"])[idx]
    else:
        ts_t = prob.to_t(ts_out)
    if req.options.t_end is not None and len(ts_t) and ts_out[-1] == prob.t1[0]:
        ts_t[-1] = req.options.t_end  # exact, not t_end a^2 / a^2
    final = ys[-1] if len(ys) else np.full(ys.shape[1:], np.nan)
    stats = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_accepted_steps": int(sol.stats["num_accepted_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "max_steps": req.options.max_steps,
        "wall_seconds": wall,
        "t_horizon": float(prob.to_t(prob.t1)[0]),
        "rtol": prob.rtol,
        "atol": float(prob.to_u(prob.atol)[0]),
        "unit_scale": float(prob.scale[0]),
        "result": str(sol.result),
    }
    status = _outcome(sol, final, loss, u_col, req)
    if status not in ("converged", "t_end"):
        diag = {
            "status": status,
            "method": req.method.name,
            "d": prob.d,
            "N": req.N,
            "t_final": float(ts_t[-1]) if len(ts_t) else float("nan"),
            "u_final": float(prob.to_u(final[u_col])) if len(ys) else float("nan"),
            **{k: stats[k] for k in ("num_steps", "num_rejected_steps", "t_horizon", "result")},
            "last_state": prob.to_u(final),
        }
        msg = _MESSAGES[status].format(eps=req.options.eps, result=sol.result)
        raise FlowError(msg, diag)
    u_traj = prob.to_u(ys[:, u_col])
    U_fn: Callable[[int], np.ndarray] = functools.partial(extra["U_fn"], ys)
    return FlowResult(
        ts=ts_t,
        u=u_traj,
        loss=prob.to_loss(loss),
        U_norm2=prob.to_u2(U2),
        balance=u_traj**2 - prob.to_u2(U2),
        u_final=float(u_traj[-1]),
        U_final=U_fn(len(ts_out) - 1),
        t_final=float(ts_t[-1]),
        stop_reason=status,
        stats=stats,
        method=req.method.name,
        _U_fn=U_fn,
    )


def _U_eig(
    ys: np.ndarray, i: int, *, off: np.ndarray, R: np.ndarray, Q: np.ndarray, root_a: float
) -> np.ndarray:
    """U at saved row i: closed-form off-diagonals `V_ij(0) exp(-c_ij s)` plus the diagonal,
    mapped from solver units (`/ a^{1/2}`)."""
    V = off * np.exp(-R * ys[i, -1]) + np.diag(ys[i, :-2])
    return (Q @ V @ Q.T) / root_a


def _U_direct(ys: np.ndarray, i: int, *, d: int, root_a: float) -> np.ndarray:
    return ys[i, :-1].reshape(d, d) / root_a


def _is_balanced(u0: float, U0: np.ndarray) -> bool:
    return abs(u0**2 - float(np.sum(U0**2))) <= 1e-10 * max(u0**2, 1e-300)
