"""The entry points: `scan(...)` (a table from a grid) and `run_scan(cfg, out)` (run, resume or
read back a configured scan)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import ScanConfig, ZipGroups, load_config
from .executors import EXECUTORS, Finished, dask_map, local_map
from .measures import Measure
from .parameters import ScanError
from .plan import plan_chunks
from .rundir import RunDir, check_writable, write_provenance, write_timings

__all__ = ["ScanResult", "run_scan", "scan"]


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """A finished scan: the table, its run directory (or `None`), and whether it was read
    back from a finished run (`cached`)."""

    table: pd.DataFrame
    run_dir: Path | None
    cached: bool
    seconds: float


def _check_run_options(executor: str, address: str | None, n_workers: Any, device: str | None):
    if executor not in EXECUTORS:
        raise ScanError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    if address is not None and executor != "dask":
        raise ScanError("conflicting options: `address` is only used with executor='dask'.")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ScanError(f"n_workers must be an integer >= 1; got {n_workers!r}.")
    from lsa.batch import select_device

    select_device(device)  # validates the device name (and GPU presence) up front


def run_scan(
    cfg: ScanConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    executor: str = "local",
    address: str | None = None,
    n_workers: int = 2,
    device: str | None = None,
    progress: bool = False,
) -> ScanResult:
    """Run (or resume, or read back) a scan. `out=None` keeps everything in memory.

    - `executor`: `"local"` (chunks in this process, `n_workers` threads) or `"dask"` (chunks
      as Dask tasks; `address` of a running scheduler, or `None` for a `LocalCluster` of
      `n_workers` single-threaded worker processes);
    - `device`: `"cpu"`, `"gpu"` or `"auto"` (default: `LSA_FLOW_DEVICE`, else auto);
    - `progress`: a progress bar over settings (done, total, time left).

    Solves in the caller's precision: call `lsa.set_precision("float64")` first.
    """
    t_start = time.perf_counter()
    _check_run_options(executor, address, n_workers, device)
    run: RunDir | None = None
    if out is not None:
        run = RunDir(check_writable(Path(out)) / cfg.run_name)
        if run.done:
            df = pd.read_parquet(run.root / "results.parquet")
            return ScanResult(df, run.root, True, time.perf_counter() - t_start)
    rows = cfg.settings()
    by_id = {s["setting_id"]: s for s in rows}
    plan = plan_chunks(cfg, rows)

    with contextlib.ExitStack() as stack:
        done: dict[int, Path] = {}
        timings: dict[str, Any] = {}
        if run is not None:
            done, timings = _open_run_dir(run, stack, cfg, plan, device, executor)
        tasks = [(i, [by_id[j] for j in ids]) for i, ids in enumerate(plan) if i not in done]
        n_done = sum(len(plan[i]) for i in done if i < len(plan))
        if executor == "local":
            stream = local_map(cfg, tasks, device, n_workers)
        else:
            stream = dask_map(cfg, tasks, device, address, n_workers)
        bar = _progress(len(rows), n_done, progress, cfg.name)
        try:
            results = _collect(stream, run, timings, bar)
        finally:
            bar.close()
        if run is None:
            df = pd.concat([results[i] for i in sorted(results)], ignore_index=True)
            df = df.sort_values("setting_id").reset_index(drop=True)
            return ScanResult(df, None, False, time.perf_counter() - t_start)
        df = run.consolidate(list(by_id), cfg.columns)
        timings["total_seconds_last_run"] = round(time.perf_counter() - t_start, 4)
        write_timings(run, timings)
        run.mark_done()
    return ScanResult(df, run.root, False, time.perf_counter() - t_start)


def _open_run_dir(
    run: RunDir,
    stack: contextlib.ExitStack,
    cfg: ScanConfig,
    plan: list[list[int]],
    device: str | None,
    executor: str,
) -> tuple[dict[int, Path], dict[str, Any]]:
    """Create or check the run directory under its lock; returns the finished chunks and the
    timings so far."""
    run.root.mkdir(parents=True, exist_ok=True)
    stack.enter_context(run.lock())
    run.create(cfg, plan)
    run.clean_temporaries()
    tfile = run.root / "timings.json"
    timings = json.loads(tfile.read_text()) if tfile.is_file() else {}
    write_provenance(run, device, executor)
    return run.finished_chunks(), timings


def _collect(
    stream: Finished, run: RunDir | None, timings: dict[str, Any], bar: Any
) -> dict[int, pd.DataFrame]:
    """Write each finished chunk (or keep it in memory without a run directory)."""
    results: dict[int, pd.DataFrame] = {}
    chunk_times = timings.setdefault("chunks", {})
    for index, df, wall in stream:
        if run is not None:
            run.write_chunk(index, df)
            chunk_times[str(index)] = {"settings": len(df), "seconds": round(wall, 4)}
            write_timings(run, timings)
        else:
            results[index] = df
        bar.update(len(df))
    return results


def _progress(total: int, initial: int, enabled: bool, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc=f"scan {name}", unit="setting",
        smoothing=0.0,
    )  # fmt: skip


def scan(
    grid: Mapping[str, Any] | ScanConfig | str | os.PathLike[str] | None = None,
    measure: str | Sequence[str] = ("final_loss",),
    *,
    zip: ZipGroups = None,
    params: Mapping[str, Any] | None = None,
    name: str = "scan",
    seed: int = 0,
    chunk_size: int = 1024,
    extra_measures: Sequence[Measure] | Mapping[str, Measure] | None = None,
    out: str | os.PathLike[str] | None = None,
    executor: str = "local",
    address: str | None = None,
    n_workers: int = 2,
    device: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run a parameter scan and return one row per setting (a pandas DataFrame).

    **Arguments:**

    - `grid`: parameter -> list of values (cartesian product; a value may also be
      `{"geomspace": [start, stop, num]}`, `{"linspace": ...}` or `{"range": ...}`), or a
      `ScanConfig`, or the path of a TOML configuration (then the other configuration
      arguments must be left at their defaults, except `extra_measures`).
    - `measure`: measurement name(s) from `MEASURES` or `extra_measures` (`lsa scan --list`).
    - `zip`: parameter -> list, zipped (equal lengths), or a list of such groups; combined with
      `grid` by product.
    - `params`: fixed parameter values; `lsa.Setting`'s defaults for the rest (`PARAMETERS`).
    - `name`, `seed`, `chunk_size`: as in the TOML `[scan]` table.
    - `extra_measures`: `Measure` objects for measurements that are not built in.
    - `out`: a folder for the run directory (resumable; see `simulations.scans`); `None`
      keeps everything in memory.
    - `executor`, `address`, `n_workers`, `device`, `progress`: see `run_scan`.

    Every input is validated before anything runs (unknown names, empty grids, conflicting
    options, an unwritable `out`): errors are `ScanError` (a `ValueError`).
    """
    if isinstance(grid, ScanConfig):
        cfg = grid
    elif isinstance(grid, str | os.PathLike):
        cfg = load_config(grid, extra_measures=extra_measures)
    else:
        cfg = ScanConfig.build(
            name=name,
            measures=measure,
            seed=seed,
            chunk_size=chunk_size,
            params=params,
            grid=grid,
            zips=zip,
            extra_measures=extra_measures,
        )
    return run_scan(
        cfg, out, executor=executor, address=address, n_workers=n_workers, device=device,
        progress=progress,
    ).table  # fmt: skip
