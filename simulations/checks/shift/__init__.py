"""Distribution-shift checks and figures (theory.md §7.1, §8, §11.3, §12).

Used by `lsa reproduce` (as an extra suite) and by `lsa shift`. Every closed-form risk of
`theory/` under a test distribution is compared with float64 Monte Carlo on the **full LSA map at
the trained weights** (the end point of `lsa.flow.gradient_flow`, not the closed-form limit
weights), with a z-score against the Monte Carlo standard error (theory.md §14, rows 15, 19–21,
24). s13–s15 compare theory with theory (no Monte Carlo) and say so in their label.

| id | statement | closed form (`theory.`) | theory.md |
|---|---|---|---|
| s1 | Gaussian task shift, non-diagonal `Sigma_w != I` | `task_shift_risk` | §8.5 |
| s2 | sphere task law with the same `Sigma_w`: same risk | `task_shift_risk` | §8.5 |
| s3 | Gaussian query shift, `Omega != Lambda` | `query_shift_risk` | §8.5 |
| s4 | Rademacher-based query, same `Omega`: same risk | `query_shift_risk` | §8.5 |
| s5, s6 | covariate scaling `c = 2`, `c = 1/2` | `covariate_scaling_risk` | §8.5 |
| s7 | covariate shift, general `Omega` | `covariate_shift_risk` | §8.5 |
| s8, s9 | label noise, clean and noisy target | `task_shift_risk(s2=...)` | §8.5 |
| s10, s11 | OLS with noise, `M >= d + 2`; under scaling | `ols_risk` | §8.7 |
| s12 | min-norm OLS, `M <= d - 2`, `Lambda = I` | `minnorm_ols_risk` | §8.7 |
| s13 | optimal `G` = minimiser of the risk (theory vs theory) | `optimal_preconditioner` | §8.4 |
| s14, s15 | `Gamma^-1`, `(Gamma + s^2/N I)^-1` (theory vs theory) | same | §8.4, §8.6 |
| s16–s19 | SPD, ILWD of the LSA vs GD and averaging | `spd_linear`, `ilwd_linear` | §11.3 |
| s20 | ZFB Theorem 4.2, noise and a quadratic part | `theorem42_risk` | §7.1 |

Each Monte Carlo row records in `details` its standard error, sample size and the z-scores that
plausible convention errors in the closed form would give (`z_if_rho_N`: test normaliser
`rho = N`, i.e. `G` times `M/N`; `z_if_Gamma_M`: `Gamma` built with `M`; ...), which shows that the
sample size has the power to catch them. Every Monte Carlo mean and standard error comes from
`simulations.icl.montecarlo` (one estimator), with keys `setting.mc_key(tag)` (`Tag`).

Modules:

- `instance`: sizes (`Sizes`, `NORMAL`, `QUICK`), the trained layer and the shifted laws
  (`make_instance`), `gaussian_law`, `Prefix`, the key tags;
- `risks`: s1–s12 and the z-check helpers (`z_check`, `lsa_mutations`, `mc_full_map`);
- `preconditioner`: s13–s15 (theory vs theory);
- `spd`: s16–s19; `theorem42`: s20;
- `tables`: the figure tables (figures drawn by `simulations.plots.figures` from `out/shift/*.csv`);
- `suite`: `run_suite` and `single_shift_report`.

Cost. On CPU the compilation of a Monte Carlo kernel (one per predictor tuple, distribution
*structure*, batch size and prompt length) costs far more than running it, so rows share kernels:
Gaussian shifts are all drawn from one `TestDistribution(GaussianTask, GaussianCovariates,
GaussianQuery)` structure whose matrices are traced (a query `x_q ~ N(0, Lambda_x)` independent of
the prompt has the law of `SameAsCovariates`); prompt lengths of a figure are prefixes of one
prompt (`Prefix`); the Garg panels draw prompts outside `jit`, so the per-shape operations are
shared between the evaluations.
"""

from .instance import (
    NORMAL,
    QUICK,
    Prefix,
    ShiftInstance,
    Sizes,
    Tag,
    as_setting,
    gaussian_law,
    make_instance,
    train_lsa,
)
from .preconditioner import check_optimal_G
from .risks import check_ols, check_shift_risks, lsa_mutations, lsa_risks, mc_full_map, z_check
from .spd import check_spd_ilwd
from .suite import run_suite, single_shift_report
from .tables import covariate_scale_tables, garg_tables, risk_vs_M_tables, risk_vs_N_tables
from .theorem42 import check_theorem42, theorem42_moments

__all__ = [
    "NORMAL",
    "QUICK",
    "Prefix",
    "ShiftInstance",
    "Sizes",
    "Tag",
    "as_setting",
    "check_ols",
    "check_optimal_G",
    "check_shift_risks",
    "check_spd_ilwd",
    "check_theorem42",
    "covariate_scale_tables",
    "garg_tables",
    "gaussian_law",
    "lsa_mutations",
    "lsa_risks",
    "make_instance",
    "mc_full_map",
    "risk_vs_M_tables",
    "risk_vs_N_tables",
    "run_suite",
    "single_shift_report",
    "theorem42_moments",
    "train_lsa",
    "z_check",
]
