"""What every check suite returns: `CheckResult`, one checked statement; and the resumable
result tables of the long checks (`finished_keys`, `append_rows`): rows appended to a CSV as
they finish, a rerun skipping the keys it finds."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CheckResult", "append_rows", "finished_keys", "rel_error"]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One checked statement: predicted value, simulated value, error, tolerance and verdict.

    `kind` says how `error` is compared with `tolerance`: `"rel"` and `"abs"` (an error at most
    the tolerance), `"z"` (a Monte Carlo z-score, `|z| <= tolerance`), `"ineq"` (an inequality,
    no slack in the favourable direction), `"trend"` (a trend or slope; the details say which),
    `"finding"` (an observation recorded as a row, e.g. "not observed").
    """

    id: str
    statement: str
    reference: str
    predicted: float
    simulated: float
    error: float
    tolerance: float
    kind: str
    passed: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["verdict"] = "PASS" if self.passed else "FAIL"
        return d


def rel_error(a: Any, b: Any) -> float:
    """`||a - b||_F / ||b||_F`."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def finished_keys(csv: Path, columns: Sequence[str]) -> set[tuple[Any, ...]]:
    """The `columns` tuples of the rows already in `csv` (empty when it does not exist yet)."""
    if not csv.exists():
        return set()
    done = pd.read_csv(csv)
    return set(done[list(columns)].itertuples(index=False, name=None))


def append_rows(csv: Path, rows: pd.DataFrame) -> None:
    """Append `rows` to `csv`, writing the header only when the file is new."""
    rows.to_csv(csv, mode="a", header=not csv.exists(), index=False)
