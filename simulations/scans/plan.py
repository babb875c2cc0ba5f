"""The chunk plan of a scan: group settings by solver options, sort by cost, cut into chunks.

The plan is a pure function of the configuration (it is saved in `plan.json`), so a resumed
scan solves exactly the chunks an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lsa.setting import Setting

from .parameters import FLOW_KEYS, SOLVER_KEYS, setting_of

if TYPE_CHECKING:
    from .config import ScanConfig

__all__ = ["plan_chunks", "step_estimate"]


def step_estimate(setting: Setting) -> float:
    """A rough step count of the batched solver for a setting, used only to order settings so
    that a chunk holds flows of similar cost (members of a chunk run until the slowest is done).

    `f = ln(max_i c_i / min_ij c_ij)` is the log stiffness ratio of the eigenbasis flow
    (`c_i = gamma_i lam_i^2` the fastest diagonal rate, `c_ij = gamma_i lam_i lam_j` the slowest
    off-diagonal one) and `ln(sigma_max / sigma)` the length of the plateau; the coefficients
    are a fit to measured step counts at d = 10 (7% rms error), good enough for ordering.
    """
    lam = setting.spectrum_values()
    n = setting.N
    gam = (1.0 + 1.0 / n) * lam + lam.sum() / n
    f = math.log(float(np.max(gam * lam**2)) / float(np.min(gam[:, None] * lam[:, None] * lam)))
    plateau = math.log(max(setting.sigma_max() / setting.sigma_value(), 1.0))
    return 26.0 * f + 6.5 * f * f + 35.0 * plateau


def plan_chunks(cfg: ScanConfig, rows: list[dict[str, Any]]) -> list[list[int]]:
    """Deterministic chunks of setting ids: grouped by solver options (`SOLVER_KEYS`), sorted
    by `step_estimate` (similar cost together; equal flows side by side), then cut into
    `chunk_size` pieces. Without flow measures: plain id order."""
    if not cfg.needs_flow:
        ids = [s["setting_id"] for s in rows]
        return [ids[i : i + cfg.chunk_size] for i in range(0, len(ids), cfg.chunk_size)]
    groups: dict[tuple[Any, ...], list[tuple[float, str, int]]] = {}
    for s in rows:
        key = tuple(s[k] for k in SOLVER_KEYS)
        flow_key = repr(tuple(s[k] for k in FLOW_KEYS))
        groups.setdefault(key, []).append((step_estimate(setting_of(s)), flow_key, s["setting_id"]))
    chunks = []
    for key in sorted(groups, key=repr):
        members = sorted(groups[key])
        for i in range(0, len(members), cfg.chunk_size):
            # longest first inside a chunk: the solver's lanes refill from the front of the
            # queue, so the last flows to start are the short ones (little idle tail)
            part = sorted(members[i : i + cfg.chunk_size], key=lambda m: (-m[0], m[1], m[2]))
            chunks.append([m[2] for m in part])
    return chunks
