"""Benchmark: value and gradient of the empirical loss of an L-layer LSA stack (issue 10 part 3).

Setting: B = 10^5 training prompts of length n = 40 at d = 8 (x ~ N(0, I), w ~ N(0, I)), L in
{1, 2, 3, 4} layers, at random full weights (every entry N(0, 0.1^2): no shortcut of the sparse
family applies), convention "zfb" (or --convention ahn).

Literal baselines (the map applied to every embedded prompt, then differentiated):

- **JAX literal**: `lsa.embed` for all prompts, `lsa.deep.deep_forward` (per layer
  `Z + W_PV Z D (Z^T W_KQ Z) / n`, the (n+1) x (n+1) attention formed), prediction
  `sign * Z_L[d, n]`, loss, `jax.value_and_grad`, jit-compiled; summed over chunks of `--chunk`
  prompts with `lax.map` (bounds memory: the unchunked map needs ~1.3 GB per layer for the
  attention matrices alone; on this machine chunking was not slower);
- **torch literal**: the same map with `torch` (CPU build, `torch==2.13.0`), float64, autograd,
  gradients accumulated over the same chunks, `torch.set_num_threads` = the cores JAX uses.

lsa-flow's route (`lsa.deep_empirical.deep_empirical_value_and_grad`): per prompt only the Gram
matrix `G0 = Z_0 D Z_0^T / n` and the query (built once per prompt set, reported separately),
the recursion `G <- M G M^T`, `q <- M q`, `M = I + W_PV G W_KQ` (O(L (d+1)^3) per prompt instead
of O(L (d+1) (n+1)^2)), and a hand-written backward pass; jit-compiled.

Every route is checked against the JAX literal one (relative difference of value and gradient),
then timed as the median of `--repeats` calls after a warm-up call (compilation excluded).

Usage: `python benchmarks/deep_empirical.py [--B 100000] [--L 1 2 3 4] [--json PATH]`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lsa
from lsa.deep import deep_forward, readout_sign
from lsa.deep_empirical import deep_empirical_value_and_grad, deep_stats

lsa.set_precision("float64")


def timeit(fn, repeats: int) -> tuple[float, float, list[float], object]:
    """(first call seconds, median of `repeats` later calls, all times, last output)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times, out


