"""The empirical gradient flow over all `2 (d+1)^2` entries of `(W_PV, W_KQ)` on a fixed prompt
set [ZFB eq. 3.9 with the empirical loss], as a diffrax ODE (Kvaerno5 with a dense Jacobian:
the state is small). Public through `lsa.flow.empirical_flow`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import ArrayLike, Float

from ._diffrax import FlooredChord, _checks_without_callbacks, _controller, _f64, _progress_meter
from ._options import FlowError
from .loss import PromptStats, QuadraticLoss, empirical_loss, quadratic_form_loss, quadratic_loss
from .precision import require_x64

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
        progress_meter=_progress_meter(progress),
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
    require_x64("lsa.empirical_flow")
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
    with _checks_without_callbacks():
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
    finite = bool(np.all(np.isfinite(Wp)) and np.all(np.isfinite(Wk)))
    if sol.result != diffrax.RESULTS.successful or not finite:
        if sol.result == diffrax.RESULTS.max_steps_reached:
            stats_out["status"] = "max_steps"
        elif not finite:
            stats_out["status"] = "non_finite"
        else:
            stats_out["status"] = "solver_failure"
        raise FlowError(f"empirical flow failed ({stats_out['status']}): {sol.result}", stats_out)
    return EmpiricalResult(ts=ts, loss=loss, W_PV_traj=Wp, W_KQ_traj=Wk, stats=stats_out)
