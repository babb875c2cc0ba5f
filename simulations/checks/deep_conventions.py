"""The full parameterisation of an L-layer stack trained in both conventions (issue 10 part 3;
docs/deep.md "Full parameterisation: the two conventions").

For each depth L, convention ("ahn": masked, "zfb": unmasked) and start (all 2L (d+1)^2 entries
~ 0.1 N(0, 1), the same starts for both conventions), on one fixed training set of B prompts
(isotropic x, w ~ N(0, I), noiseless):

1. the empirical gradient flow dW/dt = -grad L_hat(W) (`lsa.deep_empirical`'s Gram-route
   gradient) with diffrax Tsit5 (rtol 1e-6) for `flow_steps` steps, which carries it past the
   plateaus of the small start;
2. a BFGS polish (optimistix) of the same loss from the flow's end point, restarted (at most 5
   times) until max |grad| <= 1e-10 or BFGS stops moving: the critical point the flow is heading
   for. The final gradient is recorded: in nearly flat directions the loss reaches its round-off
   floor with max |grad| up to about 1e-8. (The flow alone converges very slowly here: the
   curvature spread at the end exceeds 1e8; docs/deep.md.) Both the flow's and the polished loss
   are recorded, so a polish that jumped to another basin would show as a large drop.

Measured per run: training loss, max |grad|, the test risk on `n_test` fresh prompts with its
standard error, the sparse-family optimum's exact risk (`theory.deep.step_sizes_risk` at
`optimal_step_sizes`) for reference, and the mean squared difference (SPD) between the two
conventions' predictions on the same test prompts, for the best start of each.

Rows are appended to a CSV as they finish; a rerun skips the (L, convention, start) rows it
finds (resume without redoing work).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pandas as pd

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

__all__ = ["conventions_summary", "conventions_table"]

CONVENTIONS: tuple[Convention, ...] = ("ahn", "zfb")
#: The polish restarts BFGS (at most POLISH_RESTARTS times) until max |grad| <= GRAD_TARGET.
POLISH_RESTARTS, GRAD_TARGET = 5, 1e-10


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


@eqx.filter_jit
def _polish(p, stats):  # type: ignore[no-untyped-def]
    return optx.minimise(
        _loss, optx.BFGS(rtol=1e-13, atol=1e-13), p, args=stats, max_steps=20_000, throw=False
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
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs (module docstring) appended to `csv` (resumed), and the per-(L, convention) summary.
    Keys: training prompts `fold_in(key, 0)`, test prompts `fold_in(key, 1)`, starts
    `fold_in(key, 100 L + s)`."""
    lsa.require_x64("simulations.checks.deep_conventions")
    dist = lsa.PromptDistribution(np.eye(d))
    train = dist.sample(jax.random.fold_in(key, 0), B, n)
    test = dist.sample(jax.random.fold_in(key, 1), n_test, n)
    y_test = np.asarray(test.y_q)
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    have = set()
    if len(done):
        have = {(int(r.L), str(r.convention), int(r.start)) for r in done.itertuples()}
    for L in depths:
        a_star = optimal_step_sizes(d, n, L)
        sparse_risk = step_sizes_risk(a_star, d, n)
        for s in range(n_starts):
            W0 = 0.1 * np.asarray(
                jax.random.normal(jax.random.fold_in(key, 100 * L + s), (2, L, d + 1, d + 1))
            )
            for conv in CONVENTIONS:
                if (L, conv, s) in have:
                    continue
                t0 = time.perf_counter()
                st = _stats(train, conv)
                p0 = {"W_PV": jnp.asarray(W0[0]), "W_KQ": jnp.asarray(W0[1])}
                sol = _flow(p0, st, max_steps=flow_steps)
                pf = {k: v[-1] for k, v in sol.ys.items()}
                pb, n_bfgs, result = pf, 0, ""
                for _ in range(POLISH_RESTARTS):  # BFGS restarts (a fresh Hessian estimate)
                    res = _polish(pb, st)
                    pb, n_bfgs, result = (
                        res.value,
                        n_bfgs + int(res.stats["num_steps"]),
                        str(res.result),
                    )
                    if float(_gmax(pb, st)) <= GRAD_TARGET:
                        break
                pred = np.asarray(deep_stats_predict(pb["W_PV"], pb["W_KQ"], _stats(test, conv)))
                e2 = (pred - y_test) ** 2
                row = {
                    "L": L, "convention": conv, "start": s, "d": d, "n": n, "B": B,
                    "t_flow": float(sol.ts[-1]), "loss_flow": float(_loss(pf, st)),
                    "grad_flow": float(_gmax(pf, st)), "loss": float(_loss(pb, st)),
                    "grad": float(_gmax(pb, st)), "bfgs_steps": n_bfgs,
                    "bfgs_result": result, "test_risk": float(e2.mean()),
                    "test_se": float(e2.std(ddof=1) / np.sqrt(e2.size)),
                    "sparse_optimum_risk": float(sparse_risk),
                    "wall_s": time.perf_counter() - t0,
                }  # fmt: skip
                np.save(csv.with_name(f"{csv.stem}_pred_L{L}_{conv}_{s}.npy"), pred)
                pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.exists(), index=False)
                log(f"    L = {L} {conv} start {s}: loss {row['loss']:.6g} (flow "
                    f"{row['loss_flow']:.6g}), |grad| {row['grad']:.1e}, test risk "
                    f"{row['test_risk']:.4f} ± {row['test_se']:.4f}, "
                    f"{row['wall_s']:.1f} s")  # fmt: skip
    table = pd.read_csv(csv)
    return table, conventions_summary(table, csv, y_test)


def conventions_summary(table: pd.DataFrame, csv: Path, y_test: np.ndarray) -> pd.DataFrame:
    """Per (L, convention): the best start (lowest training loss), how many starts reach it
    (loss within 1e-8 relative), its test risk, and the SPD between the two conventions' best
    stacks on the same test prompts."""
    rows = []
    for L, tab in table.groupby("L"):
        best = {}
        for conv, t in tab.groupby("convention"):
            i = t["loss"].idxmin()
            r = t.loc[i]
            name = f"{csv.stem}_pred_L{L}_{conv}_{int(r['start'])}.npy"
            best[conv] = np.load(csv.with_name(name))
            rows.append({
                "L": int(L), "convention": conv, "best_loss": float(r["loss"]),
                "starts_at_best": int((np.abs(t["loss"] - r["loss"]) <= 1e-8 * r["loss"]).sum()),
                "starts": len(t), "test_risk": float(r["test_risk"]),
                "test_se": float(r["test_se"]),
                "sparse_optimum_risk": float(r["sparse_optimum_risk"]),
                "max_grad": float(r["grad"]),
            })  # fmt: skip
        if len(best) == 2:
            diff = (best["ahn"] - best["zfb"]) ** 2
            for row in rows[-2:]:
                row["spd_between_conventions"] = float(diff.mean())
                row["spd_se"] = float(diff.std(ddof=1) / np.sqrt(diff.size))
    return pd.DataFrame(rows)
