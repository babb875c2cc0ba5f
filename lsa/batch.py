"""Many reduced gradient flows at once: one diffrax solve of a `(B, d + 2)` state.

`batch_gradient_flow` integrates `B` independent reduced population flows (ZFB Lemma 5.2), each
with its own `Lambda`, `N` and start, as **one** ODE whose state stacks the `B` eigenbasis
states of `lsa.flow.EigenMethod` (diagonal `p`, `u`, `s = int u^2`). All members share the
time steps of one Kvaerno5 solve:

- the vector field is elementwise per member, so one evaluation costs `O(B d^2)` (off-diagonal
  decay written as a direct sum of `d^2 - d` exponentials for small d, or the padded
  `ExpSumTable` of `lsa.flow` for large d);
- the Newton matrix is block diagonal with one "diagonal plus a border of two" block per member;
  `BatchedBorderedDiagonal` reads it off with five matrix-vector products whatever `B` is and
  solves all blocks at once by their `2 x 2` Schur complements;
- the step-size controller uses the max norm over all members, with a per-member absolute
  tolerance `rtol * atol_factor * sigma_b^2` (the plateau scaling of `EigenMethod`);
- the solve ends when **every** member meets `gradient_flow`'s stopping rule; each member's
  own first time is reported as `t_stop`.

Sharing the step size is why members should be grouped by stiffness (similar time scales):
the measured alternative, `vmap` of single solves, steps all members in lock-step anyway and
pays a masked copy of the whole solver state per step (10-100x slower here). Results agree
with `lsa.gradient_flow` to the solver tolerance (tested to 1e-8).

Devices: `select_device` reads `LSA_FLOW_DEVICE` (`cpu`, `gpu` or `auto`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_covariance, check_length
from .flow import (
    EigenMethod,
    ExpSumTable,
    FlooredChord,
    FlowError,
    FlowOptions,
    FlowResult,
    _time_scales,
    exp_sum,
)
from .prompts import Init

__all__ = [
    "BatchFlowResult",
    "BatchedBorderedDiagonal",
    "batch_gradient_flow",
    "select_device",
]

#: Off-diagonal sums use direct exponentials while `d^2 - d` is at most this many; above it the
#: binned `ExpSumTable` (cost independent of d) is cheaper.
DIRECT_MAX_TERMS = 400

DEVICE_ENV = "LSA_FLOW_DEVICE"
_DEVICE_CHOICES = ("auto", "cpu", "gpu")


def select_device(name: str | None = None) -> jax.Device:
    """The JAX device to run on: `"cpu"`, `"gpu"` or `"auto"` (GPU when one is visible).

    `None` reads the environment variable `LSA_FLOW_DEVICE` (default `"auto"`). Asking for
    `"gpu"` without a GPU raises a `ValueError` that says how to install the CUDA build
    (`pip install "lsa-flow[cuda]"`).
    """
    choice = (name if name is not None else os.environ.get(DEVICE_ENV, "auto")).strip().lower()
    if choice not in _DEVICE_CHOICES:
        raise ValueError(
            f"unknown device {choice!r} (from {'argument' if name else DEVICE_ENV}); choose one "
            f"of {', '.join(_DEVICE_CHOICES)}."
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
            '`pip install "lsa-flow[cuda]"` or use device "cpu"/"auto".'
        )
    return jax.devices("cpu")[0]


# ----------------------------------------------------------------------------------------
# Linear solver: B independent "diagonal plus border" blocks.
# ----------------------------------------------------------------------------------------


class BatchedBorderedDiagonal(lx.AbstractLinearSolver):
    """Solve a block-diagonal system whose `B` blocks are each diagonal plus a border of width k.

    The operator acts on `(B, n)` arrays; member `b`'s block couples only row `b`. Each block is
    `[[A_b, B_b], [C_b, E_b]]` with `A_b` diagonal `(n-k, n-k)`. The structure of all blocks is
    read with `1 + 2k` matrix-vector products (every member probed at once, since blocks do not
    interact), and the blocks are solved by their `k x k` Schur complements: `O(B n k^2)`.
    """

    border: int = eqx.field(static=True, default=2)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        struct = operator.in_structure()
        B, n = struct.shape  # type: ignore[union-attr]
        dtype = struct.dtype  # type: ignore[union-attr]
        k = self.border
        m = n - k
        ones = jnp.zeros((B, n), dtype).at[:, :m].set(1.0)
        diag = operator.mv(ones)[:, :m]
        basis = [jnp.zeros((B, n), dtype).at[:, m + j].set(1.0) for j in range(k)]
        cols = jnp.stack([operator.mv(e) for e in basis], axis=-1)  # (B, n, k)
        opT = operator.transpose()
        rows = jnp.stack([opT.mv(e) for e in basis], axis=1)  # (B, k, n)
        return diag, cols[:, :m], rows[:, :, :m], cols[:, m:]

    def compute(self, state, vector, options):
        del options
        diag, Bm, Cm, Em = state
        m = diag.shape[1]
        b1, b2 = vector[:, :m], vector[:, m:]
        Ai_b1 = b1 / diag
        Ai_B = Bm / diag[..., None]
        schur = Em - jnp.einsum("bkm,bmj->bkj", Cm, Ai_B)
        rhs = b2 - jnp.einsum("bkm,bm->bk", Cm, Ai_b1)
        x2 = _small_solve(schur, rhs)
        x1 = Ai_b1 - jnp.einsum("bmk,bk->bm", Ai_B, x2)
        x = jnp.concatenate([x1, x2], axis=1)
        ok = jnp.all(jnp.isfinite(x))
        return x, lx.RESULTS.where(ok, lx.RESULTS.successful, lx.RESULTS.singular), {}

    def transpose(self, state, options):
        del options
        diag, Bm, Cm, Em = state
        return (
            diag,
            jnp.swapaxes(Cm, 1, 2),
            jnp.swapaxes(Bm, 1, 2),
            jnp.swapaxes(Em, 1, 2),
        ), {}

    def conj(self, state, options):
        del options
        return state, {}

    def assume_full_rank(self) -> bool:
        return True


def _small_solve(S: Float[Array, "B k k"], r: Float[Array, "B k"]) -> Float[Array, "B k"]:
    """Batched `k x k` solves; closed form for k = 2 (the eigenbasis border), LU otherwise."""
    if S.shape[-1] == 2:
        a, b, c, d = S[:, 0, 0], S[:, 0, 1], S[:, 1, 0], S[:, 1, 1]
        det = a * d - b * c
        return jnp.stack([(d * r[:, 0] - b * r[:, 1]) / det, (a * r[:, 1] - c * r[:, 0]) / det], 1)
    return jnp.linalg.solve(S, r[..., None])[..., 0]


# ----------------------------------------------------------------------------------------
# Vector field of B stacked eigenbasis states. args is a dict of (B, ...) arrays; its keys
# (static pytree structure) choose the off-diagonal evaluation: "rates" = direct sum,
# "centers" = ExpSumTable.
# ----------------------------------------------------------------------------------------


def _off_sums(s: Float[Array, " B"], args: dict[str, Array]) -> tuple[Array, Array]:
    """`(F, off2)`: `sum_ij c_ij V_ij(t)^2` and `sum_ij V_ij(t)^2` over i != j, per member."""
    if "rates" in args:
        e = jnp.exp(-2.0 * args["rates"] * s[:, None])
        return jnp.sum(args["w_F"] * e, axis=1), jnp.sum(args["w_off"] * e, axis=1)
    out = jax.vmap(exp_sum)(s, args["centers"], args["moments"])  # (B, 2)
    return out[:, 0], out[:, 1]


def _batch_vf(t, y, args):
    lam2, c_d = args["lam2"], args["c_d"]
    p, u, s = y[:, :-2], y[:, -2], y[:, -1]
    F, _ = _off_sums(s, args)
    dp = -(u**2)[:, None] * c_d * p + u[:, None] * lam2
    du = -u * (jnp.sum(c_d * p**2, axis=1) + F) + jnp.sum(lam2 * p, axis=1)
    return jnp.concatenate([dp, du[:, None], (u**2)[:, None]], axis=1)


def _stop_ratio(t, y, args):
    """`||f||_max / (r_min(u) ||y||_max)` per member: `gradient_flow`'s stopping statistic."""
    f = _batch_vf(t, y, args)[:, :-1]
    scale = jnp.max(jnp.abs(y[:, :-1]), axis=1)
    rate = y[:, -2] ** 2 * args["r_coef"]
    return jnp.max(jnp.abs(f), axis=1) / (rate * scale)


