"""The core checks a-f: each statement of ZFB as a check (predicted, simulated, tolerance, verdict).

`lsa` computes (trains the layer, applies the full map), `theory` predicts (closed forms), and
the checks put the two side by side; the two never import each other, so every check compares
two independent computations. All numbers are float64 (`lsa.require_x64`).

- `simulations.checks.core_flow`: (a) Theorem 4.1, (b) Lemma A.3, (c) Lemmas A.4, A.5, 5.4;
- `simulations.checks.core_map`: (d) the full map at the limit weights, (e) the Monte Carlo test
  risk through `simulations.icl.montecarlo.mc_risk`;
- `simulations.checks.core_empirical`: (f) the empirical flow over all entries.

`run_core_checks(setting, sizes)` runs them all on one `lsa.Setting` (the training setting: Lambda,
Theta, sigma, solver options, seed) with the suite's own sizes (`CoreSizes`). Every random draw
comes from the setting's Monte Carlo key: check d from `setting.mc_key(1)`, e from
`mc_key(2)`, f from `mc_key(3)`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import lsa
import theory
from lsa.flow import FlowResult, gradient_flow

from .base import CheckResult
from .core_empirical import EmpiricalSizes, check_empirical
from .core_flow import check_balance, check_flow_limit, check_lyapunov
from .core_map import check_prediction_identity, check_risk_mc

__all__ = [
    "QUICK",
    "CheckResult",
    "CoreSizes",
    "check_balance",
    "check_empirical",
    "check_flow_limit",
    "check_lyapunov",
    "check_prediction_identity",
    "check_risk_mc",
    "run_core_checks",
    "train",
]

#: The Monte Carlo tags of the core checks (`setting.mc_key(tag)`).
TAGS = {"d": 1, "e": 2, "f": 3}


@dataclasses.dataclass(frozen=True)
class CoreSizes:
    """The core suite's own parameters (the training setting is an `lsa.Setting`):

    - `M_values`: test prompt lengths of checks d and e (`M != N` shows the rho convention);
    - `mc_prompts`: Monte Carlo prompts of check e (every length is evaluated on prefixes of the
      same prompts), `mc_batch` per batch; `z_max`: accepted |z|;
    - `empirical`: the sizes of check f (`EmpiricalSizes`).
    """

    M_values: tuple[int, ...] = (5, 10, 40, 80)
    mc_prompts: int = 200_000
    mc_batch: int = 25_000
    z_max: float = 4.0
    empirical: EmpiricalSizes = dataclasses.field(default_factory=EmpiricalSizes)

    def __post_init__(self) -> None:
        if not self.M_values or any(m < 1 for m in self.M_values):
            raise ValueError(f"every test length in `M_values` must be >= 1; got {self.M_values}.")
        if self.mc_prompts < 2 or self.mc_batch < 1:
            raise ValueError("`mc_prompts` must be >= 2 and `mc_batch` >= 1.")
        if not self.z_max > 0:
            raise ValueError(f"`z_max` must be > 0; got {self.z_max}.")

    @property
    def B_values(self) -> tuple[int, ...]:
        return self.empirical.B_values


#: A smoke run: fewer Monte Carlo prompts, smaller prompt sets (same number of B and seeds).
QUICK = CoreSizes(
    mc_prompts=40_000,
    mc_batch=20_000,
    empirical=EmpiricalSizes(B_values=(1_000, 2_000, 4_000, 8_000), seeds=2, n_dense=1),
)


def train(setting: lsa.Setting) -> tuple[lsa.Problem, FlowResult]:
    """Build the setting's problem and train the layer by the reduced gradient flow (with the
    setting's solver options). Both suites of `lsa reproduce` share this one solve."""
    problem = setting.build()
    method, options = setting.method_and_options()
    res = gradient_flow(problem.Lambda, setting.N, problem.init, method=method, options=options)
    return problem, res


def run_core_checks(
    setting: lsa.Setting,
    sizes: CoreSizes = CoreSizes(),
    *,
    trained: tuple[lsa.Problem, FlowResult] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[CheckResult], dict[str, Any]]:
    """Run checks (a)-(f) for one setting. Returns the checks and the data the figures need.

    `trained`: the `(problem, flow)` of `train(setting)` if already solved (shared with the
    shift suite); otherwise it is solved here.
    """
    lsa.require_x64("the core checks")
    t0 = time.perf_counter()
    problem, res = train(setting) if trained is None else trained
    Lambda, N = problem.Lambda, setting.N
    log(
        f"  reduced flow: {res.stats['num_steps']} steps, t_final = {res.t_final:.4g}, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    Theta = setting.Theta()
    checks = check_flow_limit(Lambda, N, res)
    checks.append(check_balance(res))
    checks += check_lyapunov(Lambda, N, problem.sigma, Theta, res)
    checks += check_prediction_identity(Lambda, N, sizes.M_values, setting.mc_key(TAGS["d"]))
    t0 = time.perf_counter()
    rows, risk_table = check_risk_mc(
        Lambda,
        N,
        res.W_PV,
        res.W_KQ,
        sizes.M_values,
        sizes.mc_prompts,
        setting.mc_key(TAGS["e"]),
        sizes.z_max,
        batch=sizes.mc_batch,
    )
    checks += rows
    log(
        f"  Monte Carlo risk: M in {list(sizes.M_values)} (prefixes), {sizes.mc_prompts} prompts, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    t0 = time.perf_counter()
    emp = sizes.empirical
    rows, emp_table = check_empirical(Lambda, N, problem.init, res, setting.mc_key(TAGS["f"]), emp)
    checks += rows
    log(
        f"  empirical flows: B in {list(emp.B_values)} x {emp.seeds} prompt sets, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    data = {
        "Lambda": Lambda,
        "flow": res,
        "min_loss": theory.min_loss(Lambda, N),
        "Gamma_inv": np.linalg.inv(theory.gamma(Lambda, N)),
        "mu": theory.pl_constant(problem.sigma, Theta, Lambda, N),
        "u_min": theory.u_min(problem.sigma, Theta, Lambda, N),
        "risk_table": risk_table,
        "empirical_table": emp_table,
        "risk_curve": risk_curve(Lambda, N, sizes.M_values),
    }
    return checks, data


def risk_curve(Lambda: np.ndarray, N: int, M_values: Iterable[int]) -> dict[str, np.ndarray]:
    """The exact `R(N, M)` on a log grid of M (and its M -> infinity floor) for the figure."""
    Ms = np.unique(np.geomspace(1, 4 * max(max(M_values), N), 200).astype(int))
    return {
        "M": Ms,
        "R": np.array([theory.risk(Lambda, N, int(m)) for m in Ms]),
        "floor": np.full(Ms.shape, theory.risk_floor(Lambda, N)),
    }
