"""Solving and measuring one chunk of settings (in this process or on a Dask worker).

Every setting is built by `lsa.Setting.build()` (the seed rule and the builder of `lsa train`
and the Python API, so the same values give the same Lambda and Theta bit for bit), the flows
of a chunk are solved together by `lsa.batch.batch_gradient_flow` (or one by one with
`gradient_flow` for `method = "direct"`), and each requested measure is computed per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lsa.setting import Problem, Setting

from .measures import Measure, SettingContext
from .parameters import setting_of

if TYPE_CHECKING:
    from .config import ScanConfig

__all__ = ["build", "run_chunk", "solve_flows"]

#: (FlowResult or None, eigenbasis trajectory or None, status, steps) of one solved setting.
Solved = tuple[Any, dict[str, np.ndarray] | None, str, int]

_NOT_SOLVED: Solved = (None, None, "", 0)
_MEASURE_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError)


def build(rows: list[dict[str, Any]]) -> list[tuple[Setting, Problem]]:
    """The `lsa.Setting` of every row and what it builds (Lambda, start, sigma, keys)."""
    out = []
    for row in rows:
        setting = setting_of(row)
        out.append((setting, setting.build()))
    return out


def solve_flows(settings: list[Setting], problems: list[Problem], pad_to: int) -> list[Solved]:
    """Solve the flows of settings that share their solver options (one chunk's group)."""
    if settings[0].method == "eigen":
        return _solve_batched(settings, problems, pad_to)
    return [_solve_direct(s, p) for s, p in zip(settings, problems, strict=True)]


def _solve_batched(settings: list[Setting], problems: list[Problem], pad_to: int) -> list[Solved]:
    from lsa.batch import batch_gradient_flow

    method, options = settings[0].method_and_options()
    res = batch_gradient_flow(
        np.stack([p.Lambda for p in problems]),
        [s.N for s in settings],
        [p.init for p in problems],
        method=method,
        options=options,
        pad_to=pad_to,
    )
    reasons = res.stop_reason  # status names are the solver's (`lsa.batch.STATUS`)
    out: list[Solved] = []
    for b in range(len(settings)):
        steps = int(res.n_accepted[b] + res.n_rejected[b])
        if not res.ok[b]:
            out.append((None, None, reasons[b], steps))
            continue
        m = int(res.n_saved[b])
        eig = {"p": res.p[b, :m], "off2": res.off2[b, :m], "Q": res.Q[b]}
        out.append((res.member(b), eig, reasons[b], steps))
    return out


def _solve_direct(setting: Setting, problem: Problem) -> Solved:
    from lsa.flow import FlowError, gradient_flow

    method, options = setting.method_and_options()
    try:
        f = gradient_flow(problem.Lambda, setting.N, problem.init, method=method, options=options)
    except FlowError as exc:
        return (None, None, f"failed: {str(exc).split(' [')[0]}", -1)
    return (f, None, f.stop_reason, int(f.stats["num_steps"]))


def _solve_unique(settings: list[Setting], problems: list[Problem], pad_to: int) -> list[Solved]:
    """One solve per distinct setting (rows that differ only in M, c, n_mc or conv_tol share
    their flow)."""
    first: dict[Setting, int] = {}
    for i, s in enumerate(settings):
        first.setdefault(s, i)
    uniq = sorted(first.values())
    solved = solve_flows([settings[i] for i in uniq], [problems[i] for i in uniq], pad_to)
    by_setting = {settings[i]: r for i, r in zip(uniq, solved, strict=True)}
    return [by_setting[s] for s in settings]


def run_chunk(
    cfg: ScanConfig, rows: list[dict[str, Any]], device: str | None = None
) -> pd.DataFrame:
    """Solve and measure one chunk of settings; returns its rows (sorted by setting id).

    Top-level and picklable: this is the task a Dask worker runs (`cfg` carries the measure
    functions; the rows arrive resolved and validated).
    """
    import jax

    from lsa.batch import select_device

    measures = cfg.measure_defs()
    with jax.default_device(select_device(device)):
        built = build(rows)
        settings = [s for s, _ in built]
        problems = [p for _, p in built]
        if cfg.needs_flow:
            flows = _solve_unique(settings, problems, pad_to=cfg.chunk_size)
        else:
            flows = [_NOT_SOLVED] * len(rows)
        out = [
            _measure_row(row, s, p, solved, measures, cfg.needs_flow)
            for row, s, p, solved in zip(rows, settings, problems, flows, strict=True)
        ]
    df = pd.DataFrame(out)
    return df[cfg.columns].sort_values("setting_id").reset_index(drop=True)


def _measure_row(
    row: Mapping[str, Any],
    setting: Setting,
    problem: Problem,
    solved: Solved,
    measures: Mapping[str, Measure],
    needs_flow: bool,
) -> dict[str, Any]:
    """One table row: the parameters (derived values resolved), every measure, the status."""
    flow, eig, status, steps = solved
    ctx = SettingContext(dict(row), setting, problem, flow, eig)
    out: dict[str, Any] = dict(row)
    out["sigma"] = problem.sigma
    out["sigma_max"] = problem.sigma_max
    out["sigma_fraction"] = problem.sigma / problem.sigma_max
    out["trace"] = float(setting.d if setting.trace is None else setting.trace)
    out["rtol"] = float(setting.method_and_options()[0].rtol)
    errors = []
    for name, m in measures.items():
        if m.needs_flow and flow is None:
            out.update(dict.fromkeys(m.columns, math.nan))
            continue
        try:
            val = m.fn(ctx)
        except _MEASURE_ERRORS as exc:
            errors.append(f"{name}: {exc}")
            val = dict.fromkeys(m.columns, math.nan)
        if isinstance(val, Mapping):
            out.update({c: float(val[c]) for c in m.columns})
        else:
            out[m.columns[0]] = float(val)
    if needs_flow:
        out["status"] = status
        out["n_steps"] = steps
        out["t_final"] = float(flow.t_final) if flow is not None else math.nan
    out["error"] = "; ".join(errors)
    return out