def _batch_metrics(t, y, args):
    lam2, c_d = args["lam2"], args["c_d"]
    p, u, s = y[:, :-2], y[:, -2], y[:, -1]
    F, off2 = _off_sums(s, args)
    quad = jnp.sum(c_d * p**2, axis=1) + F
    loss = 0.5 * (u**2 * quad - 2.0 * u * jnp.sum(lam2 * p, axis=1) + args["trace"])
    return {
        "y": y,
        "loss": loss,
        "U_norm2": jnp.sum(p**2, axis=1) + off2,
        "off2": off2,
        "stop_ratio": _stop_ratio(t, y, args),
    }


def _batch_event(t, y, args, **kwargs):
    del kwargs
    return jnp.all(_stop_ratio(t, y, args) <= args["eps"])


@eqx.filter_jit
def _solve_batch(y0, args, ts, t1, dt0, rtol, atol, newton_rtol, newton_atol, *, max_steps, progress):
    solver = diffrax.Kvaerno5(
        root_finder=FlooredChord(
            rtol=newton_rtol,
            atol=newton_atol,
            norm=optx.max_norm,
            linear_solver=BatchedBorderedDiagonal(border=2),
        )
    )
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_batch_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, fn=_batch_metrics),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=optx.max_norm),
        event=diffrax.Event(_batch_event),
        max_steps=max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
    )


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchFlowResult:
    """`B` solved reduced flows sharing one time grid (numpy float64).

    - `ts (T,)`: saved times (log-spaced, shared), ending at the solve's end `t_end`;
    - `u (B, T)`, `loss (B, T)` (population loss with the 1/2), `U_norm2 (B, T)`;
    - `p (B, T, d)`: diagonal of `V = Q^T U Q` (Lambda's eigenbasis); `off2 (B, T)`: its squared
      off-diagonal Frobenius norm; `stop_ratio (B, T)`: the stopping statistic;
    - `lam (B, d)`, `Q (B, d, d)`: eigen-decomposition `Lambda_b = Q diag(lam) Q^T`;
    - `u_final (B,)`, `U_final (B, d, d)`: end points (original basis); `product` is `u U`;
    - `t_stop (B,)`: first saved time at which the member met the stopping rule (`inf` if never);
    - `converged (B,)`: the member meets the stopping rule at the end;
    - `stats`: shared solver statistics (`num_steps`, ..., `wall_seconds`, `result`).
    """

    ts: np.ndarray
    u: np.ndarray
    loss: np.ndarray
    U_norm2: np.ndarray
    p: np.ndarray
    off2: np.ndarray
    stop_ratio: np.ndarray
    lam: np.ndarray
    Q: np.ndarray
    u_final: np.ndarray
    U_final: np.ndarray
    t_stop: np.ndarray
    converged: np.ndarray
    eps: np.ndarray
    stats: dict[str, Any]
    _off0: np.ndarray = dataclasses.field(repr=False)
    _R: np.ndarray = dataclasses.field(repr=False)

    @property
    def size(self) -> int:
        return int(self.u.shape[0])

    @property
    def t_end(self) -> float:
        return float(self.ts[-1])

    @property
    def product(self) -> np.ndarray:
        """`u U` at the end, `(B, d, d)`."""
        return self.u_final[:, None, None] * self.U_final

    def U_at(self, b: int, i: int) -> np.ndarray:
        """Member `b`'s full `U` at saved time `i`, original basis."""
        s = self.stop_ratio  # noqa: F841  (keep attribute access uniform)
        V = self._off0[b] * np.exp(-self._R[b] * self._s[b, i]) + np.diag(self.p[b, i])
        return self.Q[b] @ V @ self.Q[b].T

    @property
    def _s(self) -> np.ndarray:
        return self.stats["_s"]

    def member(self, b: int) -> FlowResult:
        """Member `b` as a `FlowResult` (trajectory on the shared grid up to `t_end`)."""
        u = self.u[b]
        return FlowResult(
            ts=self.ts,
            u=u,
            loss=self.loss[b],
            U_norm2=self.U_norm2[b],
            balance=u**2 - self.U_norm2[b],
            u_final=float(self.u_final[b]),
            U_final=self.U_final[b],
            t_final=self.t_end,
            stop_reason="converged" if self.converged[b] else "t_end",
            stats={k: v for k, v in self.stats.items() if not k.startswith("_")},
            method="eigen-batch",
            _U_fn=lambda i, _b=b: self.U_at(_b, i),
        )


