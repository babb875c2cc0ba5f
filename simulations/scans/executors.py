"""Executors: where the chunks of a scan are solved.

- `local`: in this process; with `threads > 1` several chunks at once (XLA releases the GIL
  while it integrates);
- `dask`: each chunk is one Dask task (a running scheduler by `address`, or a `LocalCluster`).

Both yield `(chunk index, rows, wall seconds)` as chunks finish; the caller owns the run
directory. A task carries the caller's float precision, so a fresh worker process computes
exactly as the caller does (precision is never set by an import).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import solve
from .parameters import ScanError

if TYPE_CHECKING:
    from .config import ScanConfig

__all__ = ["EXECUTORS", "dask_map", "local_map"]

EXECUTORS = ("local", "dask")

Tasks = list[tuple[int, list[dict[str, Any]]]]
Finished = Iterator[tuple[int, pd.DataFrame, float]]


def timed_chunk(
    cfg: ScanConfig, rows: list[dict[str, Any]], device: str | None, precision: str
) -> tuple[pd.DataFrame, float]:
    """`solve.run_chunk` under the caller's `precision`, and its wall time."""
    import lsa

    if lsa.get_precision() != precision:  # a fresh worker process: take the caller's choice
        lsa.set_precision(precision)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    df = solve.run_chunk(cfg, rows, device)
    return df, time.perf_counter() - t0


def local_map(cfg: ScanConfig, tasks: Tasks, device: str | None, threads: int) -> Finished:
    """Chunks in this process; with `threads > 1` several run at once, yielded as they finish."""
    import lsa

    precision = lsa.get_precision()
    if threads <= 1:
        for index, rows in tasks:
            df, wall = timed_chunk(cfg, rows, device, precision)
            yield index, df, wall
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    queue = list(tasks)
    if queue:  # the first chunk alone: it compiles the solve that the others then share
        index, rows = queue.pop(0)
        df, wall = timed_chunk(cfg, rows, device, precision)
        yield index, df, wall
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: dict[Any, int] = {}
        while queue or pending:
            while queue and len(pending) < threads:
                index, rows = queue.pop(0)
                pending[pool.submit(timed_chunk, cfg, rows, device, precision)] = index
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                index = pending.pop(fut)
                df, wall = fut.result()
                yield index, df, wall


def dask_map(
    cfg: ScanConfig, tasks: Tasks, device: str | None, address: str | None, n_workers: int
) -> Finished:
    """Chunks as Dask tasks: on the scheduler at `address`, or on a `LocalCluster` of
    `n_workers` single-threaded worker processes."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ScanError('the Dask executor needs `pip install "lsa-flow[distributed]"`.') from None
    import lsa

    precision = lsa.get_precision()
    cluster = None
    if address is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        # task keys carry the configuration's hash: a shared scheduler never confuses two scans
        futures = {
            client.submit(timed_chunk, cfg, rows, device, precision, pure=False,
                          key=f"lsa-scan-{cfg.hash}-chunk-{i:05d}"): i
            for i, rows in tasks
        }  # fmt: skip
        for fut in as_completed(futures):
            df, wall = fut.result()
            yield futures[fut], df, wall
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
