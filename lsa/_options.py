"""Solver methods, options and the failure exception shared by `lsa.flow` and `lsa.batch`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import numpy as np

#: The default relative tolerance of every reduced-flow solve (`EigenMethod().rtol`).
DEFAULT_RTOL = 1e-11


class FlowError(RuntimeError):
    """A gradient-flow solve failed: step budget, horizon, non-finite state, u <= 0, repeated
    Newton failure, save-grid exhaustion or step-size underflow.

    `diagnostics` holds the solver statistics and the last state's summary; `status` (also
    `diagnostics["status"]`) names the cause with the names of `lsa.batch.STATUS`.
    """

    def __init__(self, message: str, diagnostics: dict[str, Any]):
        details = ", ".join(f"{k}={v}" for k, v in diagnostics.items() if not _is_bulky(v))
        super().__init__(f"{message} [{details}]")
        self.diagnostics = diagnostics

    @property
    def status(self) -> str | None:
        return self.diagnostics.get("status")


def _is_bulky(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.size > 1


@dataclasses.dataclass(frozen=True)
class EigenMethod:
    """Default reduced-flow method: Lambda's eigenbasis, closed-form off-diagonals, Kvaerno5 with
    the O(d) `BorderedDiagonal` Newton solve. Fast and accurate for any conditioning.

    - `rtol`: relative tolerance of the step-size controller (max norm);
    - `atol_factor`: absolute tolerance `= rtol * atol_factor * sigma^2`, so the error control
      follows the trajectory through the small-sigma plateau (solver notes);
    - `newton_rtol` (default `None`: `chord_rtol()`, 1e-6 unless rtol > 1e-10),
      `newton_atol_factor`, `newton_atol_floor`: tolerances of the chord
      (simplified Newton) iteration on the stage derivatives
      (atol `= newton_atol_factor * min(max(sigma^2, newton_atol_floor), 1)`). The floor matters
      for tiny sigma: once the state is O(1), a chord atol of `1e-8 sigma^2` (1.4e-17 at
      sigma = 1e-4 sigma_max, d = 10) asks for corrections below round-off, and the solve
      churned to max_steps (200k steps, 117k rejected; 1769 steps with the floor). diffrax's
      default reuses the step-size tolerances there; at rtol 1e-10 that demands a correction
      near round-off, the iteration is declared divergent and ~50% of steps are rejected
      (measured: 5925 steps, 2910 rejected, against 584 and 3 with these values, d = 5).
      The floor is 1e-4 (a chord atol of at least 1e-12 in solver units): at 1e-6 (1e-14, a
      hundred ulps of the O(1) state after the escape) the chord test sat at round-off, and
      a perturbation of the start at round-off level (d = 30, kappa = 99, N = 2,
      sigma = 2e-4 sigma_max) switched the solve between 1390 steps (5 rejected) and 4992
      (2128 rejected); with 1e-4 both take 1390.

    - `pcoeff`, `icoeff`: coefficients of the step-size controller (diffrax's
      `PIDController`); the default is a PI controller. `gradient_flow` integrates in
      `s = int u^2 dt` (see `lsa.flow`), where the plain integral controller (0, 1) cycles
      through rejected steps at loose tolerances (d = 200, kappa = 100, N = 20, rtol 1e-8:
      577 steps and 400 rejected, against 458 and 26 with (0.3, 0.3)) and, at the default
      rtol, lets the dense output between its long steps drift (the balance `u^2 - ||U||^2`
      at saved times off by 1.0e-9 u*^2 at d = 4, against 4e-10 with (0.2, 0.4)). (0.2, 0.4)
      costs about 25% more steps than (0, 1) at the default rtol (d = 200: 1676 against 1342).

    All of these act in the solver's units, where `tr(Lambda)/d = 1` (`lsa._problem`): `sigma`
    above is the start's scale in those units, so the tolerances, like the step counts, do not
    depend on the units of Lambda. `EigenMethod()` is the one source of the default tolerances:
    `lsa.batch` uses the same `rtol` and `atol_factor`.
    """

    rtol: float = DEFAULT_RTOL
    atol_factor: float = 1e-2
    newton_rtol: float | None = None
    newton_atol_factor: float = 1e-8
    newton_atol_floor: float = 1e-4
    pcoeff: float = 0.2
    icoeff: float = 0.4

    name = "eigen"

    def chord_rtol(self) -> float:
        """`newton_rtol`, or by default `1e4 rtol` clipped to `[1e-6, 1e-4]`: 1e-6 at the
        default and tight rtol, looser with loose rtol, where a chord correction far below the
        step's own error only costs iterations and divergence rejections (d = 200, kappa = 100,
        rtol 1e-8, PI (0.3, 0.3): 440 steps, 18 rejected, with 1e-6; 394 and 3 with 1e-4, the
        end-point error unchanged at 1-2e-9)."""
        if self.newton_rtol is not None:
            return float(self.newton_rtol)
        return min(max(1e4 * float(self.rtol), 1e-6), 1e-4)


@dataclasses.dataclass(frozen=True)
class DirectMethod:
    """The reduced ODE of Lemma 5.2 in the original `(U, u)` coordinates with any diffrax solver.

    Explicit solvers (the default Tsit5) become stability-limited on ill-conditioned Lambda;
    this method exists as an independent cross-check and as a benchmark baseline.
    """

    solver: diffrax.AbstractSolver = dataclasses.field(default_factory=diffrax.Tsit5)
    rtol: float = 1e-10
    atol_factor: float = 1e-2

    name = "direct"


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """Options shared by the flows.

    - `eps`: stop when the estimated relative distance to the fixed point is below `eps`;
    - `t_end`: integrate to this time; the stopping rule still ends the solve earlier once the
      flow has converged (past that point the state is constant to `eps`; continuing would only
      make the implicit solver chase round-off), and the result says so;
    - `t_max`: horizon; default from the plateau and convergence time scales times `margin`;
    - `max_steps`: the solver's step budget;
    - `n_save`: number of saved points, log-spaced in `s = int u^2 dt` (in t when `t_end` is
      given, or for `DirectMethod`); the result's `ts` are the physical times of those points;
    - `progress`: show a progress bar (tqdm) during the solve.
    """

    eps: float = 1e-10
    t_end: float | None = None
    t_max: float | None = None
    margin: float = 20.0
    max_steps: int = 200_000
    n_save: int = 400
    progress: bool = False

    def __post_init__(self) -> None:
        if not (0 < self.eps < 1):
            raise ValueError(f"`eps` must lie in (0, 1); got {self.eps}.")
        if self.t_end is not None and not self.t_end > 0:
            raise ValueError(f"`t_end` must be > 0; got {self.t_end}.")
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1; got {self.max_steps}.")
        if self.n_save < 2:
            raise ValueError(f"`n_save` must be >= 2; got {self.n_save}.")


METHODS: dict[str, Callable[[], EigenMethod | DirectMethod]] = {
    "eigen": EigenMethod,
    "direct": DirectMethod,
}


def _resolve_method(method: Any) -> EigenMethod | DirectMethod:
    if isinstance(method, EigenMethod | DirectMethod):
        return method
    if isinstance(method, str):
        try:
            return METHODS[method]()
        except KeyError:
            raise ValueError(
                f"unknown solver `method={method!r}`; choose one of {sorted(METHODS)} or pass "
                "an EigenMethod / DirectMethod instance."
            ) from None
    raise ValueError(
        f"`method` must be a string ({sorted(METHODS)}) or a method object; got "
        f"{type(method).__name__}."
    )


#: Outcome codes of a solve, shared by `lsa.batch` (`BatchFlowResult.status`) and the
#: `status` of `FlowError` (the names). A rejected step is not an outcome: a solve fails only
#: when the cause repeats until the step size underflows, or at a budget.
STATUS: dict[int, str] = {
    0: "running",
    1: "converged",  # the stopping rule fired
    2: "t_end",  # `FlowOptions.t_end` reached (gradient_flow only)
    3: "horizon",  # the horizon t_max was reached before the stopping rule fired
    4: "max_steps",  # the step budget ran out
    5: "non_finite",  # steps kept producing NaN/inf until the step size underflowed
    6: "u_nonpositive",  # steps kept crossing u <= 0 until the step size underflowed
    7: "padding",  # a padding row of a batch (never integrated)
    8: "newton_failure",  # the Newton (chord) iteration kept failing until underflow
    9: "save_grid_exhausted",  # the last save point was passed before the stopping rule fired
    10: "step_size_underflow",  # error-test rejections shrank the step to round-off
    11: "solver_failure",  # any other failure reported by the ODE library
}
STATUS_CODE: dict[str, int] = {v: k for k, v in STATUS.items()}
