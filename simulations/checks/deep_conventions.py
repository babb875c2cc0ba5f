"""The full parameterisation of an L-layer stack trained in both conventions (issue 10 part 3;
docs/deep.md "Full parameterisation: the two conventions").

For each depth L, convention ("ahn": masked, "zfb": unmasked) and start (all 2L (d+1)^2 entries
~ 0.1 N(0, 1), the same starts for both conventions), on one fixed training set of B prompts
(isotropic x, w ~ N(0, I), noiseless):

1. the empirical gradient flow dW/dt = -grad L_hat(W) (`lsa.deep_empirical`'s Gram-route
   gradient) with diffrax Tsit5 (rtol 1e-6) for `flow_steps` steps, which carries it past the
   plateaus of the small start;
2. a Newton polish of the same loss from the flow's end point: scipy's trust-region Newton
   (`trust-exact`) with the exact Hessian (forward-mode derivative of the hand-written gradient),
   at most `polish_steps` steps. A trust-region Newton step moves towards minima, not saddles,
   and converges quadratically where the minimum is non-degenerate; the flow alone converges very
   slowly here (the curvature spread at the end exceeds 1e8; docs/deep.md).
3. a classification of the end point from its gradient and Hessian spectrum (`STATUSES`):
   "minimum" (max |grad| <= GRAD_OK and no eigenvalue below -EIG_ROUNDOFF * lambda_max, the
   Hessian's round-off level; the symmetries, per-layer W_PV -> c W_PV, W_KQ -> W_KQ / c, and the
   entries the prediction never reads give exact zero eigenvalues), "saddle" (critical with a
   negative eigenvalue), "escaping" (not critical, the loss still falling and the weights' norm
   grown by more than ESCAPE_GROWTH during the polish: the infimum is approached at infinity or
   far away, not attained near the flow's end), "not converged" (anything else). Both the flow's
   and the polished loss and norm are recorded, so a polish that jumped to another basin would
   show as a large drop.

Measured per run: training loss, max |grad|, the Hessian's extreme eigenvalues, the weights'
Frobenius norm, the test risk on `n_test` fresh prompts with its standard error and the median
squared error (the risk of a deep stack is a high-degree polynomial in the data, so an
overfitted stack can have a heavy-tailed error: a large mean beside a small median shows it),
the sparse-family optimum's exact risk (`theory.deep.step_sizes_risk` at
`optimal_step_sizes`) for reference, and the mean squared difference (SPD) between the two
conventions' predictions on the same test prompts, for the best start of each.

Rows are appended to a CSV as they finish, each with its polished weights (column `weights`,
JSON); a rerun skips the (L, convention, start) rows it finds (resume without redoing work) and
recomputes the best stacks' test predictions from the saved weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize
from jaxtyping import Float

import lsa
from lsa.deep import Convention
from lsa.deep_empirical import (
    DeepStats,
    deep_empirical_loss,
    deep_empirical_value_and_grad,
    deep_stats,
    deep_stats_predict,
)
from theory.deep import optimal_step_sizes, step_sizes_risk

from .base import append_rows, finished_keys

__all__ = [
    "ESCAPE_PLAN",
    "STATUSES",
    "conventions_summary",
    "conventions_table",
    "escape_probe",
    "escape_probes",
    "newton_polish",
    "run_weights",
]

CONVENTIONS: tuple[Convention, ...] = ("ahn", "zfb")
#: End-point classification (module docstring): a critical point has max |grad| <= GRAD_OK; an
#: eigenvalue below -EIG_ROUNDOFF * lambda_max is negative beyond the Hessian's round-off; a
#: polish that grows the weights' norm by more than ESCAPE_GROWTH (relative) without reaching a
#: critical point is "escaping".
GRAD_OK, EIG_ROUNDOFF, ESCAPE_GROWTH = 1e-8, 1e-12, 0.2
STATUSES = ("minimum", "saddle", "escaping", "not converged")


def _loss(p: dict[str, jax.Array], stats: DeepStats) -> jax.Array:
    return deep_empirical_loss(p["W_PV"], p["W_KQ"], stats)


def _vf(t, p, stats):  # type: ignore[no-untyped-def]
    _, (gP, gK) = deep_empirical_value_and_grad(p["W_PV"], p["W_KQ"], stats)
    return {"W_PV": -gP, "W_KQ": -gK}


def _gmax(p: dict[str, jax.Array], stats: DeepStats) -> jax.Array:
    _, (gP, gK) = deep_empirical_value_and_grad(p["W_PV"], p["W_KQ"], stats)
    return jnp.maximum(jnp.max(jnp.abs(gP)), jnp.max(jnp.abs(gK)))


@eqx.filter_jit
def _flow(p0, stats, *, max_steps):  # type: ignore[no-untyped-def]
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_vf), diffrax.Tsit5(), 0.0, 1e9, 1e-3, p0, args=stats,
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
        max_steps=max_steps, saveat=diffrax.SaveAt(t1=True), throw=False,
    )  # fmt: skip


def _flow_end(W0: np.ndarray, stats: DeepStats, flow_steps: int) -> tuple[Any, np.ndarray]:
    """The flow from the stacked start `W0 = [W_PV, W_KQ]`: diffrax's solution and its end point,
    stacked the same way."""
    sol = _flow({"W_PV": jnp.asarray(W0[0]), "W_KQ": jnp.asarray(W0[1])}, stats,
                max_steps=flow_steps)  # fmt: skip
    return sol, np.stack([np.asarray(sol.ys["W_PV"][-1]), np.asarray(sol.ys["W_KQ"][-1])])


def _flat_value_and_grad(x: jax.Array, shape: tuple[int, ...], stats: DeepStats):  # type: ignore[no-untyped-def]
    W = x.reshape(shape)
    loss, (gP, gK) = deep_empirical_value_and_grad(W[0], W[1], stats)
    return loss, jnp.stack([gP, gK]).ravel()


_flat_vg = jax.jit(_flat_value_and_grad, static_argnums=1)
_flat_hess = jax.jit(
    jax.jacfwd(lambda x, shape, stats: _flat_value_and_grad(x, shape, stats)[1]),
    static_argnums=1,
)


def newton_polish(
    W: Float[np.ndarray, "2 L d+1 d+1"],
    stats: DeepStats,
    max_steps: int,
    callback: Callable[[np.ndarray], None] | None = None,
) -> tuple[Float[np.ndarray, "2 L d+1 d+1"], dict[str, Any]]:
    """Trust-region Newton (scipy `trust-exact`, exact Hessian) on the empirical loss [ZFB eq. 3.7
    with the stack's prediction, Ahn et al. eq. (2) for the masked stack] from the
    stacked weights `W = [W_PV, W_KQ]` (shape (2, L, d+1, d+1)); returns the end point and its
    diagnosis: loss, max |grad|, the Hessian's smallest and largest eigenvalues, the norm, the
    number of Newton steps, scipy's message and the status (module docstring). `callback` is
    called with the flat weights after every Newton step."""
    shape = W.shape

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        loss, g = _flat_vg(jnp.asarray(x), shape, stats)
        return float(loss), np.asarray(g)

    def hess(x: np.ndarray) -> np.ndarray:
        return np.asarray(_flat_hess(jnp.asarray(x), shape, stats))

    loss0 = fg(W.ravel())[0]
    res = scipy.optimize.minimize(
        fg, W.ravel(), jac=True, hess=hess, method="trust-exact",
        options={"gtol": 1e-13, "maxiter": max_steps}, callback=callback,
    )  # fmt: skip
    loss, g = fg(res.x)
    H = hess(res.x)
    eig = np.linalg.eigvalsh(0.5 * (H + H.T))
    norm0, norm = float(np.linalg.norm(W)), float(np.linalg.norm(res.x))
    gmax = float(np.abs(g).max())
    negative = eig[0] < -EIG_ROUNDOFF * max(abs(eig[-1]), 1.0)
    if gmax <= GRAD_OK:
        status = "saddle" if negative else "minimum"
    elif norm > (1 + ESCAPE_GROWTH) * norm0 and loss < loss0:
        status = "escaping"
    else:
        status = "not converged"
    info = {
        "loss": loss, "grad": gmax, "eig_min": float(eig[0]), "eig_max": float(eig[-1]),
        "norm": norm, "newton_steps": int(res.nit), "newton_message": str(res.message),
        "status": status,
    }  # fmt: skip
    return res.x.reshape(shape), info


def _training_set(d: int, n: int, B: int, key: jax.Array) -> Any:
    return lsa.PromptDistribution(np.eye(d)).sample(jax.random.fold_in(key, 0), B, n)


def _start(d: int, L: int, s: int, key: jax.Array) -> np.ndarray:
    """Start s at depth L: all entries 0.1 N(0, 1), key `fold_in(key, 100 L + s)`."""
    return 0.1 * np.asarray(
        jax.random.normal(jax.random.fold_in(key, 100 * L + s), (2, L, d + 1, d + 1))
    )


def _stats(P: Any, convention: Convention) -> DeepStats:
    return deep_stats(P.X, P.y, P.x_q, P.y_q, convention)


def conventions_table(
    d: int,
    n: int,
    B: int,
    depths: Sequence[int],
    n_starts: int,
    key: jax.Array,
    csv: Path,
    *,
    n_test: int = 100_000,
    flow_steps: int = 5000,
    polish_steps: int = 600,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs (module docstring) appended to `csv` (resumed), and the per-(L, convention) summary.
    Keys: training prompts `fold_in(key, 0)`, test prompts `fold_in(key, 1)`, starts
    `fold_in(key, 100 L + s)`."""
    lsa.require_x64("simulations.checks.deep_conventions")
    dist = lsa.PromptDistribution(np.eye(d))
    train = _training_set(d, n, B, key)
    test = dist.sample(jax.random.fold_in(key, 1), n_test, n)
    y_test = np.asarray(test.y_q)
    have = finished_keys(csv, ("L", "convention", "start"))
    for L in depths:
        a_star = optimal_step_sizes(d, n, L)
        sparse_risk = step_sizes_risk(a_star, d, n)
        for s in range(n_starts):
            W0 = _start(d, L, s, key)
            for conv in CONVENTIONS:
                if (L, conv, s) in have:
                    continue
                t0 = time.perf_counter()
                st = _stats(train, conv)
                sol, Wf = _flow_end(W0, st, flow_steps)
                pf = {k: v[-1] for k, v in sol.ys.items()}
                Wp, info = newton_polish(Wf, st, polish_steps)
                pred = np.asarray(deep_stats_predict(Wp[0], Wp[1], _stats(test, conv)))
                e2 = (pred - y_test) ** 2
                row = {
                    "L": L, "convention": conv, "start": s, "d": d, "n": n, "B": B,
                    "t_flow": float(sol.ts[-1]), "loss_flow": float(_loss(pf, st)),
                    "grad_flow": float(_gmax(pf, st)), "norm_flow": float(np.linalg.norm(Wf)),
                    **info, "test_risk": float(e2.mean()),
                    "test_se": float(e2.std(ddof=1) / np.sqrt(e2.size)),
                    "test_median": float(np.median(e2)),
                    "sparse_optimum_risk": float(sparse_risk),
                    "wall_s": time.perf_counter() - t0,
                    "weights": json.dumps(Wp.ravel().tolist()),
                }  # fmt: skip
                append_rows(csv, pd.DataFrame([row]))
                log(f"    L = {L} {conv} start {s}: loss {row['loss']:.6g} (flow "
                    f"{row['loss_flow']:.6g}), |grad| {row['grad']:.1e}, {info['status']}, "
                    f"norm {row['norm_flow']:.3g} -> {row['norm']:.3g}, test risk "
                    f"{row['test_risk']:.4f} ± {row['test_se']:.4f}, "
                    f"{row['wall_s']:.1f} s")  # fmt: skip
    table = pd.read_csv(csv)
    return table, conventions_summary(table, test)


def run_weights(row: Any) -> Float[np.ndarray, "2 L d+1 d+1"]:
    """The polished weights `[W_PV, W_KQ]` of one row of `conventions_table`'s CSV (column
    `weights`: JSON, round-trip exact)."""
    d = int(row["d"])
    return np.asarray(json.loads(row["weights"]), dtype=np.float64).reshape(
        2, int(row["L"]), d + 1, d + 1
    )


def conventions_summary(table: pd.DataFrame, test: Any) -> pd.DataFrame:
    """Per (L, convention): the best start (lowest training loss), how many starts reach it
    (loss within 1e-8 relative), how the starts ended (`STATUSES`), the best start's status,
    norm, test risk and median squared error, and the SPD between the two conventions' best
    stacks on the same test prompts `test` (their predictions recomputed from the saved
    weights)."""
    rows = []
    for L, tab in table.groupby("L"):
        best = {}
        for conv, t in tab.groupby("convention"):
            i = t["loss"].idxmin()
            r = t.loc[i]
            W = run_weights(r)
            st = _stats(test, cast(Convention, conv))
            best[conv] = np.asarray(deep_stats_predict(W[0], W[1], st))
            rows.append({
                "L": int(L), "convention": conv, "best_loss": float(r["loss"]),
                "starts_at_best": int((np.abs(t["loss"] - r["loss"]) <= 1e-8 * r["loss"]).sum()),
                "starts": len(t),
                "statuses": ", ".join(f"{int((t['status'] == k).sum())} {k}"
                                      for k in STATUSES if (t["status"] == k).any()),
                "best_status": str(r["status"]), "best_norm": float(r["norm"]),
                "test_risk": float(r["test_risk"]), "test_se": float(r["test_se"]),
                "test_median": float(r["test_median"]),
                "sparse_optimum_risk": float(r["sparse_optimum_risk"]),
                "max_grad": float(r["grad"]),
            })  # fmt: skip
        if len(best) == 2:
            diff = (best["ahn"] - best["zfb"]) ** 2
            for row in rows[-2:]:
                row["spd_between_conventions"] = float(diff.mean())
                row["spd_se"] = float(diff.std(ddof=1) / np.sqrt(diff.size))
    return pd.DataFrame(rows)


def escape_probe(
    d: int,
    n: int,
    B: int,
    L: int,
    convention: Convention,
    start: int,
    key: jax.Array,
    *,
    flow_steps: int = 20_000,
    newton_steps: int = 1000,
    every: int = 100,
) -> pd.DataFrame:
    """Follow one run of `conventions_table` (same training set of B prompts, same start) past its
    polish: the flow, then `newton_steps` trust-region Newton steps, recording every `every`
    steps the loss, max |grad| and each layer's ||W_PV|| and ||W_KQ||. An "escaping" run shows the
    loss still falling while some layer's norms grow (docs/deep.md: at L = 2 "zfb" start 1 the
    first layer grows at B = 2000, 8000 and 32000)."""
    lsa.require_x64("simulations.checks.deep_conventions.escape_probe")
    st = _stats(_training_set(d, n, B, key), convention)
    W0 = _start(d, L, start, key)
    _, Wf = _flow_end(W0, st, flow_steps)
    rows: list[dict[str, Any]] = []

    def record(x: np.ndarray, step: int) -> None:
        W = x.reshape(Wf.shape)
        loss, g = _flat_vg(jnp.asarray(x), Wf.shape, st)
        norms = np.linalg.norm(W, axis=(2, 3))  # (2, L)
        rows.append({
            "newton_step": step, "loss": float(loss), "grad": float(jnp.max(jnp.abs(g))),
            **{f"norm_PV_{ell + 1}": float(norms[0, ell]) for ell in range(L)},
            **{f"norm_KQ_{ell + 1}": float(norms[1, ell]) for ell in range(L)},
        })  # fmt: skip

    record(Wf.ravel(), 0)
    count = [0]

    def callback(x: np.ndarray) -> None:
        count[0] += 1
        if count[0] % every == 0:
            record(x, count[0])

    newton_polish(Wf, st, newton_steps, callback)
    return pd.DataFrame(rows).assign(B=B, L=L, convention=convention, start=start)


#: The probes docs/deep.md quotes: L = 2 "zfb" start 1 of `conventions_table` (d = 2, n = 8) on
#: training sets of B prompts, as (B, Newton steps, record every).
ESCAPE_PLAN: tuple[tuple[int, int, int], ...] = ((2000, 3500, 250), (8000, 1000, 100),
                                                 (32000, 800, 100))  # fmt: skip


def escape_probes(
    csv: Path,
    key: jax.Array,
    plan: Sequence[tuple[int, int, int]] = ESCAPE_PLAN,
    *,
    d: int = 2,
    n: int = 8,
    L: int = 2,
    convention: Convention = "zfb",
    start: int = 1,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """`escape_probe` for each (B, Newton steps, every) of `plan`, appended to `csv` one B at a
    time; a rerun skips the B it finds (resume without redoing work). Returns the whole table."""
    have = finished_keys(csv, ("B",))
    for B, steps, every in plan:
        if (B,) in have:
            continue
        t0 = time.perf_counter()
        probe = escape_probe(d, n, B, L, convention, start, key, newton_steps=steps, every=every)
        append_rows(csv, probe)
        first, last = probe.iloc[0], probe.iloc[-1]
        log(f"    B = {B}: loss {first['loss']:.6g} -> {last['loss']:.6g} in "
            f"{int(last['newton_step'])} Newton steps, first layer's ||W_PV|| "
            f"{first['norm_PV_1']:.3g} -> {last['norm_PV_1']:.3g}, max |grad| "
            f"{last['grad']:.2g}, {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return pd.read_csv(csv)
