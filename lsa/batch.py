"""Many reduced gradient flows at once: a vectorised stiff integrator with refilled lanes.

`batch_gradient_flow` integrates `S` independent reduced population flows (ZFB Lemma 5.2),
each with its own `Lambda`, `N` and start, in the eigenbasis of its `Lambda`, where `Lambda`
and `Gamma` are diagonal: the state is the diagonal `p` of `V = Q^T U Q` and `u`; the
off-diagonal entries decay in closed form, `V_ij(t) = V_ij(0) exp(-c_ij s)` with
`c_ij = gamma_i lam_i lam_j` and `s = int_0^t u^2` (as in `lsa.flow.EigenMethod`).

Why not `jax.vmap(gradient_flow)`: a vmapped adaptive diffrax solve runs every member in
lock-step and copies the whole solver state (save buffers included) through a select at every
step; measured at d = 10 it was slower than a Python loop (560 ms against ~150 ms a flow). One
diffrax solve of a stacked `(B, d + 2)` state was correct but spent most of its time in solver
bookkeeping and in the `d^2` exponentials of the off-diagonal sum, re-evaluated at every Newton
iteration. So this module has its own integrator, written for this one vector field:

- **Independent variable s.** With `s = int u^2 dt` as time (`ds/dt = u^2 > 0`), the
  off-diagonal sum `F(s)` depends on the independent variable only: its exponentials are
  evaluated once per stage abscissa (5 per step), never inside Newton iterations, and the
  Jacobian needs no derivative of it. The state is `y = (p, u, t)`:
  `dp/ds = -c p + lam^2 / u`, `du/ds = -(sum c p^2 + F(s)) / u + (sum lam^2 p) / u^2`,
  `dt/ds = 1 / u^2` (`u > 0` along the flow for sigma < sigma_max, ZFB Lemma A.4).
- **Method**: Kvaerno's ESDIRK 5(4) (the tableau of `diffrax.Kvaerno5`: L-stable, stiffly
  accurate, explicit first stage, FSAL), per-flow step size, error control (max norm, absolute
  tolerance `rtol * atol_factor * sigma^2` as in `EigenMethod`), stopping rule and save points.
- **Newton**: simplified Newton per stage with the analytic Jacobian, frozen per step: diagonal
  in `p` plus a border in `u` (and a `t` row), solved in `O(d)` per flow by a scalar Schur
  complement.
- **Lanes**: `slots` flows advance side by side in one `lax.while_loop`; a lane whose flow has
  finished immediately takes the next flow of the queue (continuous batching), so flows of
  different stiffness never wait for each other; only the tail of the queue runs part-empty.
- **Off-diagonal sums** are direct sums of `d^2 - d` exponentials for small d, and the binned
  Taylor `ExpSumTable` (`lsa._expsum`, the tables `gradient_flow` uses, with the same padding
  rule) above `DIRECT_MAX_TERMS`.
- **Units**: the problem (eigendecomposition, Gamma, horizon, tolerances, tables) comes from
  the builder `lsa._problem` shared with `gradient_flow`, in units where `tr(Lambda)/d = 1`;
  results are mapped back to the caller's units.
- **Saving**: steps land exactly on each flow's save points, log-spaced in `s` (which resolves
  the plateau, the escape and the convergence alike), so saved states are solver states.
- **Stopping**: `gradient_flow`'s rule per flow (estimated relative distance to the fixed point
  `<= eps`), checked after every accepted step with the FSAL derivative; a horizon from
  `gradient_flow`'s time scales, the end of the save grid and a per-flow step budget end
  runaway flows, and a step size that underflows after repeated rejections ends a stalled one
  with the cause of the rejections (non-finite state, u <= 0, Newton failure, error test).
  Each is reported per flow in `status` (`STATUS`), never raised; `member(b)` raises.

Agreement with `lsa.gradient_flow` is to the solver tolerance (tested: end points to 1e-8).
Devices: `select_device` reads `LSA_FLOW_DEVICE` (`cpu`, `gpu` or `auto`); computations follow
`jax.default_device`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ._esdirk import _Carry, _integrate, _metrics
from ._options import STATUS, STATUS_CODE, EigenMethod, FlowError, FlowOptions
from ._problem import Problem, build_problem
from ._problem import time_scales as _time_scales
from ._validate import check_length
from .flow import FlowResult
from .precision import require_x64
from .prompts import Init

__all__ = [
    "STATUS",
    "BatchFlowResult",
    "batch_gradient_flow",
    "select_device",
    "time_scales",
]

#: Off-diagonal sums use direct exponentials while `d^2 - d` is at most this many; above it the
#: binned `ExpSumTable` (cost independent of d) is cheaper.
DIRECT_MAX_TERMS = 400

#: Flows integrated side by side (lanes of the vectorised loop); measured best on CPU at d = 10.
DEFAULT_SLOTS = 128
#: On a GPU every loop iteration costs about the same for any number of lanes up to thousands
#: (kernel-launch bound), so many more lanes are used there (with chunks at least this large).
DEFAULT_SLOTS_GPU = 4096

#: `STATUS` (shared with `lsa.flow`'s `FlowError.status`) gives the per-member outcome codes of
#: `BatchFlowResult.status`; `_CODE` maps names to codes.
_CODE = STATUS_CODE

DEVICE_ENV = "LSA_FLOW_DEVICE"
_DEVICE_CHOICES = ("auto", "cpu", "gpu")


def select_device(name: str | None = None) -> jax.Device:
    """The JAX device to run on: `"cpu"`, `"gpu"` or `"auto"` (GPU when one is visible).

    `None` reads the environment variable `LSA_FLOW_DEVICE` (default `"auto"`). Asking for
    `"gpu"` without a GPU raises a `ValueError` that says how to install the CUDA build
    (`pip install "lsa-flow[cuda]"`).
    """
    source = "argument" if name is not None else DEVICE_ENV
    choice = (name if name is not None else os.environ.get(DEVICE_ENV, "auto")).strip().lower()
    if choice not in _DEVICE_CHOICES:
        raise ValueError(
            f"unknown device {choice!r} (from {source}); choose one of "
            f"{', '.join(_DEVICE_CHOICES)}."
        )
    if choice == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        return gpus[0]
    if choice == "gpu":
        raise ValueError(
            "device 'gpu' requested but JAX sees no GPU; install the CUDA build with "
            '`pip install "lsa-flow[cuda]"`, or use device "cpu" or "auto".'
        )
    return jax.devices("cpu")[0]


def _current_platform() -> str:
    """Platform of the device new arrays go to (honours `jax.default_device(...)`)."""
    dev = getattr(jax.config, "jax_default_device", None)
    if dev is None:
        return jax.devices()[0].platform
    return dev.platform if hasattr(dev, "platform") else str(dev)


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchFlowResult:
    """`B` solved reduced flows (numpy float64, the caller's units). Member `b`'s trajectory is
    row `b` up to `n_saved[b]` (later entries are NaN).

    - `ts (B, T)`: saved times; the grid is log-spaced in `s = int u^2 dt` (the integrator's
      independent variable), which resolves the plateau, the escape and the convergence; for a
      converged member the last saved row is the end point `t_final`;
    - `u`, `loss` (population loss with the 1/2), `U_norm2`, `off2` (squared off-diagonal
      norm of `V = Q^T U Q`), `stop_ratio` (the stopping statistic), `s`: `(B, T)`;
    - `p (B, T, d)`: diagonal of `V`;
    - `lam (B, d)`, `Q (B, d, d)`: `Lambda_b = Q diag(lam) Q^T`; `gamma (B, d)`: eigenvalues of
      `Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I` in the same order;
    - `u_final (B,)`, `U_final (B, d, d)` (original basis), `t_final (B,)`, `loss_final (B,)`:
      the end point of a **converged** member; NaN for every other member;
    - `last_u`, `last_t`, `last_s (B,)`, `last_p (B, d)`: the state when each member's solve
      ended, converged or not (the diagnostics of a failure; `diagnostics(b)`, `last_U(b)`);
    - `status (B,)`: codes of `STATUS` (`stop_reason` gives the names; `ok` = converged);
    - `n_accepted`, `n_rejected (B,)`: per-member step counts; `stats`: totals and timings.
    """

    ts: np.ndarray
    u: np.ndarray
    loss: np.ndarray
    U_norm2: np.ndarray
    off2: np.ndarray
    stop_ratio: np.ndarray
    p: np.ndarray
    s: np.ndarray
    lam: np.ndarray
    Q: np.ndarray
    gamma: np.ndarray
    u_final: np.ndarray
    U_final: np.ndarray
    t_final: np.ndarray
    loss_final: np.ndarray
    last_u: np.ndarray
    last_t: np.ndarray
    last_s: np.ndarray
    last_p: np.ndarray
    n_saved: np.ndarray
    status: np.ndarray
    n_accepted: np.ndarray
    n_rejected: np.ndarray
    stats: dict[str, Any]
    off0: np.ndarray = dataclasses.field(repr=False)
    rates: np.ndarray = dataclasses.field(repr=False)

    @property
    def size(self) -> int:
        return int(self.u.shape[0])

    @property
    def stop_reason(self) -> list[str]:
        return [STATUS[int(c)] for c in self.status]

    @property
    def ok(self) -> np.ndarray:
        return self.status == _CODE["converged"]

    @property
    def product(self) -> np.ndarray:
        """`u U` at the end, `(B, d, d)`: the trained preconditioner (NaN unless converged)."""
        return self.u_final[:, None, None] * self.U_final

    def _U(self, b: int, p: np.ndarray, s: float) -> np.ndarray:
        V = self.off0[b] * np.exp(-self.rates[b] * s) + np.diag(p)
        return self.Q[b] @ V @ self.Q[b].T

    def U_at(self, b: int, i: int) -> np.ndarray:
        """Member `b`'s full `U` at saved index `i`, original basis."""
        return self._U(b, self.p[b, i], self.s[b, i])

    def last_U(self, b: int) -> np.ndarray:
        """Member `b`'s full `U` when its solve ended (converged or not), original basis."""
        return self._U(b, self.last_p[b], self.last_s[b])

    def diagnostics(self, b: int) -> dict[str, Any]:
        """Member `b`'s outcome, step counts and last state (for `FlowError`)."""
        return {
            "status": STATUS[int(self.status[b])],
            "member": b,
            "d": int(self.lam.shape[1]),
            "num_accepted_steps": int(self.n_accepted[b]),
            "num_rejected_steps": int(self.n_rejected[b]),
            "max_steps": self.stats["max_steps"],
            "last_t": float(self.last_t[b]),
            "last_u": float(self.last_u[b]),
            "last_s": float(self.last_s[b]),
            "last_U": self.last_U(b),
        }

    def member(self, b: int) -> FlowResult:
        """Member `b` as an `lsa.flow.FlowResult` (its saved rows only).

        Raises `FlowError` (with `diagnostics(b)`) unless the member converged: a `FlowResult`
        is a converged solve.
        """
        if not self.ok[b]:
            status = STATUS[int(self.status[b])]
            raise FlowError(f"batch member {b} did not converge ({status})", self.diagnostics(b))
        m = int(self.n_saved[b])
        u = self.u[b, :m]
        return FlowResult(
            ts=self.ts[b, :m],
            u=u,
            loss=self.loss[b, :m],
            U_norm2=self.U_norm2[b, :m],
            balance=u**2 - self.U_norm2[b, :m],
            u_final=float(self.u_final[b]),
            U_final=self.U_final[b],
            t_final=float(self.t_final[b]),
            stop_reason=STATUS[int(self.status[b])],
            stats={
                "num_steps": int(self.n_accepted[b] + self.n_rejected[b]),
                "num_accepted_steps": int(self.n_accepted[b]),
                "num_rejected_steps": int(self.n_rejected[b]),
                **self.stats,
            },
            method="eigen-batch",
            _U_fn=functools.partial(self.U_at, b),
        )


# ----------------------------------------------------------------------------------------
# Host-side preparation and the solve
# ----------------------------------------------------------------------------------------


def _stack_inits(inits: Init | Sequence[Init], B: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(inits, Init):
        u0 = np.broadcast_to(np.asarray(inits.u, np.float64), (B,)).copy()
        U0 = np.broadcast_to(np.asarray(inits.U, np.float64), (B, d, d)).copy()
    else:
        if len(inits) != B:
            raise ValueError(f"got {len(inits)} inits for {B} covariances.")
        u0 = np.array([float(i.u) for i in inits])
        U0 = np.stack([np.asarray(i.U, np.float64) for i in inits])
    if U0.shape != (B, d, d):
        raise ValueError(f"`inits` must hold U of shape ({d}, {d}); got {U0.shape[1:]}.")
    if not (np.all(np.isfinite(U0)) and np.all(np.isfinite(u0))):
        raise ValueError("`inits` contain NaN or inf.")
    if np.any(u0 <= 0):
        raise ValueError(
            "batch_gradient_flow needs u(0) > 0 (it integrates in s = int u^2 dt); "
            "use lsa.gradient_flow for other starts."
        )
    return u0, U0


def _validate(
    Lambdas: Any, Ns: Any, inits: Any, method: Any, options: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, EigenMethod, FlowOptions]:
    """Host-side checks; returns `(Lams, N, u0, U0, method, options)`."""
    method = EigenMethod() if method is None else method
    if not isinstance(method, EigenMethod):
        raise ValueError(
            "batch_gradient_flow supports EigenMethod only (the eigenbasis state); pass "
            "method=EigenMethod(...) or use lsa.flow.gradient_flow for DirectMethod."
        )
    options = FlowOptions() if options is None else options
    if options.t_end is not None:
        raise ValueError(
            "batch_gradient_flow ends every member by the stopping rule; `FlowOptions.t_end` "
            "is not supported (use t_max for the horizon, or lsa.gradient_flow)."
        )
    Lams = np.asarray(Lambdas, dtype=np.float64)
    if Lams.ndim != 3 or Lams.shape[1] != Lams.shape[2] or Lams.shape[0] < 1:
        raise ValueError(f"`Lambdas` must have shape (B, d, d) with B >= 1; got {Lams.shape}.")
    if not np.all(np.isfinite(Lams)):
        raise ValueError("`Lambdas` contains NaN or inf.")
    B, d = Lams.shape[0], Lams.shape[1]
    asym = np.max(np.abs(Lams - np.swapaxes(Lams, 1, 2)), axis=(1, 2))
    if np.any(asym > 1e-10 * np.max(np.abs(Lams), axis=(1, 2))):
        raise ValueError(f"`Lambdas[{int(np.argmax(asym))}]` is not symmetric.")
    lam_min = np.linalg.eigvalsh(0.5 * (Lams + np.swapaxes(Lams, 1, 2)))[:, 0]
    if np.any(lam_min <= 0):
        raise ValueError(f"`Lambdas[{int(np.argmin(lam_min))}]` is not positive definite.")
    Nf = np.array(
        [check_length(int(n), "N") for n in np.broadcast_to(np.asarray(Ns), (B,))], np.float64
    )
    u0, U0 = _stack_inits(inits, B, d)
    return Lams, Nf, u0, U0, method, options


def _s_grid(prob: Problem, n_save: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-member save grid log-spaced in s (solver units) and the first step `h0`: from the
    first save time to twice the s that the horizon `t1` reaches at the larger of `u*^2` and
    `sigma^2`."""
    u_star2 = np.sqrt(np.sum(prob.gam_s**-2.0, axis=1))
    s_first = np.minimum(prob.sigma**2, u_star2) * prob.t_first
    s_last = 2.0 * np.maximum(u_star2, prob.sigma**2) * prob.t1
    grid = np.geomspace(s_first, s_last, n_save - 1, axis=1)
    return np.concatenate([np.zeros((prob.size, 1)), grid], axis=1), s_first


def _off_args(prob: Problem) -> dict[str, np.ndarray]:
    """The vector field's data: direct sums of exponentials up to `DIRECT_MAX_TERMS` terms,
    the shared exp-sum tables above."""
    B, d = prob.size, prob.d
    args: dict[str, np.ndarray] = {
        "lam2": prob.lam_s**2,
        "c_d": prob.c_d,
        "r_coef": prob.r_coef,
        "trace": prob.lam_s.sum(axis=1),
    }
    K = d * d - d
    if K <= DIRECT_MAX_TERMS:
        mask = ~np.eye(d, dtype=bool)
        rates = prob.rates[:, mask] if K else np.ones((B, 1))
        w_off = prob.off0[:, mask] ** 2 if K else np.zeros((B, 1))
        args.update(rates=rates, w_F=rates * w_off, w_off=w_off)
    else:
        centers, moments = prob.tables()
        args.update(centers=centers, moments=moments)
    return args


def _solve(
    prob: Problem, options: FlowOptions, pad_to: int | None, slots: int | None
) -> tuple[_Carry, dict[str, np.ndarray], int, float]:
    """Run the vectorised integrator and the metrics; returns `(carry, metrics, lanes, wall)`."""
    B = prob.size
    s_grid, h0 = _s_grid(prob, options.n_save)
    y0 = np.concatenate([prob.p0, prob.u0[:, None], np.zeros((B, 1))], axis=1)
    P = max(B, pad_to or B)
    if slots is None:
        slots = DEFAULT_SLOTS_GPU if _current_platform() == "gpu" else DEFAULT_SLOTS
    lanes = min(P, int(slots))

    def pad(a: np.ndarray) -> Array:
        if P > B:
            a = np.concatenate([a, np.repeat(a[-1:], P - B, axis=0)])
        return jnp.asarray(a)

    jargs = {k: pad(v) for k, v in _off_args(prob).items()}
    T = options.n_save
    t_start = time.perf_counter()
    out = _integrate(
        pad(y0), jargs, pad(s_grid), pad(h0), pad(prob.t1), pad(prob.atol), jnp.asarray(B),
        jnp.asarray(prob.rtol), jnp.asarray(float(options.eps)),
        jnp.asarray(int(options.max_steps)), int(lanes),
    )  # fmt: skip
    met = _metrics(out.buf[:P, :T], out.sbuf[:P, :T], jargs)
    jax.block_until_ready(met)
    wall = time.perf_counter() - t_start
    return out, {k: np.asarray(v)[:B] for k, v in met.items()}, lanes, wall


def _package(
    prob: Problem,
    out: _Carry,
    met: dict[str, np.ndarray],
    options: FlowOptions,
    lanes: int,
    wall: float,
) -> BatchFlowResult:
    """Map the solver's buffers back to the caller's units; NaN the end point of failures."""
    B, d, T = prob.size, prob.d, options.n_save
    ys = np.asarray(out.buf)[:B, :T]
    ss = np.asarray(out.sbuf)[:B, :T]
    status = np.asarray(out.status)[:B]
    n_saved = np.asarray(out.n_saved)[:B]
    valid = np.arange(T)[None, :] < n_saved[:, None]
    ys = np.where(valid[:, :, None], ys, np.nan)
    ss = np.where(valid, ss, np.nan)
    met = {k: np.where(valid, v, np.nan) for k, v in met.items()}
    ok = status == _CODE["converged"]
    last = np.asarray(out.last)[:B]
    s_last = np.asarray(out.slast)[:B]
    V_end = prob.off0 * np.exp(-prob.rates * s_last[:, None, None]) + last[:, :-2, None] * np.eye(d)
    U_end = prob.to_u(prob.Q @ V_end @ np.swapaxes(prob.Q, 1, 2))
    nan_unless_ok = lambda x: np.where(ok.reshape((B,) + (1,) * (x.ndim - 1)), x, np.nan)  # noqa: E731
    loss = prob.to_loss(met["loss"])
    steps = np.asarray(out.steps)[:B]
    stats = {
        "iterations": int(out.it),
        "lanes": int(lanes),
        "max_steps": int(options.max_steps),
        "wall_seconds": wall,
        "batch": B,
        "padded_batch": int(out.buf.shape[0] - 1),
        "rtol": prob.rtol,
        "eps": float(options.eps),
        "mean_steps": float(np.mean(steps.sum(axis=1))),
    }
    return BatchFlowResult(
        ts=prob.to_t(ys[:, :, -1]),
        u=prob.to_u(ys[:, :, -2]),
        loss=loss,
        U_norm2=prob.to_u2(met["U_norm2"]),
        off2=prob.to_u2(met["off2"]),
        stop_ratio=met["stop_ratio"],
        p=prob.to_u(ys[:, :, :-2]),
        s=prob.to_s(ss),
        lam=prob.lam,
        Q=prob.Q,
        gamma=prob.gam,
        u_final=nan_unless_ok(prob.to_u(last[:, -2])),
        U_final=nan_unless_ok(U_end),
        t_final=nan_unless_ok(prob.to_t(last[:, -1])),
        loss_final=nan_unless_ok(loss[np.arange(B), n_saved - 1]),
        last_u=prob.to_u(last[:, -2]),
        last_t=prob.to_t(last[:, -1]),
        last_s=prob.to_s(s_last),
        last_p=prob.to_u(last[:, :-2]),
        n_saved=n_saved,
        status=status,
        n_accepted=steps[:, 0],
        n_rejected=steps[:, 1],
        stats=stats,
        off0=prob.to_u(prob.off0),
        rates=prob.rates * prob.scale[:, None, None] ** 3,
    )


def batch_gradient_flow(
    Lambdas: Float[ArrayLike, "B d d"],
    Ns: int | Sequence[int] | Int[ArrayLike, " B"],
    inits: Init | Sequence[Init],
    *,
    method: EigenMethod | None = None,
    options: FlowOptions | None = None,
    pad_to: int | None = None,
    slots: int | None = None,
) -> BatchFlowResult:
    """Integrate `B` reduced population gradient flows [ZFB Lemma 5.2, eq. 5.4] in one
    vectorised solve (gradient flow (3.9) on the population loss (3.8) per member).

    **Arguments:**

    - `Lambdas`: `(B, d, d)` symmetric positive definite training covariances.
    - `Ns`: training prompt lengths, one int or `B` ints.
    - `inits`: one `Init` with batched leaves (`u (B,)`, `U (B, d, d)`) or a sequence of `B`
      `Init`s (e.g. from `lsa.paper_init`); `u(0) > 0` is required.
    - `method`: an `EigenMethod` (its `rtol` and `atol_factor`; default `EigenMethod()`, the
      same defaults as `gradient_flow`).
    - `options`: `FlowOptions` shared by all members: `eps` (stopping rule), `t_max`/`margin`
      (each member's horizon, as in `gradient_flow`), `max_steps` (each member's step
      budget), `n_save`. `t_end` is not supported (the solve always ends by the stopping rule).
    - `pad_to`: pad the batch to this size so that chunks of a scan share one compiled solve
      (padding rows are never integrated).
    - `slots`: how many flows are integrated side by side (default `DEFAULT_SLOTS` = 128 on a
      CPU, `DEFAULT_SLOTS_GPU` = 4096 on a GPU; at most the batch size); a slot whose flow has
      finished takes the next one, so flows of different stiffness do not wait for each other.

    **Returns:** a `BatchFlowResult`. A member that fails does **not** raise: its `status`
    names the cause (`STATUS`: horizon, max_steps, non_finite, u_nonpositive, newton_failure,
    save_grid_exhausted, step_size_underflow), its end point is NaN, its last state is kept
    (`last_u`, `last_t`, `diagnostics(b)`), `member(b)` raises `FlowError`, and the other
    members are unaffected. Each member is solved in units where `tr(Lambda)/d = 1`
    (`lsa._problem`), so step counts do not depend on the units of Lambda.
    """
    require_x64("lsa.batch.batch_gradient_flow")
    Lams, Nf, u0, U0, method, options = _validate(Lambdas, Ns, inits, method, options)
    prob = build_problem(Lams, Nf, u0, U0, method, options)
    out, met, lanes, wall = _solve(prob, options, pad_to, slots)
    return _package(prob, out, met, options, lanes, wall)


def time_scales(
    lam: Float[ArrayLike, " d"], N: int, sigma: float, eps: float = 1e-10
) -> tuple[float, float]:
    """`(t_escape, t_converge)` from the closed-form time scales of the solver notes (the ones
    `gradient_flow` uses for its horizon; ZFB Thm 4.1's Gamma), for grouping settings of
    similar stiffness."""
    lam = np.sort(np.asarray(lam, np.float64))
    gam = (1.0 + 1.0 / N) * lam + lam.sum() / N
    t_esc, t_conv = _time_scales(lam[None], gam[None], np.asarray([float(sigma)]), eps)
    return float(t_esc[0]), float(t_conv[0])
