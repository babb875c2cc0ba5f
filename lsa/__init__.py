"""lsa: one linear self-attention layer and its gradient flow (Zhang, Frei & Bartlett 2024).

Precision is an explicit choice: call `lsa.set_precision("float64")` before computing. Every
comparison with theory needs it (float32 floors at ~3e-7 relative error even on isotropic
problems), and the solvers raise a clear error when it is off. Importing `lsa` changes nothing
in JAX's configuration.
"""

from . import flow
from ._validate import TheoremCoverageWarning
from .flow import (
    DirectMethod,
    EigenMethod,
    FlowError,
    FlowOptions,
    FlowResult,
    empirical_flow,
    gradient_flow,
)
from .full_loss import full_population_loss, full_population_risk
from .loss import (
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
from .model import (
    Reduced,
    embed,
    from_reduced,
    lsa_forward,
    predict,
    predict_prompt,
    reduced_view,
)
from .precision import get_precision, require_x64, set_precision
from .prompts import (
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
from .random_covariance import (
    CovarianceLaw,
    ExponentialLaw,
    GammaLaw,
    LogNormalLaw,
    ScaledLaw,
    TwoPointLaw,
    UniformLaw,
    random_covariance_loss,
    sample_random_covariance_prompts,
)
from .setting import Problem, Setting, SettingError, SettingKeys

__all__ = [
    "CovarianceLaw",
    "DirectMethod",
    "EigenMethod",
    "ExponentialLaw",
    "FlowError",
    "FlowOptions",
    "FlowResult",
    "GammaLaw",
    "Init",
    "LogNormalLaw",
    "Problem",
    "PromptDistribution",
    "PromptStats",
    "Prompts",
    "QuadraticLoss",
    "Reduced",
    "ScaledLaw",
    "Setting",
    "SettingError",
    "SettingKeys",
    "TheoremCoverageWarning",
    "TwoPointLaw",
    "UniformLaw",
    "embed",
    "empirical_flow",
    "empirical_loss",
    "empirical_predict",
    "flow",
    "from_reduced",
    "full_population_loss",
    "full_population_risk",
    "gamma_matrix",
    "get_precision",
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
    "random_covariance_loss",
    "random_orthogonal",
    "random_theta",
    "reduced_loss",
    "reduced_view",
    "require_x64",
    "rotated_covariance",
    "sample_random_covariance_prompts",
    "set_precision",
    "sigma_bound",
    "spread_covariance",
]
