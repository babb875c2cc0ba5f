"""Numerical precision: an explicit, process-wide choice (never a side effect of an import).

Every comparison with theory needs float64: float32 floors at ~3e-7 relative error even on
isotropic problems, and at 1e-4-1e-3 for kappa = 100 (solver notes). Call
`lsa.set_precision("float64")` once, before building arrays; the solvers and the check suites
raise a clear error when it is off instead of silently computing in float32.
"""

from __future__ import annotations

from typing import Literal

import jax

__all__ = ["get_precision", "require_x64", "set_precision"]


def set_precision(precision: Literal["float32", "float64"]) -> None:
    """Switch JAX's default floating-point precision for this process (`jax_enable_x64`).

    Arrays created before the call keep their dtype; call this first.
    """
    if precision not in ("float32", "float64"):
        raise ValueError(f"`precision` must be 'float32' or 'float64'; got {precision!r}.")
    jax.config.update("jax_enable_x64", precision == "float64")


def get_precision() -> Literal["float32", "float64"]:
    """The current default precision: 'float64' when `jax_enable_x64` is on."""
    return "float64" if jax.config.read("jax_enable_x64") else "float32"


def require_x64(what: str) -> None:
    """Raise unless float64 is on: `what` names the computation that needs it."""
    if not jax.config.read("jax_enable_x64"):
        raise RuntimeError(
            f"{what} needs float64: call lsa.set_precision('float64') first (JAX is in float32 "
            "mode, which would silently lose about 8 digits)."
        )
