"""Named test distributions: the shifts of ZFB §4.2 (theory.md §8.5) and Garg et al.'s evaluation
catalogue (theory.md §12).

- `named_shift(name, Lambda, **params)`: the training law `lsa.PromptDistribution(Lambda)` with
  one piece changed (task, query, covariates, noise or a scale);
- `garg_catalogue(d, key)`: every evaluation of Garg et al.'s `build_evals`, from the training
  law `lsa.PromptDistribution(I_d)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

import lsa
from lsa._validate import check_covariance, check_length

from .laws import (
    GaussianCovariates,
    GaussianQuery,
    GaussianTask,
    HalfSubspaceCovariates,
    OrthantCovariates,
    OrthogonalQuery,
    OverlappingQuery,
    RademacherQuery,
    ScaledCovariates,
    ScaledTask,
    SkewedCovariates,
    SphereTask,
)
from .prompt_law import TestDistribution

__all__ = ["GARG_SCALES", "SHIFT_NAMES", "garg_catalogue", "named_shift"]

#: The scale factors of Garg et al.'s `scale-x=c` and `scale-y=c` evaluations [GARG code].
GARG_SCALES: tuple[float, ...] = (0.333, 0.5, 2.0, 3.0)


#: Required and optional parameters of each named shift (all accept `noise_std`, `noisy_target`).
_SHIFTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "none": ((), ()),
    "task": (("Sigma_w",), ()),
    "task-sphere": ((), ("Sigma_w",)),
    "noisy": (("noise_std",), ()),
    "query": (("Omega",), ()),
    "query-rademacher": (("Omega",), ()),
    "covariate": (("Omega",), ()),
    "scale-x": (("c",), ()),
    "scale-y": (("c",), ()),
}
_COMMON = ("noise_std", "noisy_target")

#: The names accepted by `named_shift`.
SHIFT_NAMES: tuple[str, ...] = tuple(_SHIFTS)


def named_shift(name: str, Lambda: Float[ArrayLike, "d d"], **params: Any) -> TestDistribution:
    """A named test distribution relative to training covariance `Lambda` (theory.md §8.5).

    The training law is `x ~ N(0, Lambda)`, `w ~ N(0, I)`, no noise; each name changes one part:

    | name | change | parameter |
    |---|---|---|
    | `none` | nothing | |
    | `task` | `w ~ N(0, Sigma_w)` | `Sigma_w` |
    | `task-sphere` | `w = Sigma_w^{1/2} sqrt(d) u`, `u` uniform on a sphere | `Sigma_w` (or I) |
    | `noisy` | label noise `N(0, noise_std^2)` | `noise_std`, `noisy_target` (default False) |
    | `query` | `x_q ~ N(0, Omega)` | `Omega` |
    | `query-rademacher` | `x_q = Omega^{1/2} r`, Rademacher `r` | `Omega` |
    | `covariate` | prompt and query `~ N(0, Omega)` | `Omega` |
    | `scale-x` | prompt and query scaled by `c` (`Omega = c^2 Lambda`) | `c > 0` |
    | `scale-y` | `w` scaled by `c` (`Sigma_w = c^2 I`) | `c > 0` |

    Every name also accepts `noise_std` and `noisy_target` to add label noise.

    **Returns:** a `TestDistribution`. Raises `ValueError` for an unknown name (listing the valid
    ones), a missing or unknown parameter, a non-positive-definite matrix, or `c <= 0`.
    """
    if name not in _SHIFTS:
        raise ValueError(f"unknown shift {name!r}; valid names are {', '.join(SHIFT_NAMES)}.")
    required, optional = _SHIFTS[name]
    allowed = set(required) | set(optional) | set(_COMMON)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"shift {name!r} does not take {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(allowed))}."
        )
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"shift {name!r} needs the parameter(s) {', '.join(missing)}.")
    lam = check_covariance(Lambda, "Lambda")
    d = lam.shape[0]
    train = TestDistribution.from_prompt_distribution(
        lsa.PromptDistribution(
            lam,
            noise_std=params.get("noise_std", 0.0),
            noisy_target=bool(params.get("noisy_target", False)),
        )
    )
    changes: dict[str, Any] = {}
    if name == "task":
        changes["task"] = GaussianTask(check_covariance(params["Sigma_w"], "Sigma_w", d=d))
    elif name == "task-sphere":
        Sigma_w = check_covariance(params.get("Sigma_w", np.eye(d)), "Sigma_w", d=d)
        changes["task"] = SphereTask(Sigma_w)
    elif name == "query":
        changes["query"] = GaussianQuery(check_covariance(params["Omega"], "Omega", d=d))
    elif name == "query-rademacher":
        changes["query"] = RademacherQuery(check_covariance(params["Omega"], "Omega", d=d))
    elif name == "covariate":
        changes["covariates"] = GaussianCovariates(check_covariance(params["Omega"], "Omega", d=d))
    elif name == "scale-x":
        changes["covariates"] = ScaledCovariates(train.covariates, params["c"])
    elif name == "scale-y":
        changes["task"] = ScaledTask(train.task, params["c"])
    return dataclasses.replace(train, **changes)


def garg_catalogue(d: int, key: PRNGKeyArray) -> Mapping[str, TestDistribution]:
    """The evaluation catalogue of Garg et al. (`build_evals` in `src/eval.py`) [GARG code] (§12).

    Training law `x ~ N(0, I_d)`, `w ~ N(0, I_d)`, noiseless. Keys, in the order of the code:

    - `standard`;
    - `random_quadrants` (`OrthantCovariates`; the query is unrestricted);
    - `orthogonal_train_test` (`OrthogonalQuery`; sample with `M < d`);
    - `overlapping_train_test` (`OverlappingQuery`);
    - `half_subspace`, `skewed` (`HalfSubspaceCovariates`, `SkewedCovariates`, random bases
      drawn from `key`);
    - `scale-x=c` and `scale-y=c` for `c` in `GARG_SCALES = (0.333, 0.5, 2, 3)`;
    - `noisyLR`: label noise with standard deviation 1 and a **noisy target** (Garg's metric
      compares with the noisy `y`). Garg's code also rescales each batch of labels so that their
      standard deviation is `sqrt(d)`; that data-dependent rescaling is **not** implemented here
      (the labels are left unrescaled), so closed forms apply.

    Garg et al. evaluate the query at every prefix position `i`; here the query law acts on the
    whole prompt of length `M` (use prompts of length `i` to evaluate position `i`).

    **Returns:** a dict from evaluation name to `TestDistribution`.
    """
    d = check_length(d, "d")
    k_half, k_skew = jax.random.split(key)
    train = TestDistribution.from_prompt_distribution(lsa.PromptDistribution(np.eye(d)))
    task, base = train.task, train.covariates
    out: dict[str, TestDistribution] = {
        "standard": train,
        "random_quadrants": TestDistribution(task, OrthantCovariates(base)),
        "orthogonal_train_test": TestDistribution(task, base, OrthogonalQuery()),
        "overlapping_train_test": TestDistribution(task, base, OverlappingQuery()),
        "half_subspace": TestDistribution(task, HalfSubspaceCovariates(d, k_half)),
        "skewed": TestDistribution(task, SkewedCovariates(d, k_skew)),
    }
    for c in GARG_SCALES:
        out[f"scale-x={c:g}"] = TestDistribution(task, ScaledCovariates(base, c))
    for c in GARG_SCALES:
        out[f"scale-y={c:g}"] = TestDistribution(ScaledTask(task, c), base)
    out["noisyLR"] = dataclasses.replace(train, noise_std=1.0, noisy_target=True)
    return out
