"""Input validation shared by the public entry points of `lsa`.

Every check runs on concrete (host) values *before* any compilation or long computation, and
every error names the offending parameter and says how to fix it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


class TheoremCoverageWarning(UserWarning):
    """A run is allowed but lies outside the hypotheses of the theorem it is compared with."""


def as_float_array(x: Any, name: str) -> np.ndarray:
    """Convert to a float64 numpy array and reject NaN/inf."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a real array-like; got {type(x).__name__}.") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or inf; pass finite values.")
    return arr


def check_covariance(Lambda: Any, name: str = "Lambda", d: int | None = None) -> np.ndarray:
    """Validate a covariance matrix: square, finite, symmetric and positive definite.

    Returns it as a float64 array. Raises `ValueError` naming `name` otherwise.
    """
    arr = as_float_array(Lambda, name)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"`{name}` must be a square (d, d) matrix; got shape {arr.shape}.")
    if d is not None and arr.shape[0] != d:
        raise ValueError(f"`{name}` must have shape ({d}, {d}); got {arr.shape}.")
    scale = max(float(np.max(np.abs(arr))), 1e-300)
    if not np.allclose(arr, arr.T, rtol=0.0, atol=1e-10 * scale):
        asym = float(np.max(np.abs(arr - arr.T)))
        raise ValueError(
            f"`{name}` is not symmetric (max |{name} - {name}^T| = {asym:.3g}); "
            f"pass a symmetric matrix, e.g. ({name} + {name}.T) / 2."
        )
    eig_min = float(np.linalg.eigvalsh(0.5 * (arr + arr.T))[0])
    if eig_min <= 0.0:
        raise ValueError(
            f"`{name}` is not positive definite (smallest eigenvalue {eig_min:.3g}); "
            "a covariance here must be symmetric positive definite."
        )
    return 0.5 * (arr + arr.T)


def check_length(n: Any, name: str) -> int:
    """A prompt length: an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        else:
            raise ValueError(f"`{name}` must be an integer >= 1; got {n!r}.")
    if n < 1:
        raise ValueError(f"`{name}` must be >= 1 (a prompt needs at least one example); got {n}.")
    return int(n)


def check_positive(x: Any, name: str) -> float:
    """A strictly positive finite scalar."""
    try:
        val = float(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a positive number; got {x!r}.") from exc
    if not math.isfinite(val) or val <= 0.0:
        raise ValueError(f"`{name}` must be a finite number > 0; got {x!r}.")
    return val


def check_nonnegative(x: Any, name: str) -> float:
    """A non-negative finite scalar."""
    try:
        val = float(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a number >= 0; got {x!r}.") from exc
    if not math.isfinite(val) or val < 0.0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {x!r}.")
    return val


def check_square(x: Any, name: str, d: int) -> np.ndarray:
    """A finite (d, d) matrix."""
    arr = as_float_array(x, name)
    if arr.shape != (d, d):
        raise ValueError(f"`{name}` must have shape ({d}, {d}) to match Lambda; got {arr.shape}.")
    return arr


def warn_sigma(sigma: float, sigma_max: float) -> None:
    """Warn (do not fail) when sigma >= sigma_max: Theorem 4.1 does not cover the run."""
    if sigma >= sigma_max:
        warnings.warn(
            f"sigma = {sigma:.6g} >= sigma_max = {sigma_max:.6g}: Theorem 4.1 of Zhang, Frei & "
            "Bartlett does not cover this initialisation "
            "(it needs sigma^2 ||Gamma||_op sqrt(d) < 2). "
            "The run goes ahead, but convergence to the global minimum is not guaranteed.",
            TheoremCoverageWarning,
            stacklevel=3,
        )