def rel(a, b) -> float:
    """Largest relative difference over the value and the two gradients (each relative to its
    own largest entry)."""
    out = abs(float(a[0]) - float(b[0])) / abs(float(b[0]))
    for x, y in zip(a[1], b[1], strict=True):
        x, y = np.asarray(x), np.asarray(y)
        out = max(out, float(np.max(np.abs(x - y)) / np.max(np.abs(y))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--L", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--convention", choices=("zfb", "ahn"), default="zfb")
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    B, d, n, conv, C = args.B, args.d, args.n, args.convention, args.chunk
    if B % C:
        raise ValueError(f"--B must be a multiple of --chunk; got {B} and {C}.")
    threads = os.cpu_count() or 1
    print(f"deep empirical loss+gradient benchmark: B = {B}, d = {d}, n = {n}, {conv}, float64, "
          f"{jax.devices()[0]}, {threads} cores (shared with other jobs: medians of "
          f"{args.repeats})")  # fmt: skip
    P = lsa.PromptDistribution(np.eye(d)).sample(jax.random.PRNGKey(0), B, n)
    X, y, xq, yq = P.X, P.y, P.x_q, P.y_q
    sign = readout_sign(conv)
    t0 = time.perf_counter()
    stats = jax.block_until_ready(deep_stats(X, y, xq, yq, conv))
    t_stats = time.perf_counter() - t0
    print(f"Gram statistics built once in {t_stats:.2f} s")
    results: dict[str, object] = {"B": B, "d": d, "n": n, "convention": conv, "chunk": C}
    results.update(threads=threads, stats_build_s=t_stats, rows=[])

    def literal_loss(w, X, y, xq, yq):
        E = lsa.embed(X, y, xq)
        pred = sign * deep_forward(E, w[0], w[1], conv)[..., -1, -1]
        return 0.5 * jnp.sum((pred - yq) ** 2) / B

    @jax.jit
    def literal_vg(w, X, y, xq, yq):
        chunks = [a.reshape(B // C, C, *a.shape[1:]) for a in (X, y, xq, yq)]
        vals, grads = jax.lax.map(lambda c: jax.value_and_grad(literal_loss)(w, *c), chunks)
        return jnp.sum(vals), jax.tree_util.tree_map(lambda g: jnp.sum(g, 0), grads)

    fast_vg = jax.jit(lambda w, s: deep_empirical_value_and_grad(w[0], w[1], s))
    for L in args.L:
        k1, k2 = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), L))
        W = (0.1 * jax.random.normal(k1, (L, d + 1, d + 1)),
             0.1 * jax.random.normal(k2, (L, d + 1, d + 1)))  # fmt: skip
        row: dict[str, float | int] = {"L": L}
        first, t_lit, ts, ref = timeit(
            lambda W=W: jax.block_until_ready(literal_vg(W, X, y, xq, yq)), args.repeats
        )
        row.update(jax_literal_s=t_lit, jax_literal_times=ts)  # type: ignore[arg-type]
        print(f"L = {L}: JAX literal map   {t_lit:9.3f} s  (first call {first:.1f} s)")
        first, t_fast, ts, out = timeit(
            lambda W=W: jax.block_until_ready(fast_vg(W, stats)), max(args.repeats, 5)
        )
        agree = rel(out, ref)
        row.update(fast_s=t_fast, fast_times=ts, fast_rel_diff=agree)  # type: ignore[arg-type]
        print(f"       lsa Gram route    {t_fast:9.3f} s  (agrees to {agree:.1e}; first call "
              f"{first:.1f} s)")  # fmt: skip
        if not args.no_torch:
            try:
                import torch
            except ImportError:
                print("       torch literal: skipped (pip install torch==2.13.0, CPU build)")
            else:
                torch.set_num_threads(threads)
                E = torch.from_numpy(np.array(lsa.embed(X, y, xq)))
                tyq = torch.from_numpy(np.array(yq))
                Wt = [torch.from_numpy(np.array(w)).requires_grad_(True) for w in W]
                mask = torch.ones(n + 1, dtype=torch.float64)
                if conv == "ahn":
                    mask[-1] = 0.0

                def torch_vg(Wt=Wt, mask=mask, E=E, L=L, tyq=tyq):
                    for w in Wt:
                        w.grad = None
                    total = 0.0
                    for s in range(0, B, C):
                        Z = E[s : s + C]
                        for ell in range(L):
                            attn = Z.transpose(1, 2) @ Wt[1][ell] @ Z
                            Z = Z + Wt[0][ell] @ (Z * mask) @ attn / n
                        loss = 0.5 * torch.sum((sign * Z[:, -1, -1] - tyq[s : s + C]) ** 2) / B
                        loss.backward()
                        total += float(loss.detach())
                    return total, [w.grad.detach().numpy().copy() for w in Wt]

                first, t_torch, ts, tout = timeit(torch_vg, args.repeats)
                diff = rel(tout, ref)
                row.update(torch_literal_s=t_torch, torch_times=ts, torch_rel_diff=diff)  # type: ignore[arg-type]
                print(f"       torch literal map {t_torch:9.3f} s  ({torch.get_num_threads()} "
                      f"threads; agrees to {rel(tout, ref):.1e})")  # fmt: skip
        row["ratio_jax_literal"] = t_lit / t_fast
        msg = f"       speed-up: JAX literal / lsa {t_lit / t_fast:6.1f}x"
        if "torch_literal_s" in row:
            row["ratio_torch_literal"] = float(row["torch_literal_s"]) / t_fast
            msg += f",  torch literal / lsa {row['ratio_torch_literal']:6.1f}x"
        print(msg + "  [target >= 10x]")
        results["rows"].append(row)  # type: ignore[union-attr]
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
