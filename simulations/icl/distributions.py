"""Composable test distributions for in-context regression (theory.md §8, §11.5, §12).

One import for everything the Monte Carlo engine samples from; the code lives in:

- `simulations.icl.laws`: the pieces. Task laws (`GaussianTask`, `SphereTask`,
  `RademacherTask`, `CustomTask`, `ScaledTask`), covariate laws (`GaussianCovariates`,
  `ScaledCovariates`, `SkewedCovariates`, `HalfSubspaceCovariates`, `OrthantCovariates`) and
  query laws (`SameAsCovariates`, `GaussianQuery`, `RademacherQuery`, `OrthogonalQuery`,
  `OverlappingQuery`);
- `simulations.icl.prompt_law`: `TestDistribution` (task + covariates + query + label noise),
  built on `lsa.PromptDistribution` for the training law (`from_prompt_distribution`), with
  exact samplers of the prompts and of their sufficient statistics;
- `simulations.icl.catalogue`: `named_shift` (the shifts of ZFB §4.2, theory.md §8.5) and
  `garg_catalogue` (theory.md §12);
- `simulations.icl.wishart`: the Bartlett factor and the Marsaglia–Tsang gamma sampler of the
  statistics sampler;
- `simulations.icl.prng`: `rbg_key`, `rbg_threefry_key` (fast XLA RngBitGenerator keys).

A `TestDistribution` draws `w` from its task law, the in-context inputs `x_1 .. x_M` from its
covariate law and `x_q` from its query law; `y_i = <w, x_i> + eps_i`,
`eps_i ~ N(0, noise_std^2)`; the target is `y_q = <w, x_q>`, plus independent noise if
`noisy_target`. `TestDistribution.sample(key, n_prompts, M)` returns an `lsa.Prompts` batch;
`TestDistribution.shift_risk_args()` returns the matching arguments of `theory.shift_risk`
(theory.md §8.3) when the closed form applies.
"""

from __future__ import annotations

from .catalogue import GARG_SCALES, SHIFT_NAMES, garg_catalogue, named_shift
from .laws import (
    CovariateLaw,
    CustomTask,
    GaussianCovariates,
    GaussianQuery,
    GaussianTask,
    HalfSubspaceCovariates,
    OrthantCovariates,
    OrthogonalQuery,
    OverlappingQuery,
    QueryLaw,
    RademacherQuery,
    RademacherTask,
    SameAsCovariates,
    ScaledCovariates,
    ScaledTask,
    SkewedCovariates,
    SphereTask,
    TaskLaw,
)
from .prng import rbg_key, rbg_threefry_key
from .prompt_law import TestDistribution

__all__ = [
    "GARG_SCALES",
    "SHIFT_NAMES",
    "CovariateLaw",
    "CustomTask",
    "GaussianCovariates",
    "GaussianQuery",
    "GaussianTask",
    "HalfSubspaceCovariates",
    "OrthantCovariates",
    "OrthogonalQuery",
    "OverlappingQuery",
    "QueryLaw",
    "RademacherQuery",
    "RademacherTask",
    "SameAsCovariates",
    "ScaledCovariates",
    "ScaledTask",
    "SkewedCovariates",
    "SphereTask",
    "TaskLaw",
    "TestDistribution",
    "garg_catalogue",
    "named_shift",
    "rbg_key",
    "rbg_threefry_key",
]
