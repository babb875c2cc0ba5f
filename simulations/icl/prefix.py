"""`Prefix`: any predictor on the first `m` examples of a prompt, so one Monte Carlo kernel
evaluates several test lengths on prefixes of the same prompts (theory.md §2.2: the LSA then
normalises by `rho = m`)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .predictors import Predictor

__all__ = ["Prefix"]


class Prefix(Predictor):
    """`base` applied to the first `m` examples of a prompt (the others masked out, so the LSA
    normalises by `rho = m`, the number of examples it sees; theory.md §2.2).

    One Monte Carlo kernel then evaluates several test lengths on prefixes of the same prompts:
    one compilation for every M, and common random numbers across the rows.
    """

    base: Predictor
    m: int = eqx.field(static=True)

    @property
    def name(self) -> str:
        return f"{self.base.name}@{self.m}"

    def check_dimension(self, d: int) -> None:
        self.base.check_dimension(d)

    def check_dims(self, M: int, d: int) -> None:
        if self.m > M:
            raise ValueError(f"prefix length {self.m} exceeds the prompt length M = {M}.")
        self.base.check_dims(self.m, d)

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        keep = (jnp.arange(X.shape[1]) < self.m).astype(jnp.float64)
        if mask is not None:
            keep = keep * mask
        return self.base._predict(X, y, x_q, keep)