# ----------------------------------------------------------------------------------------
# Host-side preparation and the solve
# ----------------------------------------------------------------------------------------


def _as_batch(x: Any, B: int, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        return np.full(B, float(a))
    if a.shape != (B,):
        raise ValueError(f"`{name}` must be a scalar or have shape ({B},); got {a.shape}.")
    return a


def batch_gradient_flow(
    Lambdas: Float[ArrayLike, "B d d"],
    Ns: int | Sequence[int] | Float[ArrayLike, " B"],
    inits: Init | Sequence[Init],
    *,
    method: EigenMethod | None = None,
    options: FlowOptions | None = None,
    pad_to: int | None = None,
    table_bins: int | None = None,
) -> BatchFlowResult:
    """Integrate `B` reduced population gradient flows [ZFB Lemma 5.2] in one batched solve.

    **Arguments:**

    - `Lambdas`: `(B, d, d)` symmetric positive definite training covariances.
    - `Ns`: training prompt lengths, one int or `(B,)`.
    - `inits`: one `Init` with batched leaves (`u (B,)`, `U (B, d, d)`) or a sequence of `B`
      `Init`s (e.g. from `lsa.paper_init`).
    - `method`: an `EigenMethod` (tolerances; default `EigenMethod()`).
    - `options`: `FlowOptions` shared by all members (`eps`, `t_end`, `t_max`, `margin`,
      `max_steps`, `n_save`, `progress`). The horizon is the largest member horizon.
    - `pad_to`: pad the batch to this size by repeating the last member (results dropped), so
      that chunks of a scan share one compiled solve.
    - `table_bins`: for large d, pad the `ExpSumTable` to this many bins (default: the next
      multiple of 32), again to share compilations.

    **Returns:** a `BatchFlowResult`. Raises `FlowError` when the shared solve fails (max steps,
    NaN, or the horizon reached before every member met the stopping rule); a scan then
    retries the members one by one to isolate the failing ones.
    """
    method = EigenMethod() if method is None else method
    if not isinstance(method, EigenMethod):
        raise TypeError("batch_gradient_flow supports EigenMethod only (the eigenbasis state).")
    options = FlowOptions() if options is None else options
    Lams = np.asarray(Lambdas, dtype=np.float64)
    if Lams.ndim != 3 or Lams.shape[1] != Lams.shape[2] or Lams.shape[0] < 1:
        raise ValueError(f"`Lambdas` must have shape (B, d, d) with B >= 1; got {Lams.shape}.")
    B, d = Lams.shape[0], Lams.shape[1]
    for b in range(B):
        check_covariance(Lams[b], f"Lambdas[{b}]")
    N_arr = np.asarray(Ns)
    N_list = [check_length(int(n), "N") for n in np.broadcast_to(N_arr, (B,))]
    if isinstance(inits, Init):
        u0 = _as_batch(inits.u, B, "inits.u")
        U0 = np.broadcast_to(np.asarray(inits.U, np.float64), (B, d, d)).copy()
    else:
        if len(inits) != B:
            raise ValueError(f"got {len(inits)} inits for {B} covariances.")
        u0 = np.array([float(i.u) for i in inits])
        U0 = np.stack([np.asarray(i.U, np.float64) for i in inits])
    if U0.shape != (B, d, d) or not np.all(np.isfinite(U0)) or not np.all(np.isfinite(u0)):
        raise ValueError(f"inits must be finite with U of shape ({d}, {d}).")
    Nf = np.asarray(N_list, np.float64)

    # Eigen-data per member (host, numpy; batched eigh).
    lam, Q = np.linalg.eigh(0.5 * (Lams + np.swapaxes(Lams, 1, 2)))
    trace = lam.sum(axis=1)
    gam = (1.0 + 1.0 / Nf)[:, None] * lam + (trace / Nf)[:, None]
    sigma = np.maximum(np.maximum(np.abs(u0), np.linalg.norm(U0, axis=(1, 2))), 1e-300)
    t_esc = np.empty(B)
    t_conv = np.empty(B)
    for b in range(B):
        t_esc[b], t_conv[b] = _time_scales(lam[b], gam[b], float(sigma[b]), options.eps)
    if options.t_end is not None:
        t1 = float(options.t_end)
    elif options.t_max is not None:
        t1 = float(options.t_max)
    else:
        t1 = float(np.max(options.margin * (t_esc + t_conv)))
    t_first = float(np.min(np.minimum(t_esc, 1.0 / np.max(gam * lam**2, axis=1)) * 1e-3))
    ts = np.concatenate([[0.0], np.geomspace(min(t_first, t1 / 10), t1, options.n_save - 1)])
    ts = np.minimum(ts, t1)

    V0 = np.swapaxes(Q, 1, 2) @ U0 @ Q
    p0 = np.diagonal(V0, axis1=1, axis2=2).copy()
    off = V0 - p0[:, :, None] * np.eye(d)
    R = gam[:, :, None] * lam[:, :, None] * lam[:, None, :]
    c_d = gam * lam**2
    mask = ~np.eye(d, dtype=bool)
    r_coef = np.min(R.reshape(B, -1), axis=1)
    rtol = method.rtol
    sig2 = np.minimum(sigma**2, 1.0)
    atol = rtol * method.atol_factor * sig2
    newton_atol = method.newton_atol_factor * sig2

    args: dict[str, np.ndarray] = {
        "lam2": lam**2,
        "c_d": c_d,
        "r_coef": r_coef,
        "trace": trace,
        "eps": np.full(B, options.eps),
    }
    K = d * d - d
    if K <= DIRECT_MAX_TERMS:
        rates = R[:, mask] if K else np.ones((B, 1))
        w_off = off[:, mask] ** 2 if K else np.zeros((B, 1))
        args.update(rates=rates, w_F=rates * w_off, w_off=w_off)
    else:
        tables = [
            ExpSumTable.build(
                R[b][mask], np.stack([(R[b] * off[b] ** 2)[mask], (off[b] ** 2)[mask]], axis=1)
            )
            for b in range(B)
        ]
        nb = max(t.centers.shape[0] for t in tables)
        nb = table_bins if table_bins is not None and table_bins >= nb else -(-nb // 32) * 32
        centers = np.ones((B, nb))
        moments = np.zeros((B, nb) + tables[0].moments.shape[1:])
        for b, tb in enumerate(tables):
            k = tb.centers.shape[0]
            centers[b, :k] = tb.centers
            centers[b, k:] = tb.centers[-1]  # zero-weight padding bins
            moments[b, :k] = tb.moments
        args.update(centers=centers, moments=moments)
    y0 = np.concatenate([p0, u0[:, None], np.zeros((B, 1))], axis=1)

    # Pad to a fixed batch size (repeat the last member) to reuse the compiled solve.
    P = max(B, pad_to or B)

    def pad(a: np.ndarray) -> Array:
        if P > B:
            a = np.concatenate([a, np.repeat(a[-1:], P - B, axis=0)])
        return jnp.asarray(a)

    jargs = {k: pad(v) for k, v in args.items()}
    t_start = time.perf_counter()
    sol = _solve_batch(
        pad(y0), jargs, jnp.asarray(ts), t1, min(t_first, t1 / 10), rtol, pad(atol)[:, None],
        method.newton_rtol, pad(newton_atol)[:, None],
        max_steps=options.max_steps, progress=options.progress,
    )  # fmt: skip
    jax.block_until_ready(sol.ys)
    wall = time.perf_counter() - t_start

    ts_out = np.asarray(sol.ts)
    ys = {k: np.asarray(v)[:, :B] for k, v in sol.ys.items()}  # (T, B, ...)
    finite = np.nonzero(np.isfinite(ts_out))[0]
    idx = finite[np.concatenate([np.diff(ts_out[finite]) > 0, [True]])] if finite.size else finite
    ts_out = ts_out[idx]
    ys = {k: np.swapaxes(v[idx], 0, 1) for k, v in ys.items()}  # (B, T, ...)
    stats: dict[str, Any] = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_accepted_steps": int(sol.stats["num_accepted_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "max_steps": options.max_steps,
        "wall_seconds": wall,
        "t_horizon": t1,
        "batch": B,
        "padded_batch": P,
        "rtol": rtol,
        "result": str(sol.result),
    }
    diag = {"d": d, "B": B, **{k: stats[k] for k in ("num_steps", "t_horizon")}}
    if sol.result == diffrax.RESULTS.max_steps_reached:
        raise FlowError("batched gradient flow hit max_steps", diag)
    if not ts_out.size or not all(np.all(np.isfinite(v)) for k, v in ys.items() if k != "stop_ratio"):
        raise FlowError("batched gradient flow produced NaN or inf (divergence)", diag)
    if sol.result == diffrax.RESULTS.successful and options.t_end is None:
        raise FlowError(
            "batched gradient flow reached the horizon before every member met the stopping "
            f"rule (eps={options.eps})",
            diag,
        )
    if sol.result not in (diffrax.RESULTS.successful, diffrax.RESULTS.event_occurred):
        raise FlowError(f"solver failed: {sol.result}", diag)

    Y = ys["y"]  # (B, T, d+2)
    ratio = ys["stop_ratio"]
    met = ratio <= options.eps
    t_stop = np.where(met.any(axis=1), ts_out[np.argmax(met, axis=1)], np.inf)
    u_traj = Y[:, :, -2]
    s_end = Y[:, -1, -1]
    V_end = off * np.exp(-R * s_end[:, None, None]) + Y[:, -1, :-2][:, :, None] * np.eye(d)
    U_final = Q @ V_end @ np.swapaxes(Q, 1, 2)
    stats["_s"] = Y[:, :, -1]
    return BatchFlowResult(
        ts=ts_out,
        u=u_traj,
        loss=ys["loss"],
        U_norm2=ys["U_norm2"],
        p=Y[:, :, :-2],
        off2=ys["off2"],
        stop_ratio=ratio,
        lam=lam,
        Q=Q,
        u_final=u_traj[:, -1].copy(),
        U_final=U_final,
        t_stop=t_stop,
        converged=met[:, -1],
        eps=np.full(B, options.eps),
        stats=stats,
        _off0=off,
        _R=R,
    )


def _unused() -> None:  # pragma: no cover
    math.log(1.0)
