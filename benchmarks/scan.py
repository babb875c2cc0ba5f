"""Benchmark of a parameter scan: 10^4 settings over (sigma, N, kappa) at d = 10.

What is compared
----------------
**Batched** (`simulations.scan`): the full scan machinery on a grid of
`--n-sigma x --n-N x --n-kappa` settings (default 20 x 25 x 20 = 10^4): `sigma_fraction` in
[1e-3, 0.5], `N` in [4, 400], `kappa` in [1, 100] (geometric spectrum, Haar-rotated
eigenbasis, trace d), `d = 10`, the paper's start. Settings are grouped by stiffness, chunked
(`--chunk-size`) and integrated by `lsa.batch.batch_gradient_flow`; the measures `final_loss`,
`dist_Ginv`, `t_escape` and `t_converge` are computed for every setting. The time is the wall
time of the whole `simulations.scan` call, compilation and host work included.

**Python loop of single solves**: `lsa.gradient_flow` (the eigenbasis Kvaerno5 solve,
`EigenMethod` with the same `rtol`, the same stopping rule `eps`) called once per setting, timed
on a random sample of `--loop-sample` settings and extrapolated to the whole grid. Its
compilation (once per d and table size) is done before timing and not counted.

Both paths stop each flow by the same rule (estimated relative distance to Gamma^{-1} below
`eps`); their end points are compared (`||u U - Gamma^{-1}||_F / ||Gamma^{-1}||_F` of both).

Targets (issue): batched throughput at least 20x the loop's, and the 10^4-setting scan in at most
60 s on 2 cores.

Usage: `python benchmarks/scan.py [--quick] [--chunk-size 512] [--json PATH]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import lsa
import simulations
from simulations import scans
from simulations.scans.parameters import setting_of

MEASURES = ["final_loss", "dist_Ginv", "t_escape", "t_converge"]


def grid(n_sigma: int, n_N: int, n_kappa: int) -> dict[str, list]:
    return {
        "sigma_fraction": list(np.geomspace(1e-3, 0.5, n_sigma)),
        "N": sorted({round(x) for x in np.geomspace(4, 400, n_N)}),
        "kappa": list(np.geomspace(1.0, 100.0, n_kappa)),
    }


def rel_dist(Lam: np.ndarray, N: int, prod: np.ndarray) -> float:
    d = Lam.shape[0]
    Gi = np.linalg.inv((1 + 1 / N) * Lam + np.trace(Lam) / N * np.eye(d))
    return float(np.linalg.norm(prod - Gi) / np.linalg.norm(Gi))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-sigma", type=int, default=20)
    ap.add_argument("--n-N", type=int, default=25)
    ap.add_argument("--n-kappa", type=int, default=20)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--eps", type=float, default=1e-10)
    ap.add_argument("--loop-sample", type=int, default=24, help="settings timed in the loop")
    ap.add_argument("--quick", action="store_true", help="a 10x smaller grid (CI smoke run)")
    ap.add_argument("--device", default=None, help="cpu, gpu or auto (default: LSA_FLOW_DEVICE)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)
    lsa.set_precision("float64")  # an explicit choice: importing lsa changes nothing
    if args.quick:
        args.n_sigma, args.n_N, args.n_kappa = 10, 10, 10
        args.loop_sample = min(args.loop_sample, 8)
    warnings.simplefilter("ignore", lsa.TheoremCoverageWarning)
    g = grid(args.n_sigma, args.n_N, args.n_kappa)
    params = {"d": args.d, "rtol": args.rtol, "eps": args.eps}
    cfg = scans.ScanConfig.build(
        name="bench", measures=MEASURES, params=params, grid=g, chunk_size=args.chunk_size
    )
    settings = cfg.settings()
    n = len(settings)
    print(
        f"scan benchmark: {n} settings (d = {args.d}), {jax.devices()[0]}, chunk {args.chunk_size}"
    )

    t0 = time.perf_counter()
    df = simulations.scan(cfg, device=args.device)
    t_batch = time.perf_counter() - t0
    ok = int((df["status"] == "converged").sum())
    print(f"batched scan: {t_batch:.1f} s total ({1e3 * t_batch / n:.2f} ms/setting), "
          f"{ok}/{n} converged, max dist_Ginv {df['dist_Ginv'].max():.2e}")  # fmt: skip

    # Python loop of single solves (lsa.gradient_flow) on a random sample, extrapolated.
    rng = np.random.default_rng(0)
    sample = rng.choice(n, size=min(args.loop_sample, n), replace=False)
    # the same lsa.Setting as the scan's row: the same Lambda, start, method and options
    chosen = [setting_of(settings[i]) for i in sample]
    problems = [s.build() for s in chosen]

    def single(j: int) -> np.ndarray:
        method, options = chosen[j].method_and_options()
        p = problems[j]
        return lsa.gradient_flow(
            p.Lambda, chosen[j].N, p.init, method=method, options=options
        ).product

    # compile first: gradient_flow compiles once per d and table size (the extremes of kappa)
    kap = [settings[i]["kappa"] for i in sample]
    t0 = time.perf_counter()
    for j in {int(np.argmin(kap)), int(np.argmax(kap))}:
        single(j)
    t_compile = time.perf_counter() - t0
    times, dists, agree = [], [], []
    for j, i in enumerate(sample):
        t0 = time.perf_counter()
        prod = single(j)
        times.append(time.perf_counter() - t0)
        dists.append(rel_dist(problems[j].Lambda, chosen[j].N, prod))
        agree.append(abs(dists[-1] - float(df.loc[df.setting_id == i, "dist_Ginv"].iloc[0])))
    per = statistics.mean(times)
    t_loop = per * n
    print(f"loop of lsa.gradient_flow: {1e3 * per:.1f} ms/setting (mean of {len(times)}, "
          f"median {1e3 * statistics.median(times):.1f}; compilation {t_compile:.1f} s not "
          f"counted) -> {t_loop:.0f} s for {n} settings (extrapolated); "
          f"max dist_Ginv {max(dists):.2e}")  # fmt: skip

    ratio = t_loop / t_batch
    print(f"throughput ratio (loop / batched): {ratio:.1f}x  [target >= 20x]")
    print(f"batched wall: {t_batch:.1f} s  [target <= 60 s for 10^4 settings]")
    out = {
        "settings": n, "d": args.d, "chunk_size": args.chunk_size, "device": str(jax.devices()[0]),
        "batched_seconds": t_batch, "batched_ms_per_setting": 1e3 * t_batch / n,
        "loop_ms_per_setting": 1e3 * per, "loop_compile_seconds": t_compile,
        "loop_seconds_extrapolated": t_loop, "ratio": ratio, "converged": ok,
        "loop_sample": len(times), "max_endpoint_difference": max(agree),
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
