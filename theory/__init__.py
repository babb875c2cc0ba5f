"""Closed-form theory for one linear self-attention layer learning linear regression in context.

Reference: /work/shared/theory.md (Zhang, Frei & Bartlett, arXiv 2306.09927 v3; Akyürek et al.,
ICLR 2023). Plain numpy/scipy float64; this package never imports `lsa` or `simulations`.

- `theory.global_min`: Gamma, the limit of gradient flow, the reduced loss and its minimum, the
  conserved quantity, the bounds of Lemmas A.4/A.5 and the PL constant (theory.md §3–§4).
- `theory.risk`: test risks of the trained layer and of predictors linear in h, distribution
  shifts and baselines (theory.md §6–§8);
- `theory.metrics`: Akyürek et al.'s SPD and ILWD for predictors linear in h, and GD as one
  (theory.md §11).
"""

from theory.global_min import (
    conserved_quantity,
    gamma,
    init_loss_bound,
    isotropic_limit,
    limit_reduced,
    limit_weights,
    linearised_rates,
    loss_gap,
    min_loss,
    min_loss_isotropic,
    mu_min,
    pl_constant,
    pl_envelope,
    plateau_escape_time,
    reduced_loss,
    reduced_loss_grad,
    sigma_max,
    u_min,
)
from theory.metrics import gd_G, ilwd_linear, spd_linear
from theory.risk import (
    corollary43_epsilon,
    covariate_scaling_limit,
    covariate_scaling_risk,
    covariate_scaling_risk_isotropic,
    covariate_shift_risk,
    fixed_task_risk,
    minnorm_ols_risk,
    noisy_training_minimiser,
    ols_risk,
    optimal_preconditioner,
    prompt_moment,
    query_shift_risk,
    risk,
    risk_floor,
    risk_isotropic,
    risk_limit_large_N,
    shift_risk,
    shift_risk_limit,
    task_shift_risk,
    theorem42_average_bound,
    theorem42_risk,
    trained_prediction,
)

__all__ = [
    "conserved_quantity",
    "corollary43_epsilon",
    "covariate_scaling_limit",
    "covariate_scaling_risk",
    "covariate_scaling_risk_isotropic",
    "covariate_shift_risk",
    "fixed_task_risk",
    "gamma",
    "gd_G",
    "ilwd_linear",
    "init_loss_bound",
    "isotropic_limit",
    "limit_reduced",
    "limit_weights",
    "linearised_rates",
    "loss_gap",
    "min_loss",
    "min_loss_isotropic",
    "minnorm_ols_risk",
    "mu_min",
    "noisy_training_minimiser",
    "ols_risk",
    "optimal_preconditioner",
    "pl_constant",
    "pl_envelope",
    "plateau_escape_time",
    "prompt_moment",
    "query_shift_risk",
    "reduced_loss",
    "reduced_loss_grad",
    "risk",
    "risk_floor",
    "risk_isotropic",
    "risk_limit_large_N",
    "shift_risk",
    "shift_risk_limit",
    "sigma_max",
    "spd_linear",
    "task_shift_risk",
    "theorem42_average_bound",
    "theorem42_risk",
    "trained_prediction",
    "u_min",
]
