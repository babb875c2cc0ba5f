"""Benchmark: Monte Carlo test risk of the trained LSA, lsa-flow against a plain numpy loop.

Setting (issue item 8): d = 20, M = 40 test examples, the trained layer `theory.limit_weights`
for a non-diagonal Lambda (condition number 10) and N = 40, no shift, 10^7 prompts.

- **numpy baseline**: a loop over batches that samples the prompts with `numpy.random`, builds
  the embedding `E` of shape (B, d+1, M+1) and applies the literal map
  `E + W_PV E (E^T W_KQ E) / M` with batched matmuls, reads `[-1, -1]` and accumulates the
  squared error. It is timed on `--baseline-prompts` prompts and its rate extrapolated.
- **lsa-flow**: `simulations.icl.montecarlo.mc_risk` with `LSAPredictor`, jit-compiled per batch,
  with each of its three samplers (all exact in law; they draw different random streams):
  - `prompts`: draws every prompt (`M d = 800` normals) and evaluates the last column of the
    map only (`lsa.predict_prompt`);
  - `stats`: draws the sufficient statistics `(S, g, c, x_q)` directly (Bartlett decomposition
    of the Wishart matrix `S = X^T X`: `d (d-1)/2 = 190` normals and `d` chi-squares per prompt)
    and predicts from them (`Predictor.from_stats`);
  - `subspace` (what `sampler="auto"` picks here): the LSA needs `S` only along
    `a = W_PV[d, :d]` and `W_KQ[:d, :d] x_q`, so by the rotation invariance of the Wishart law
    it draws `S` restricted to the span of those and `w` (3 dimensions: 3 normals and 3
    chi-squares per prompt, plus `w` and `x_q`).
  Compilation is timed separately. A sampler whose full run would take longer than its time cap
  (`--max-seconds` for `subspace`, `--other-max-seconds` for the other two) runs a fraction of
  the prompts, reported as such, with the full time extrapolated.

Every estimate is compared with the closed form `theory.risk(Lambda, N, M)` (z-scores), and the
time per prompt is split into sampling and prediction for each implementation.

    python benchmarks/montecarlo.py            # 10^7 prompts (or fractions, see above)
    python benchmarks/montecarlo.py --quick    # a few seconds per sampler
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import numpy as np

import lsa
import theory
from simulations.icl.distributions import named_shift, rbg_key, rbg_threefry_key
from simulations.icl.montecarlo import auto_sampler, mc_risk
from simulations.icl.predictors import LSAPredictor

D, M, N = 20, 40, 40


def numpy_batch(rng, L, W_PV, W_KQ, B):
    """One baseline batch: sample, build E, apply the literal map; returns squared errors."""
    X = rng.standard_normal((B, M, D)) @ L.T
    x_q = rng.standard_normal((B, D)) @ L.T
    w = rng.standard_normal((B, D))
    y = np.einsum("bmd,bd->bm", X, w)
    y_q = np.einsum("bd,bd->b", x_q, w)
    E = np.empty((B, D + 1, M + 1))
    E[:, :D, :M] = X.transpose(0, 2, 1)
    E[:, :D, M] = x_q
    E[:, D, :M] = y
    E[:, D, M] = 0.0
    F = E + W_PV @ E @ (E.transpose(0, 2, 1) @ W_KQ @ E) / M
    return (F[:, -1, -1] - y_q) ** 2


def numpy_risk(n, batch, L, W_PV, W_KQ, seed):
    rng = np.random.default_rng(seed)
    s = s2 = 0.0
    done = 0
    t0 = time.perf_counter()
    while done < n:
        b = min(batch, n - done)
        e = numpy_batch(rng, L, W_PV, W_KQ, b)
        s += float(e.sum())
        s2 += float((e * e).sum())
        done += b
    dt = time.perf_counter() - t0
    mean = s / n
    se = math.sqrt(max(s2 / n - mean * mean, 0.0) * n / (n - 1) / n)
    return mean, se, dt


def split_times(L, W_PV, W_KQ, dist, pred, B, reps=3):
    """Microseconds per prompt of sampling and of prediction: numpy and each lsa-flow sampler."""
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    for _ in range(reps):
        X = rng.standard_normal((B, M, D)) @ L.T
        x_q = rng.standard_normal((B, D)) @ L.T
        w = rng.standard_normal((B, D))
        y = np.einsum("bmd,bd->bm", X, w)
    out = {"numpy": [(time.perf_counter() - t) / (reps * B)]}
    E = np.empty((B, D + 1, M + 1))
    t = time.perf_counter()
    for _ in range(reps):
        E[:, :D, :M] = X.transpose(0, 2, 1)
        E[:, :D, M] = x_q
        E[:, D, :M] = y
        E[:, D, M] = 0.0
        F = E + W_PV @ E @ (E.transpose(0, 2, 1) @ W_KQ @ E) / M
        F[:, -1, -1].sum()
    out["numpy"].append((time.perf_counter() - t) / (reps * B))

    samplers = {
        "prompts": (
            lambda k: dist._sample(k, B, M),
            lambda P: pred._predict(P.X, P.y, P.x_q).sum(),
        ),
        "stats": (
            lambda k: dist._sample_stats(k, B, M, False)[0],
            lambda st: pred._from_stats(st).sum(),
        ),
        "subspace": (
            lambda k: dist._sample_stats(k, B, M, False, pred._stats_directions)[0],
            lambda st: pred._from_stats(st).sum(),
        ),
    }
    for name, (sample_fn, predict_fn) in samplers.items():
        sample, predict = jax.jit(sample_fn), jax.jit(predict_fn)
        # the keys mc_risk uses: rbg for the prompts, RngBitGenerator's THREE_FRY for the stats
        to_key = rbg_key if name == "prompts" else lambda k: rbg_threefry_key(rbg_key(k))
        keys = [jax.block_until_ready(to_key(jax.random.PRNGKey(i))) for i in range(reps + 1)]
        P = jax.block_until_ready(sample(keys[0]))
        jax.block_until_ready(predict(P))
        t = time.perf_counter()
        for i in range(reps):
            P = jax.block_until_ready(sample(keys[i + 1]))
        t_sample = (time.perf_counter() - t) / (reps * B)
        t = time.perf_counter()
        for _ in range(reps):
            jax.block_until_ready(predict(P))
        out[name] = [t_sample, (time.perf_counter() - t) / (reps * B)]
    return {k: [1e6 * x for x in v] for k, v in out.items()}


def run_flow(pred, dist, n_flow, B, key, sampler, max_seconds):
    """Compile on one batch, time one more, size the run to the cap, run it."""
    kw = {"batch_size": B, "sampler": sampler}
    t = time.perf_counter()
    mc_risk({"lsa": pred}, dist, M, B, key, **kw)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    mc_risk({"lsa": pred}, dist, M, B, jax.random.fold_in(key, 1), **kw)
    t_batch = time.perf_counter() - t
    n_run = n_flow
    if n_flow / B * t_batch > max_seconds:
        n_run = max(B, int(max_seconds / t_batch) * B)
    t = time.perf_counter()
    est = mc_risk({"lsa": pred}, dist, M, n_run, key, **kw)["lsa"]
    dt = time.perf_counter() - t
    return {"n": n_run, "dt": dt, "rate": n_run / dt, "est": est,
            "compile": max(t_first - t_batch, 0.0)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=float, default=1e7, help="lsa-flow prompts (default 1e7)")
    ap.add_argument("--baseline-prompts", type=float, default=2e5, help="numpy prompts timed")
    ap.add_argument("--batch-size", type=int, default=25_000, help="prompts per batch")
    ap.add_argument("--max-seconds", type=float, default=90.0,
                    help="cap on the lsa-flow run with the subspace sampler")  # fmt: skip
    ap.add_argument("--other-max-seconds", type=float, default=30.0,
                    help="cap on each of the runs with the prompts and stats samplers")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="2e5 / 2e4 prompts, a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    lsa.set_precision("float64")  # an explicit choice: importing lsa changes nothing
    n_flow = int(2e5 if args.quick else args.prompts)
    n_np = int(2e4 if args.quick else args.baseline_prompts)
    B = min(args.batch_size, n_flow)

    Lam = np.asarray(lsa.spread_covariance(D, 10.0, jax.random.PRNGKey(args.seed)))
    L = np.linalg.cholesky(Lam)
    W_PV, W_KQ = theory.limit_weights(Lam, N)
    R = theory.risk(Lam, N, M)
    pred = LSAPredictor(W_PV, W_KQ)
    dist = named_shift("none", Lam)
    key = jax.random.PRNGKey(args.seed + 1)
    auto = auto_sampler([pred], dist, M)

    print(f"d = {D}, M = {M}, N = {N}, kappa(Lambda) = 10 (non-diagonal), closed form R = {R:.6g}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.1f}; sampler='auto' picks {auto!r}")  # fmt: skip

    # numpy baseline
    np_mean, np_se, np_dt = numpy_risk(n_np, 5_000, L, W_PV, W_KQ, args.seed)
    np_rate = n_np / np_dt

    runs = {}
    for sampler in ("prompts", "stats", "subspace"):
        cap = args.max_seconds if sampler == "subspace" else args.other_max_seconds
        runs[sampler] = run_flow(pred, dist, n_flow, B, key, sampler, cap)

    split = split_times(L, W_PV, W_KQ, dist, pred, min(B, 5_000))

    print()
    print("| implementation | prompts run | seconds | prompts/s | vs numpy | "
          f"time for {n_flow:.3g} | compile (s) | risk ± SE | z vs closed form |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| numpy loop (literal E map) | {n_np:.3g} | {np_dt:.2f} | {np_rate:,.0f} | 1.0x | "
          f"{n_flow / np_rate:.0f} s (extrapolated) | - | {np_mean:.5g} ± {np_se:.2g} | "
          f"{(np_mean - R) / np_se:+.2f} |")  # fmt: skip
    for sampler, r in runs.items():
        est = r["est"]
        full = f"{n_flow / r['rate']:.0f} s"
        if r["n"] < n_flow:
            full += " (extrapolated)"
        print(f"| lsa-flow mc_risk, sampler={sampler!r} | {r['n']:.3g} | {r['dt']:.2f} | "
              f"{r['rate']:,.0f} | {r['rate'] / np_rate:.1f}x | {full} | {r['compile']:.2f} | "
              f"{est.mean:.5g} ± {est.se:.2g} | {est.z(R):+.2f} |")  # fmt: skip
    print()
    for sampler, r in runs.items():
        if r["n"] < n_flow:
            print(f"sampler={sampler!r} ran {r['n']:.3g} of the requested {n_flow:.3g} prompts "
                  f"(time cap); at {r['rate']:,.0f} prompts/s the full run would take "
                  f"{n_flow / r['rate']:.0f} s.")  # fmt: skip
    print()
    print("time per prompt (microseconds), split into sampling and prediction:")
    print("| implementation | sampling | prediction | total |")
    print("|---|---|---|---|")
    for name, (ts, tm) in split.items():
        print(f"| {name} | {ts:.2f} | {tm:.2f} | {ts + tm:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
