"""What every check suite returns: `CheckResult`, one checked statement."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["CheckResult", "rel_error"]


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
