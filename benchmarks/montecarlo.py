"""Benchmark: Monte Carlo test risk of the trained LSA, lsa-flow against a plain numpy loop.

Setting (issue item 8): d = 20, M = 40 test examples, the trained layer `theory.limit_weights`
for a non-diagonal Lambda (condition number 10) and N = 40, no shift, 10^7 prompts.

- **numpy baseline**: a loop over batches that samples the prompts with `numpy.random`, builds
  the embedding `E` of shape (B, d+1, M+1) and applies the literal map
  `E + W_PV E (E^T W_KQ E) / M` with batched matmuls, reads `[-1, -1]` and accumulates the
  squared error. It is timed on `--baseline-prompts` prompts and its rate extrapolated.
- **lsa-flow**: `simulations.montecarlo.mc_risk` with `LSAPredictor` (which evaluates only the
  last column of the map, `lsa.predict_prompt`), jit-compiled per batch. Compilation is timed
  separately. If the full run would take longer than `--max-seconds`, a fraction is run (and
  reported as such).

Both estimates are compared with the closed form `theory.risk(Lambda, N, M)` (z-scores), and
the time per prompt is split into sampling and the map for each implementation, because the
two share the cost of drawing ~880 Gaussian numbers per prompt.

    python benchmarks/montecarlo.py            # 10^7 prompts (or a fraction, see above)
    python benchmarks/montecarlo.py --quick    # a few seconds
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
from simulations.distributions import named_shift, rbg_key
from simulations.montecarlo import mc_risk
from simulations.predictors import LSAPredictor

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
    """Seconds per prompt of sampling and of the map alone, for numpy and for lsa-flow."""
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    for _ in range(reps):
        X = rng.standard_normal((B, M, D)) @ L.T
        x_q = rng.standard_normal((B, D)) @ L.T
        w = rng.standard_normal((B, D))
        y = np.einsum("bmd,bd->bm", X, w)
    np_sample = (time.perf_counter() - t) / (reps * B)
    E = np.empty((B, D + 1, M + 1))
    t = time.perf_counter()
    for _ in range(reps):
        E[:, :D, :M] = X.transpose(0, 2, 1)
        E[:, :D, M] = x_q
        E[:, D, :M] = y
        E[:, D, M] = 0.0
        F = E + W_PV @ E @ (E.transpose(0, 2, 1) @ W_KQ @ E) / M
        F[:, -1, -1].sum()
    np_map = (time.perf_counter() - t) / (reps * B)

    sample = jax.jit(lambda k: dist._sample(k, B, M))
    predict = jax.jit(lambda P: pred._predict(P.X, P.y, P.x_q).sum())
    k0 = rbg_key(jax.random.PRNGKey(0))
    P = jax.block_until_ready(sample(k0))
    jax.block_until_ready(predict(P))
    t = time.perf_counter()
    for i in range(reps):
        P = jax.block_until_ready(sample(rbg_key(jax.random.PRNGKey(i + 1))))
    jx_sample = (time.perf_counter() - t) / (reps * B)
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(predict(P))
    jx_map = (time.perf_counter() - t) / (reps * B)
    return np_sample, np_map, jx_sample, jx_map


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=float, default=1e7, help="lsa-flow prompts (default 1e7)")
    ap.add_argument("--baseline-prompts", type=float, default=2e5, help="numpy prompts timed")
    ap.add_argument("--batch-size", type=int, default=25_000, help="prompts per batch")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="cap on the lsa-flow run")
    ap.add_argument("--quick", action="store_true", help="2e5 / 2e4 prompts, a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
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

    print(f"d = {D}, M = {M}, N = {N}, kappa(Lambda) = 10 (non-diagonal), closed form R = {R:.6g}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    # numpy baseline
    np_mean, np_se, np_dt = numpy_risk(n_np, 5_000, L, W_PV, W_KQ, args.seed)
    np_rate = n_np / np_dt

    # lsa-flow: compile on one batch, then size the run to the time cap
    t = time.perf_counter()
    mc_risk({"lsa": pred}, dist, M, B, key, batch_size=B)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    mc_risk({"lsa": pred}, dist, M, B, jax.random.fold_in(key, 1), batch_size=B)
    t_batch = time.perf_counter() - t
    compile_s = max(t_first - t_batch, 0.0)
    n_run = n_flow
    if n_flow / B * t_batch > args.max_seconds:
        n_run = max(B, int(args.max_seconds / t_batch) * B)
    t = time.perf_counter()
    est = mc_risk({"lsa": pred}, dist, M, n_run, key, batch_size=B)["lsa"]
    fl_dt = time.perf_counter() - t
    fl_rate = n_run / fl_dt

    nps, npm, jxs, jxm = split_times(L, W_PV, W_KQ, dist, pred, min(B, 5_000))

    print()
    print("| implementation | prompts | seconds | prompts/s | risk ± SE | z vs closed form |")
    print("|---|---|---|---|---|---|")
    print(f"| numpy loop (literal E map) | {n_np:.3g} | {np_dt:.2f} | {np_rate:,.0f} | "
          f"{np_mean:.5g} ± {np_se:.2g} | {(np_mean - R) / np_se:+.2f} |")  # fmt: skip
    print(f"| lsa-flow mc_risk (LSAPredictor) | {n_run:.3g} | {fl_dt:.2f} | {fl_rate:,.0f} | "
          f"{est.mean:.5g} ± {est.se:.2g} | {est.z(R):+.2f} |")  # fmt: skip
    print()
    if n_run < n_flow:
        print(f"lsa-flow ran {n_run:.3g} of the requested {n_flow:.3g} prompts (time cap "
              f"{args.max_seconds:g} s); at {fl_rate:,.0f} prompts/s the full run would take "
              f"{n_flow / fl_rate:.0f} s.")  # fmt: skip
    print(f"numpy baseline extrapolated to {n_flow:.3g} prompts: {n_flow / np_rate:.0f} s")
    print(f"lsa-flow compilation (once per shape): {compile_s:.2f} s")
    print(f"speed-up (prompts/s, lsa-flow / numpy): {fl_rate / np_rate:.1f}x")
    print()
    print("time per prompt (microseconds), split into sampling and the map:")
    print("| implementation | sampling | map | total |")
    print("|---|---|---|---|")
    print(f"| numpy | {nps * 1e6:.2f} | {npm * 1e6:.2f} | {(nps + npm) * 1e6:.2f} |")
    print(f"| lsa-flow | {jxs * 1e6:.2f} | {jxm * 1e6:.2f} | {(jxs + jxm) * 1e6:.2f} |")
    print(f"map alone: lsa-flow is {npm / jxm:.0f}x faster (last column only, O(M d) per prompt "
          f"instead of O(M^2 d)); sampling alone: {nps / jxs:.1f}x.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
