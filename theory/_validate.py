"""Input validation for the closed forms in `theory/`.

Every helper converts its input to float64 (or `int`), checks it, and raises a `ValueError` that
names the offending parameter and says how to fix it. The closed forms call these helpers before
computing anything.
"""

from __future__ import annotations

import numbers

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

__all__ = [
    "SYM_RTOL",
    "check_finite_array",
    "check_int",
    "check_psd",
    "check_real",
    "check_spd",
    "check_square",
    "check_theta",
    "check_vector",
]

#: Relative tolerance of the symmetry check: max|A - A^T| <= SYM_RTOL * max|A|.
SYM_RTOL = 1e-10
#: Relative tolerance of the PSD check: min eigenvalue >= -PSD_RTOL * max|eigenvalue|.
PSD_RTOL = 1e-10
#: Relative tolerance of the normalisation ||Theta Theta^T||_F = 1.
THETA_RTOL = 1e-8


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Return `value` as a Python `int`, requiring an integer >= `minimum`.

    Integral floats such as `1e6` are accepted; booleans, non-integral numbers and non-numbers are
    rejected.

    **Arguments:**

    - `value`: the candidate integer.
    - `name`: parameter name used in the error message.
    - `minimum`: smallest allowed value.

    **Returns:** the value as `int`.
    """
    ok = False
    out = 0
    if isinstance(value, bool | np.bool_):
        ok = False
    elif isinstance(value, numbers.Integral):
        out, ok = int(value), True
    elif isinstance(value, numbers.Real) and np.isfinite(float(value)):
        fv = float(value)
        if fv.is_integer():
            out, ok = int(fv), True
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; pass an int.")
    if out < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {out}.")
    return out


def check_real(
    value: object,
    name: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
) -> float:
    """Return `value` as a finite `float`, optionally requiring a sign.

    **Arguments:**

    - `value`: the candidate real scalar.
    - `name`: parameter name used in the error message.
    - `positive`: require `value > 0`.
    - `nonnegative`: require `value >= 0`.

    **Returns:** the value as `float`.
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be a real number, got a boolean {value!r}.")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {value!r}.") from exc
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}.")
    out = float(arr)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}.")
    if positive and not out > 0.0:
        raise ValueError(f"{name} must be > 0, got {out}.")
    if nonnegative and not out >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {out}.")
    return out


def check_finite_array(a: ArrayLike, name: str) -> np.ndarray:
    """Convert `a` to a float64 array and reject NaN / inf entries.

    **Arguments:**

    - `a`: array-like input.
    - `name`: parameter name used in the error message.

    **Returns:** the float64 array.
    """
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real numeric array.") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; pass finite values.")
    return arr


def check_square(a: ArrayLike, name: str, d: int | None = None) -> Float[np.ndarray, "d d"]:
    """Require a finite square matrix, of size `d` x `d` when `d` is given.

    **Arguments:**

    - `a`: array-like matrix.
    - `name`: parameter name used in the error message.
    - `d`: required size, or `None` for any square size.

    **Returns:** the float64 matrix.
    """
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real numeric (d, d) matrix.") from exc
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square (d, d) matrix, got shape {arr.shape}.")
    if d is not None and arr.shape != (d, d):
        raise ValueError(
            f"{name} has shape {arr.shape} but the other arguments have d = {d}; "
            f"pass a ({d}, {d}) matrix."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; pass finite values.")
    return arr


def _check_symmetric(arr: np.ndarray, name: str) -> Float[np.ndarray, "d d"]:
    scale = float(np.max(np.abs(arr)))
    asym = float(np.max(np.abs(arr - arr.T)))
    if asym > SYM_RTOL * scale:
        raise ValueError(
            f"{name} is not symmetric: max|{name} - {name}^T| = {asym:.3e} exceeds "
            f"{SYM_RTOL:g} * max|{name}| = {SYM_RTOL * scale:.3e}; pass a symmetric matrix, "
            f"e.g. ({name} + {name}.T) / 2."
        )
    return 0.5 * (arr + arr.T)


def check_spd(a: ArrayLike, name: str = "Lambda", d: int | None = None) -> Float[np.ndarray, "d d"]:
    """Require a finite, symmetric, positive definite matrix.

    Symmetry is checked to a relative tolerance of `1e-10` (`max|A - A^T| <= 1e-10 max|A|`); the
    returned matrix is the exactly symmetrised `(A + A^T)/2`. Positive definiteness requires the
    smallest eigenvalue to exceed `d * eps * (largest eigenvalue)`.

    **Arguments:**

    - `a`: array-like matrix.
    - `name`: parameter name used in the error message.
    - `d`: required size, or `None` for any square size.

    **Returns:** the symmetrised float64 matrix.
    """
    arr = _check_symmetric(check_square(a, name, d), name)
    eig = np.linalg.eigvalsh(arr)
    lo, hi = float(eig[0]), float(eig[-1])
    if not (hi > 0.0 and lo > arr.shape[0] * np.finfo(np.float64).eps * hi):
        raise ValueError(
            f"{name} is not positive definite (eigenvalues in [{lo:.3e}, {hi:.3e}]); "
            f"pass a symmetric positive definite covariance matrix."
        )
    return arr


def check_psd(a: ArrayLike, name: str, d: int | None = None) -> Float[np.ndarray, "d d"]:
    """Require a finite, symmetric, positive semi-definite matrix (a second-moment matrix).

    The smallest eigenvalue may be negative only by round-off: `>= -1e-10 * max|eigenvalue|`.

    **Arguments:**

    - `a`: array-like matrix.
    - `name`: parameter name used in the error message.
    - `d`: required size, or `None` for any square size.

    **Returns:** the symmetrised float64 matrix.
    """
    arr = _check_symmetric(check_square(a, name, d), name)
    eig = np.linalg.eigvalsh(arr)
    scale = float(np.max(np.abs(eig)))
    if float(eig[0]) < -PSD_RTOL * scale:
        raise ValueError(
            f"{name} is not positive semi-definite (smallest eigenvalue {eig[0]:.3e}); "
            f"pass a second-moment matrix E[v v^T]."
        )
    return arr


def check_vector(v: ArrayLike, name: str, d: int) -> Float[np.ndarray, " d"]:
    """Require a finite vector of length `d`.

    **Arguments:**

    - `v`: array-like vector.
    - `name`: parameter name used in the error message.
    - `d`: required length.

    **Returns:** the float64 vector.
    """
    arr = check_finite_array(v, name)
    if arr.shape != (d,):
        raise ValueError(
            f"{name} must have shape ({d},) to match the other arguments, got {arr.shape}."
        )
    return arr


def check_theta(theta: ArrayLike, d: int) -> Float[np.ndarray, "d d"]:
    """Require an initialisation direction `Theta` of shape (d, d) with ||Theta Theta^T||_F = 1.

    The normalisation of [ZFB Assumption 3.3] (theory.md §2.7) is checked to a relative tolerance of
    `1e-8`.

    **Arguments:**

    - `theta`: the direction `Theta`.
    - `d`: the input dimension.

    **Returns:** the float64 matrix.
    """
    arr = check_square(theta, "Theta", d)
    norm = float(np.linalg.norm(arr @ arr.T, "fro"))
    if abs(norm - 1.0) > THETA_RTOL:
        raise ValueError(
            f"Theta must satisfy ||Theta Theta^T||_F = 1 (Assumption 3.3), got {norm:.6g}; "
            f"rescale it by 1/sqrt(||Theta Theta^T||_F)."
        )
    return arr
