"""Gradient flow of the exact population loss over all `2 (d+1)^2` entries of `(W_PV, W_KQ)`
[ZFB eq. 3.9 on the loss of eq. 3.8; theory.md §5, §14 row 14], from any start.

The right-hand side is `-grad L` of `lsa.full_loss` (closed form, autodiff), so a step costs
O(d^3) whatever the number of prompts. The solve:

- **state**: all `2 (d+1)^2` entries obey `dtheta/dt = -grad L`, but the `(d+1) d` entries the
  prediction ignores (the first d rows of `W_PV`, the last column of `W_KQ`) have an exactly
  zero gradient (`lsa.full_loss` never reads them; `tests/test_full_loss.py`), so their ODE is
  `dtheta/dt = 0` and they keep their start. The solver integrates the `(d+1)^2` others
  (`prediction_indices`), whose Jacobian is then 121 square at d = 10 instead of 242 (an LU on
  242 cost 15-90 ms against 0.3 ms on 121 on the 2-core CPU, measured);
- **diffrax Kvaerno5** (order 5, L-stable) with a floored chord iteration and a dense Jacobian
  (the Hessian of L on those entries), float64, PI step-size control;
- **units**: with `s = tr(Lambda)/d`, the solve runs on `Lambda / s`, weights `s^{1/2} W` and time
  `s^2 t`, where the loss is `L / s` (`L(W; Lambda) = s L(s^{1/2} W; Lambda / s)` exactly: the
  prediction is bilinear in the last row of `W_PV` and in `W_KQ[:, :d]`, and cubic in x). Every
  tolerance, the first step, the horizon and the stopping threshold are set in those units, so
  `c Lambda` with the start `c^{-1/2} W0` is the same computation as `Lambda` with `W0`: same
  step count (tested);
- **stopping** (the rule of `lsa.flow.gradient_flow`, with `u^2` replaced by `||r|| ||K||_F`,
  `r = W_PV[d, :]`, `K = W_KQ[:, :d]`): stop when
  `||f||_max <= eps * r_min * ||r|| ||K||_F * ||y||_max` over the entries that enter the
  prediction, with `r_min = min_ij gamma_i lambda_i lambda_j` (solver units), the slowest
  linear rate of the reduced flow per unit `u^2`. The left side estimates the relative distance
  to the critical point the flow is approaching. Near the small-start saddle at 0 the ratio is
  of order `1/sigma^2`, so the rule does not fire there;
- **outcomes** with the names of `lsa._options.STATUS`: `converged` (stopping rule),
  `t_end` (the end time asked for), and failures raised as `FlowError` with diagnostics:
  `horizon` (no `t_end` and the default horizon was reached first), `max_steps`, `non_finite`,
  `newton_failure`, `step_size_underflow`, `solver_failure`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import ArrayLike, Float

from . import _problem
from ._diffrax import (
    FlooredChord,
    _checks_without_callbacks,
    _controller,
    _f64,
    _progress_meter,
    failure_status,
)
from ._options import STATUS_CODE, EigenMethod, FlowError
from ._validate import check_covariance, check_length
from .full_loss import _error_moment, pack_params, prediction_indices
from .precision import require_x64

__all__ = ["FullFlowResult", "ReducedTrajectory", "full_population_flow"]


class ReducedTrajectory(NamedTuple):
    """`(u, U, a, b)` along a saved trajectory: `(T,)`, `(T, d, d)`, `(T, d)`, `(T, d)`."""

    u: np.ndarray
    U: np.ndarray
    a: np.ndarray
    b: np.ndarray


@dataclasses.dataclass(frozen=True)
class FullFlowResult:
    """A solved full-entry population gradient flow (numpy float64, the caller's units).

    - `ts (T,)`: saved times (`0`, the save grid, and the end); `loss (T,)`: the population loss
      with the 1/2; `W_PV_traj`, `W_KQ_traj (T, d+1, d+1)`;
    - `W_PV`, `W_KQ`: the end point (properties); `reduced`: `(u, U, a, b)` trajectories;
    - `t_final`; `stop_reason`: `"converged"` or `"t_end"`; `status`: its code in
      `lsa._options.STATUS`;
    - `stats`: steps (accepted, rejected), wall seconds (with the compilation on the first call
      for a given d), tolerances, unit scale.
    """

    ts: np.ndarray
    loss: np.ndarray
    W_PV_traj: np.ndarray
    W_KQ_traj: np.ndarray
    t_final: float
    stop_reason: str
    stats: dict[str, Any]

    @property
    def W_PV(self) -> np.ndarray:
        return self.W_PV_traj[-1]

    @property
    def W_KQ(self) -> np.ndarray:
        return self.W_KQ_traj[-1]

    @property
    def status(self) -> int:
        return STATUS_CODE[self.stop_reason]

    @property
    def reduced(self) -> ReducedTrajectory:
        """`(u (T,), U (T, d, d), a (T, d), b (T, d))` along the saved trajectory."""
        P, K = self.W_PV_traj, self.W_KQ_traj
        return ReducedTrajectory(u=P[:, -1, -1], U=K[:, :-1, :-1], a=P[:, -1, :-1], b=K[:, -1, :-1])


# ----------------------------------------------------------------------------------------------
# The compiled solve (once per d, n_save and the static flags; new data reuse it)


def _loss_z(z, Lam, N):
    """The loss of the prediction entries `z = theta[prediction_indices(d)]` (the last row `r`
    of `W_PV`, then `W_KQ[:, :d]` row by row), every other entry set to 0 (they do not enter)."""
    d = Lam.shape[0]
    D = d + 1
    W_PV = jnp.zeros((D, D), z.dtype).at[-1].set(z[:D])
    W_KQ = jnp.zeros((D, D), z.dtype).at[:, :-1].set(z[D:].reshape(D, d))
    return 0.5 * _error_moment(W_PV, W_KQ, Lam, N, N)


def _vf(t, y, args):
    Lam, N = args[0], args[1]
    return -jax.grad(_loss_z)(y, Lam, N)


def _metrics(t, y, args):
    return {"y": y, "loss": _loss_z(y, args[0], args[1])}


def _stop(t, y, args, **kwargs):
    """`||f||_max <= eps r_min ||r|| ||K||_F ||y||_max` (the state is the prediction entries)."""
    del kwargs
    D = args[0].shape[0] + 1
    f = _vf(t, y, args)
    rate = args[2] * jnp.linalg.norm(y[:D]) * jnp.linalg.norm(y[D:])
    return jnp.max(jnp.abs(f)) <= args[3] * rate * jnp.max(jnp.abs(y))


@eqx.filter_jit
def _solve(y0, args, ts, t1, dt0, rtol, atol, newton_rtol, newton_atol, pid, *, max_steps,
           progress):  # fmt: skip
    solver = diffrax.Kvaerno5(
        root_finder=FlooredChord(rtol=newton_rtol, atol=newton_atol, norm=optx.max_norm)
    )
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, fn=_metrics),
        stepsize_controller=_controller(rtol, atol, *pid),
        event=diffrax.Event(_stop),
        max_steps=max_steps,
        throw=False,
        progress_meter=_progress_meter(progress),
    )


# ----------------------------------------------------------------------------------------------
# Public entry point


def _check_weights(W: Any, name: str, d: int) -> np.ndarray:
    try:
        arr = np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a real (d+1, d+1) array.") from exc
    if arr.shape != (d + 1, d + 1):
        raise ValueError(
            f"`{name}` must have shape ({d + 1}, {d + 1}) to match Lambda of shape ({d}, {d}); "
            f"got {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or inf: the start must be finite.")
    return arr


def _check_open_unit(x: Any, name: str) -> float:
    val = float(x)
    if not (0.0 < val < 1.0):
        raise ValueError(f"`{name}` must lie in (0, 1); got {x!r}.")
    return val


def _check_options(t_end: Any, atol: Any, max_steps: Any, n_save: Any, margin: Any) -> None:
    """`ValueError` naming the option for a bad end time, tolerance, budget, grid or margin."""
    if t_end is not None and not (math.isfinite(float(t_end)) and float(t_end) > 0):
        raise ValueError(f"`t_end` must be a finite number > 0; got {t_end!r}.")
    if atol is not None and not (math.isfinite(float(atol)) and float(atol) > 0):
        raise ValueError(f"`atol` must be a finite number > 0; got {atol!r}.")
    if int(max_steps) < 1:
        raise ValueError(f"`max_steps` must be >= 1; got {max_steps}.")
    if int(n_save) < 2:
        raise ValueError(f"`n_save` must be >= 2; got {n_save}.")
    if not margin > 0:
        raise ValueError(f"`margin` must be > 0; got {margin}.")


def _save_grid(
    ts: Any, t_end: Any, t1: float, t_first: float, n_save: int, time_unit: float
) -> np.ndarray:
    """The save times in solver units: `ts` (caller's units, times `time_unit`), or `0` and
    `n_save - 1` log-spaced times from `t_first` to the end `t1`; clipped to `t1`."""
    if ts is None:
        grid = np.concatenate([[0.0], np.geomspace(t_first, t1, n_save - 1)])
        return np.minimum(grid, t1)
    if t_end is None:
        raise ValueError("`ts` needs `t_end` (the save times must lie in [0, t_end]).")
    user = np.asarray(ts, np.float64)
    if user.ndim != 1 or user.size < 1 or not np.all(np.isfinite(user)):
        raise ValueError("`ts` must be a non-empty 1-d array of finite times.")
    if user[0] < 0 or user[-1] > float(t_end) or np.any(np.diff(user) <= 0):
        raise ValueError("`ts` must be strictly increasing within [0, t_end].")
    return np.minimum(user * time_unit, t1)


def full_population_flow(
    Lambda: Float[ArrayLike, "d d"],
    N: int,
    W_PV0: Float[ArrayLike, "d+1 d+1"],
    W_KQ0: Float[ArrayLike, "d+1 d+1"],
    *,
    t_end: float | None = None,
    ts: Float[ArrayLike, " T"] | None = None,
    rtol: float = 1e-10,
    atol: float | None = None,
    eps: float = 1e-10,
    margin: float = 20.0,
    n_save: int = 200,
    max_steps: int = 100_000,
    progress: bool = False,
) -> FullFlowResult:
    """Gradient flow `d theta/dt = -grad L(theta)` [ZFB eq. 3.9] of the exact population loss
    `L = (1/2) E(y_hat - <w, x_q>)^2` [ZFB eq. 3.8; theory.md §5] over all `2 (d+1)^2` entries
    of `(W_PV, W_KQ)`, from any start.

    From Assumption 3.3 (`lsa.paper_init(...).weights()`) it reproduces the reduced flow of
    Lemma 5.2 (`lsa.gradient_flow`) and keeps `a`, `b` and the unused entries exactly 0
    (theory.md §14 row 14). The entries the prediction ignores have an exactly zero gradient and
    never move.

    **Arguments:**

    - `Lambda`: `(d, d)` symmetric positive definite training covariance; `N`: training length.
    - `W_PV0`, `W_KQ0`: the start, `(d+1, d+1)` each, finite.
    - `t_end`: end time. The stopping rule may end the solve earlier (`stop_reason =
      "converged"`). Without it the solve runs to the stopping rule, with a horizon of `margin`
      times the escape plus convergence time scales (`lsa._problem.time_scales`); reaching the
      horizon raises `FlowError` (status `horizon`).
    - `ts`: save times (increasing, in `[0, t_end]`, needs `t_end`); default `0` and `n_save - 1`
      log-spaced times up to the end.
    - `rtol`, `atol`: step-size tolerances (max norm). `atol` is in the caller's units of the
      weights; default `rtol * 1e-2 * min(sigma^2, 1)` in solver units, `sigma` the start's
      scale, as in `lsa.EigenMethod`.
    - `eps`: threshold of the stopping rule (estimated relative distance to the critical point).
    - `max_steps`: step budget; `progress`: a tqdm bar.

    **Returns:** a `FullFlowResult`. Raises `FlowError` (with `status` and diagnostics) on
    failure, and `ValueError` naming the argument on bad input.
    """
    require_x64("lsa.full_population_flow")
    lam = check_covariance(Lambda)
    d = lam.shape[0]
    N = check_length(N, "N")
    Wp0 = _check_weights(W_PV0, "W_PV0", d)
    Wk0 = _check_weights(W_KQ0, "W_KQ0", d)
    rtol = _check_open_unit(rtol, "rtol")
    eps = _check_open_unit(eps, "eps")
    _check_options(t_end, atol, max_steps, n_save, margin)

    # units: tr(Lambda)/d = 1
    lam_e, Q, gam_e = _problem.spectra(lam[None], np.array([float(N)]))
    scale = float(lam_e.sum()) / d
    lam_s, gam_s = lam_e[0] / scale, gam_e[0] / scale
    root = math.sqrt(scale)
    theta0 = np.asarray(pack_params(Wp0, Wk0)) * root
    idx = prediction_indices(d)
    D = d + 1
    r0, K0 = theta0[idx[:D]], theta0[idx[D:]]
    sigma = max(float(np.linalg.norm(r0)), float(np.linalg.norm(K0)), 1e-300)
    t_esc, t_conv = _problem.time_scales(lam_s, gam_s, np.array([sigma]), eps)
    if t_end is not None:
        t1 = float(t_end) * scale**2
    else:
        t1 = float(margin * (t_esc[0] + t_conv[0]))
    c_d = gam_s * lam_s**2
    t_first = float(min(t_esc[0], 1.0 / c_d.max()) * 1e-3)
    grid = _save_grid(ts, t_end, t1, min(t_first, t1 / 10), n_save, scale**2)
    rates = gam_s[:, None] * lam_s[:, None] * lam_s[None, :]
    r_min = float(rates.min())

    method = EigenMethod(rtol=rtol)
    atol_s = rtol * method.atol_factor * min(sigma**2, 1.0) if atol is None else float(atol) * root
    newton_atol = method.newton_atol_factor * min(max(sigma**2, method.newton_atol_floor), 1.0)
    Lam_s = Q[0] @ np.diag(lam_s) @ Q[0].T
    args = (jnp.asarray(0.5 * (Lam_s + Lam_s.T)), _f64(N), _f64(r_min), _f64(eps))
    pid = (_f64(method.pcoeff), _f64(method.icoeff))
    solve_args = (
        jnp.asarray(theta0[idx]), args, jnp.asarray(grid), _f64(t1), _f64(min(t_first, t1 / 10)),
        _f64(rtol), _f64(atol_s), _f64(method.chord_rtol()), _f64(newton_atol), pid,
    )  # fmt: skip
    flags = {"max_steps": int(max_steps), "progress": bool(progress)}
    t0 = time.perf_counter()
    with _checks_without_callbacks():
        sol = _solve(*solve_args, **flags)
        jax.block_until_ready(sol.ys)
    wall = time.perf_counter() - t0

    ts_out = np.asarray(sol.ts)
    ys = np.asarray(sol.ys["y"])
    loss = np.asarray(sol.ys["loss"])
    # after an event diffrax writes the end state into the first unreached save slot and fills
    # the rest with inf; without an event the t1 slot repeats the last save time
    finite = np.nonzero(np.isfinite(ts_out))[0]
    keep = finite[np.concatenate([np.diff(ts_out[finite]) > 0, [True]])] if finite.size else finite
    ts_out, ys, loss = ts_out[keep], ys[keep], loss[keep]
    stats: dict[str, Any] = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_accepted_steps": int(sol.stats["num_accepted_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "max_steps": int(max_steps),
        "wall_seconds": wall,  # includes the compilation on the first call for this d
        "rtol": rtol,
        "atol": atol_s / root,
        "eps": eps,
        "unit_scale": scale,
        "t_horizon": t1 / scale**2,
        "result": str(sol.result),
    }
    status = _outcome(sol, ys, loss, t_end is not None)
    t_phys = ts_out / scale**2
    if t_end is not None and len(t_phys) and ts_out[-1] == t1:
        t_phys[-1] = float(t_end)
    if status not in ("converged", "t_end"):
        last = ys[-1] / root if len(ys) else np.full(idx.shape, np.nan)
        diag = {
            "status": status,
            "d": d,
            "N": N,
            "t_final": float(t_phys[-1]) if len(t_phys) else float("nan"),
            "loss_final": float(loss[-1] * scale) if len(loss) else float("nan"),
            **{k: stats[k] for k in ("num_steps", "num_rejected_steps", "t_horizon", "result")},
            "last_state": last,
        }
        raise FlowError(_MESSAGES[status].format(eps=eps, result=sol.result), diag)
    # the entries outside the prediction have an exactly zero gradient: they keep their start
    W = np.broadcast_to(theta0 / root, (len(ys), theta0.size)).copy()
    W[:, idx] = ys / root
    D2 = D * D
    return FullFlowResult(
        ts=t_phys,
        loss=loss * scale,
        W_PV_traj=W[:, :D2].reshape(-1, D, D),
        W_KQ_traj=W[:, D2:].reshape(-1, D, D),
        t_final=float(t_phys[-1]),
        stop_reason=status,
        stats=stats,
    )


_MESSAGES = {
    "max_steps": "full-entry flow hit max_steps before the stopping rule fired; raise "
    "`max_steps` or loosen `eps`",
    "horizon": "full-entry flow reached its horizon without meeting the stopping rule "
    "(eps={eps}); pass `t_end` or raise `margin`",
    "non_finite": "full-entry flow produced NaN or inf (divergence)",
    "newton_failure": "full-entry flow stopped: the implicit solver's Newton iteration failed",
    "step_size_underflow": "full-entry flow stopped: the step size underflowed",
    "solver_failure": "full-entry flow failed: {result}",
}


def _outcome(sol: Any, ys: np.ndarray, loss: np.ndarray, has_t_end: bool) -> str:
    R = diffrax.RESULTS
    res = sol.result
    if not len(ys) or not (np.all(np.isfinite(ys)) and np.all(np.isfinite(loss))):
        return "non_finite"
    if res == R.event_occurred:
        return "converged"
    if res == R.successful:
        return "t_end" if has_t_end else "horizon"
    return failure_status(res)
