"""Benchmark: one right-hand side of the empirical full-parameter gradient flow.

Setting (issue item 8): B = 10^5 training prompts of length N = 20 at d = 10 (x ~ N(0, Lambda),
Lambda with condition number 10 in a Haar-random basis, w ~ N(0, I)); the right-hand side
`-grad L_hat(W_PV, W_KQ)` of the empirical flow [ZFB eq. 3.7] over all `2 (d+1)^2` entries, at a
random point (every entry non-zero, so no shortcut of the paper's start applies).

Literal baselines (the map applied to every prompt, then differentiated):

- **JAX literal**: `E = embed(X, y, x_q)` for all prompts, `lsa.lsa_forward(E, W_PV, W_KQ)` (the
  full map `E + W_PV E (E^T W_KQ E) / N`), prediction `[d, N]`, loss, `jax.grad`; jit-compiled.
- **torch literal**: the same map with `torch.bmm` and autograd (CPU build, `torch==2.13.0`).

lsa-flow's right-hand sides (what `lsa.empirical_flow` evaluates):

- **prompt statistics**: `lsa.empirical_loss` over `lsa.prompt_stats` (per prompt `S = E E^T / N`
  and `x_q`, precomputed once): one matrix-vector and one matrix-matrix product, O(B (d+1)^2);
- **quadratic form**: `lsa.quadratic_form_loss` over `lsa.quadratic_loss` (the loss is an exact
  quadratic form in `z = w_PV_row (x) vec(W_KQ[:, :d])`, a `(d+1)^2 d` square matrix built once):
  cost independent of B.

Every right-hand side is checked against the JAX literal one (max relative difference), then
timed as the median of `--repeats` calls after a warm-up (compilation excluded and reported).
The one-off precomputations (statistics, quadratic form) are reported separately: they are paid
once per training set, the right-hand side thousands of times per flow.

Usage: `python benchmarks/empirical_flow.py [--B 100000] [--dtype float64] [--json PATH]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lsa

lsa.set_precision("float64")


def timeit(fn, repeats: int) -> tuple[float, float, object]:
    """(first call seconds, median of `repeats` later calls, last output)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def block(x):
    return jax.block_until_ready(x)


def rel(a, b) -> float:
    a = [np.asarray(x, np.float64) for x in a]
    b = [np.asarray(x, np.float64) for x in b]
    scale = max(float(np.max(np.abs(x))) for x in b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True)) / scale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--N", type=int, default=20)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    B, d, N = args.B, args.d, args.N
    dt = jnp.float64 if args.dtype == "float64" else jnp.float32
    print(f"empirical-flow RHS benchmark: B = {B}, d = {d}, N = {N}, {args.dtype}, "
          f"{jax.devices()[0]}")  # fmt: skip

    key = jax.random.PRNGKey(0)
    k_lam, k_p, k_w = jax.random.split(key, 3)
    Lam = np.asarray(lsa.spread_covariance(d, 10.0, k_lam))
    P = lsa.PromptDistribution(Lam).sample(k_p, B, N)
    X, y, xq, yq = (jnp.asarray(a, dt) for a in (P.X, P.y, P.x_q, P.y_q))
    kpv, kkq = jax.random.split(k_w)
    W = (0.3 * jax.random.normal(kpv, (d + 1, d + 1), dt),
         0.3 * jax.random.normal(kkq, (d + 1, d + 1), dt))  # fmt: skip

    # --- JAX literal -----------------------------------------------------------------------
    def literal_loss(w, X, y, xq, yq):
        E = lsa.embed(X, y, xq)
        pred = lsa.lsa_forward(E, w[0], w[1])[:, -1, -1]
        return 0.5 * jnp.mean((pred - yq) ** 2)

    literal_rhs = jax.jit(jax.grad(literal_loss))
    first, t_lit, g_lit = timeit(lambda: block(literal_rhs(W, X, y, xq, yq)), args.repeats)
    print(f"JAX literal map:        {1e3 * t_lit:9.2f} ms  (compile + first {first:.2f} s)")
    results = {"jax_literal_ms": 1e3 * t_lit}

    # --- torch literal ---------------------------------------------------------------------
    t_torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch literal map: skipped (pip install 'lsa-flow[bench]' for torch==2.13.0)")
        else:
            tdt = torch.float64 if args.dtype == "float64" else torch.float32
            E = torch.from_numpy(np.array(lsa.embed(X, y, xq))).to(tdt)
            tyq = torch.from_numpy(np.array(yq)).to(tdt)
            Wt = [torch.from_numpy(np.array(w)).to(tdt).requires_grad_(True) for w in W]

            def torch_rhs():
                for w in Wt:
                    w.grad = None
                attn = E.transpose(1, 2) @ Wt[1] @ E
                f = E + Wt[0] @ E @ attn / N
                loss = 0.5 * torch.mean((f[:, -1, -1] - tyq) ** 2)
                loss.backward()
                return [w.grad.detach().numpy().copy() for w in Wt]

            first, t_torch, g_torch = timeit(torch_rhs, args.repeats)
            agree = rel(g_torch, g_lit)
            threads = torch.get_num_threads()
            print(f"torch literal map:      {1e3 * t_torch:9.2f} ms  "
                  f"({threads} threads; agrees to {agree:.1e})")  # fmt: skip
            results["torch_literal_ms"] = 1e3 * t_torch

    # --- lsa-flow: prompt statistics ---------------------------------------------------------
    t0 = time.perf_counter()
    stats = block(lsa.prompt_stats(X, y, xq, yq))
    t_stats = time.perf_counter() - t0
    stats_rhs = jax.jit(jax.grad(lambda w, s: lsa.empirical_loss(w[0], w[1], s)))
    first, t_st, g_st = timeit(lambda: block(stats_rhs(W, stats)), args.repeats)
    print(f"lsa prompt statistics:  {1e3 * t_st:9.2f} ms  (agrees to {rel(g_st, g_lit):.1e}; "
          f"statistics built once in {t_stats:.2f} s)")  # fmt: skip

    # --- lsa-flow: quadratic form ------------------------------------------------------------
    t0 = time.perf_counter()
    q = block(lsa.quadratic_loss(stats))
    t_q = time.perf_counter() - t0
    quad_rhs = jax.jit(jax.grad(lambda w, q: lsa.quadratic_form_loss(w[0], w[1], q)))
    first, t_qf, g_q = timeit(lambda: block(quad_rhs(W, q)), max(args.repeats, 50))
    print(f"lsa quadratic form:     {1e3 * t_qf:9.3f} ms  (agrees to {rel(g_q, g_lit):.1e}; "
          f"form built once in {t_q:.2f} s)")  # fmt: skip

    results.update(
        stats_ms=1e3 * t_st, quadratic_ms=1e3 * t_qf, stats_build_s=t_stats, quadratic_build_s=t_q,
        B=B, d=d, N=N, dtype=args.dtype, device=str(jax.devices()[0]),
    )  # fmt: skip
    print("speed-up of one right-hand side (literal / lsa-flow)  [target >= 100x]:")
    for base, t_b in [("JAX literal", t_lit), ("torch literal", t_torch)]:
        if t_b is None:
            continue
        print(f"  {base:<14} / prompt statistics: {t_b / t_st:8.1f}x    "
              f"/ quadratic form: {t_b / t_qf:10.1f}x")  # fmt: skip
        tag = base.split()[0].lower()
        results[f"ratio_{tag}_stats"] = t_b / t_st
        results[f"ratio_{tag}_quadratic"] = t_b / t_qf
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
