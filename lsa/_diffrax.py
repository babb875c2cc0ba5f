"""diffrax pieces shared by the solves of `lsa.flow` and `lsa._empirical`: the O(d) Newton
solver for the eigenbasis Jacobian (`BorderedDiagonal`), the floored chord iteration
(`FlooredChord`), the step-size controller, float64 arguments, and tracing without host
callbacks (so that JAX's persistent compilation cache can store the solves)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array

from ._options import FlowError

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


def _f64(x: Any) -> Array:
    """Problem data and tolerances enter the compiled solves as float64 arrays, never as Python
    floats: `eqx.filter_jit` treats Python floats as static, so each new value would recompile
    (about 1-5 s) instead of reusing the compiled solve."""
    return jnp.asarray(x, dtype=jnp.float64)


def _controller(rtol, atol, pcoeff=0.0, icoeff=1.0):
    return diffrax.PIDController(
        rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff, norm=optx.max_norm
    )


@contextlib.contextmanager
def _checks_without_callbacks() -> Iterator[None]:
    """Trace `diffeqsolve`'s input checks without host callbacks.

    `diffeqsolve` validates `(t1 - t0) * dt0 >= 0` and the ordering and range of `SaveAt.ts`
    with `equinox.error_if`. With traced values (ours are arrays, so that a new problem reuses
    the compiled solve) each check becomes a `jax.pure_callback` under equinox's default
    `EQX_ON_ERROR=raise`, and JAX refuses to write an executable holding host callbacks to the
    persistent compilation cache. The values are validated on the host before the call
    (`t1 > 0`, `dt0 > 0`, save times increasing in `[0, t1]`), so while the solve is traced the
    checks are switched to equinox's callback-free `nan` mode (a violated check would make the
    output NaN, which `gradient_flow` reports as `non_finite`). The setting is restored after
    tracing and affects nothing else.
    """
    from equinox import _errors

    if not hasattr(_errors, "EQX_ON_ERROR"):  # another equinox layout: keep its checks (the
        yield  # solve still works; it only may not be written to the persistent cache)
        return
    old = _errors.EQX_ON_ERROR
    _errors.EQX_ON_ERROR = "nan" if old == "raise" else old
    try:
        yield
    finally:
        _errors.EQX_ON_ERROR = old


def _progress_meter(progress: bool) -> diffrax.AbstractProgressMeter:
    # tqdm's meter calls back to the host at every step: only when asked for.
    return diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()


def failure_status(result: Any) -> str:
    """The status code (`lsa._options.STATUS`) of a diffrax result that is neither success
    nor an event: `max_steps`, `newton_failure` (the implicit solver's root find diverged,
    hit its step cap, or met a singular or broken-down linear solve), `step_size_underflow`,
    `non_finite`, else `solver_failure`. Shared by every flow of lsa; each checks its own
    earlier conditions (non-finite state, events, fixed end, sign of u) first."""
    R = diffrax.RESULTS
    if result == R.max_steps_reached:
        return "max_steps"
    if result in (R.nonlinear_divergence, R.nonlinear_max_steps_reached, R.singular, R.breakdown):
        return "newton_failure"
    if result == R.dt_min_reached:
        return "step_size_underflow"
    if result == R.nonfinite:
        return "non_finite"
    return "solver_failure"


def steady_state_status(result: Any, event_mask: Any, finite: bool) -> str:
    """The status of a solve that must end by its steady-state event (the deep-stack flows):
    `max_steps`, `non_finite`, `converged` (the event fired), `horizon` (reached `t1` without
    it), else `solver_failure`."""
    R = diffrax.RESULTS
    fired = bool(event_mask) if event_mask is not None else False
    if result == R.max_steps_reached:
        return "max_steps"
    if not finite:
        return "non_finite"
    if result == R.event_occurred or (result == R.successful and fired):
        return "converged"
    if result == R.successful:
        return "horizon"
    return "solver_failure"


def finish_steady_state(
    sol: Any, t_start: float, what: str, **extra: Any
) -> tuple[dict[str, Any], np.ndarray]:
    """The common end of the deep-stack flows: solver statistics (plus `extra`), the status of
    `steady_state_status` (every saved leaf of `sol.ys` must be finite) and `t_last`; raises
    `FlowError` naming `what` unless converged. Returns the statistics and the mask of saved
    steps (`isfinite(sol.ts)`)."""
    ts = np.asarray(sol.ts)
    keep = np.isfinite(ts)
    stats: dict[str, Any] = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "wall_seconds": time.perf_counter() - t_start,
        "result": str(sol.result),
        **extra,
    }
    leaves = [np.asarray(v)[keep] for v in jax.tree_util.tree_leaves(sol.ys)]
    finite = bool(keep.any() and all(np.all(np.isfinite(v)) for v in leaves))
    status = steady_state_status(sol.result, sol.event_mask, finite)
    stats["status"] = status
    stats["t_last"] = float(ts[keep][-1]) if keep.any() else float("nan")
    if status != "converged":
        raise FlowError(f"{what} did not converge ({status}): {sol.result}", stats)
    return stats, keep
