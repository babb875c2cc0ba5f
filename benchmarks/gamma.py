"""Benchmark: the hand-written Marsaglia–Tsang gamma sampler against `jax.random.gamma`, where the
Monte Carlo engine uses it (issue 8 §4: keep it only if `jax.random.gamma` is >= 2x slower).

The sufficient-statistics samplers of `simulations.icl.montecarlo.mc_risk` draw, per batch of `n`
prompts, the chi-squares `T_ii^2 ~ chi2_{M-i}` of the Bartlett factor: `2 Gamma((M-i)/2)`, shape
`(n, k)`. Timed, per batch, with the keys the engine uses (RngBitGenerator THREE_FRY):

1. the gamma draw alone: `simulations.icl.wishart.gamma_mt` (first candidates from the caller's
   normals and uniforms, drawn here too) against `jax.random.gamma`;
2. the whole statistics draw `TestDistribution._sample_stats` (what one batch of
   `sampler="stats"` / `"subspace"` draws), with each gamma sampler.

Setting of `benchmarks/montecarlo.py`: d = 20, M = 40, 25 000 prompts per batch (`stats`: k = 20;
`subspace` for the LSA: k = 3).

    python benchmarks/gamma.py            # 5 repetitions
    python benchmarks/gamma.py --reps 2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import lsa
import theory
from simulations.icl import prompt_law, wishart
from simulations.icl.distributions import named_shift, rbg_key, rbg_threefry_key
from simulations.icl.predictors import LSAPredictor

D, M, N, B = 20, 40, 40, 25_000


def _jax_gamma(key, alpha, x, u):  # type: ignore[no-untyped-def]
    """`jax.random.gamma` with `gamma_mt`'s signature (the first candidates `x`, `u` unused)."""
    return jax.random.gamma(key, jnp.asarray(alpha), x.shape, jnp.float64)


def _time(fn: Callable, reps: int) -> tuple[float, float]:  # type: ignore[type-arg]
    """(seconds per call, compile seconds) of a jitted `fn(key)` on fresh keys."""
    keys = [rbg_threefry_key(rbg_key(jax.random.PRNGKey(i))) for i in range(reps + 1)]
    t = time.perf_counter()
    jax.block_until_ready(fn(keys[0]))
    first = time.perf_counter() - t
    t = time.perf_counter()
    for k in keys[1:]:
        jax.block_until_ready(fn(k))
    per = (time.perf_counter() - t) / reps
    return per, max(first - per, 0.0)


def gamma_alone(k: int, sampler: Callable, reps: int) -> tuple[float, float]:  # type: ignore[type-arg]
    alpha = (M - np.arange(k)) / 2.0

    @jax.jit
    def draw(key):  # type: ignore[no-untyped-def]
        kz, ku, kc = jax.random.split(key, 3)
        x = jax.random.normal(kz, (B, k), jnp.float64)
        u = jax.random.uniform(ku, (B, k), jnp.float64)
        return sampler(kc, alpha, x, u)

    return _time(draw, reps)


def stats_draw(subspace: bool, sampler: Callable, reps: int) -> tuple[float, float]:  # type: ignore[type-arg]
    Lam = np.asarray(lsa.spread_covariance(D, 10.0, jax.random.PRNGKey(0)))
    pred = LSAPredictor(*theory.limit_weights(Lam, N))
    dist = named_shift("none", Lam)
    dirs = pred._stats_directions if subspace else None
    prompt_law.gamma_mt = sampler  # what `_bartlett_draw` calls, looked up at trace time
    try:

        @jax.jit
        def draw(key):  # type: ignore[no-untyped-def]
            return dist._sample_stats(key, B, M, False, dirs)[0].X

        return _time(draw, reps)
    finally:
        prompt_law.gamma_mt = wishart.gamma_mt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per case")
    args = ap.parse_args(argv)
    lsa.set_precision("float64")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.1f}; {B} prompts per batch, d = {D}, "
          f"M = {M}")  # fmt: skip
    print()
    print("| where | gamma_mt (ms) | jax.random.gamma (ms) | jax / mt | compile mt, jax (s) |")
    print("|---|---|---|---|---|")
    cases: list[tuple[str, Callable[[Callable], tuple[float, float]]]] = [  # type: ignore[type-arg]
        ("chi-squares alone, k = 20 (stats)", lambda s: gamma_alone(20, s, args.reps)),
        ("chi-squares alone, k = 3 (subspace)", lambda s: gamma_alone(3, s, args.reps)),
        ("whole statistics draw, stats", lambda s: stats_draw(False, s, args.reps)),
        ("whole statistics draw, subspace", lambda s: stats_draw(True, s, args.reps)),
    ]
    for name, run in cases:
        mt, c_mt = run(wishart.gamma_mt)
        jg, c_jg = run(_jax_gamma)
        print(f"| {name} | {1e3 * mt:.1f} | {1e3 * jg:.1f} | {jg / mt:.1f}x | "
              f"{c_mt:.1f}, {c_jg:.1f} |")  # fmt: skip
    print()
    print("Issue 8 keeps the hand-written sampler only where jax.random.gamma is >= 2x slower.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
