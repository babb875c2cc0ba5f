"""lsa: one linear self-attention layer and its gradient flow (Zhang, Frei & Bartlett 2024).

Importing `lsa` switches JAX to float64 (`jax_enable_x64`): every comparison with theory
needs it (float32 floors at ~3e-7 relative error even on isotropic problems).
"""

import jax

jax.config.update("jax_enable_x64", True)

from . import flow  # noqa: E402
from ._validate import TheoremCoverageWarning  # noqa: E402
from .flow import (  # noqa: E402
    DirectMethod,
    EigenMethod,
    FlowError,
    FlowOptions,
    FlowResult,
    empirical_flow,
    gradient_flow,
)
from .loss import (  # noqa: E402
    PromptStats,
    QuadraticLoss,
    empirical_loss,
    empirical_predict,
    gamma_matrix,
    population_loss,
    population_loss_grad,
    prompt_stats,
    quadratic_form_loss,
    quadratic_loss,
    reduced_loss,
)
from .model import (  # noqa: E402
    Reduced,
    embed,
    from_reduced,
    lsa_forward,
    predict,
    predict_prompt,
    reduced_view,
)
from .prompts import (  # noqa: E402
    Init,
    PromptDistribution,
    Prompts,
    paper_init,
    random_orthogonal,
    random_theta,
    rotated_covariance,
    sigma_bound,
    spread_covariance,
)

__all__ = [
    "DirectMethod",
    "EigenMethod",
    "FlowError",
    "FlowOptions",
    "FlowResult",
    "Init",
    "PromptDistribution",
    "PromptStats",
    "Prompts",
    "QuadraticLoss",
    "Reduced",
    "TheoremCoverageWarning",
    "embed",
    "empirical_flow",
    "empirical_loss",
    "empirical_predict",
    "flow",
    "from_reduced",
    "gamma_matrix",
    "gradient_flow",
    "lsa_forward",
    "paper_init",
    "population_loss",
    "population_loss_grad",
    "predict",
    "predict_prompt",
    "prompt_stats",
    "quadratic_form_loss",
    "quadratic_loss",
    "random_orthogonal",
    "random_theta",
    "reduced_loss",
    "reduced_view",
    "rotated_covariance",
    "sigma_bound",
    "spread_covariance",
]
