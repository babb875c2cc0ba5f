"""Measurements: what a scan computes for every setting, from its solved flow or from `theory`.

A `Measure` is `fn(ctx) -> float | dict[str, float]` (a dict adds several columns, e.g. a mean
and its standard error) where `ctx` is a `SettingContext`. The built-in measures are the
read-only mapping `MEASURES`; a scan takes more explicitly (`ScanConfig.build(...,
extra_measures=[Measure("name", fn)])` or `scan(..., extra_measures=...)`), so no module
state changes and every scan says which functions it ran.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from lsa.setting import Problem, Setting

from .parameters import PARAMETERS, ScanError

__all__ = ["MEASURES", "Measure", "SettingContext", "first_crossing", "measure_registry"]


@dataclasses.dataclass(frozen=True)
class Measure:
    """A measurement: `fn(ctx) -> float | dict[str, float]`.

    - `needs_flow`: the setting's gradient flow must be solved first (`ctx.flow`);
    - `columns`: the columns it writes (default: its name; a dict result gives each);
    - `doc`: one line for `lsa scan --list` (default: `fn`'s docstring).

    Custom measures run in the process that solves the chunk: with the Dask executor, `fn`
    must be importable (or picklable) on the workers.
    """

    name: str
    fn: Callable[[SettingContext], Any]
    needs_flow: bool = True
    columns: tuple[str, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ScanError(f"measure name {self.name!r} must be an identifier.")
        if self.name in PARAMETERS:
            raise ScanError(f"measure name {self.name!r} clashes with a parameter.")
        if not callable(self.fn):
            raise ScanError(f"measure {self.name!r}: `fn` must be callable; got {self.fn!r}.")
        object.__setattr__(self, "columns", tuple(self.columns) or (self.name,))
        object.__setattr__(self, "doc", self.doc or (self.fn.__doc__ or ""))


class SettingContext:
    """What a measurement sees for one setting.

    - `setting`: the scan row (every parameter; `ctx["c"]` reads one), `training`: its
      `lsa.Setting`, `problem`: what `training.build()` made;
    - `Lambda`, `sigma`, `key_mc` (the setting's Monte Carlo key `k_mc` of the seed rule);
    - `flow`: the solved flow (an `lsa.flow.FlowResult`), or `None` when no requested measure
      needs it or the solve failed; `eig_traj`: the batched solver's eigenbasis trajectory;
    - cached theory quantities (`Gamma_inv`, `min_loss`, `dist_trajectory()`).
    """

    def __init__(
        self,
        setting: dict[str, Any],
        training: Setting,
        problem: Problem,
        flow: Any = None,
        eig_traj: dict[str, np.ndarray] | None = None,
    ):
        self.setting = setting
        self.training = training
        self.problem = problem
        self.Lambda = problem.Lambda
        self.sigma = problem.sigma
        self.key_mc = problem.keys.mc
        self.flow = flow
        self.eig_traj = eig_traj
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        return self.setting[name]

    @property
    def N(self) -> int:
        return int(self.setting["N"])

    @property
    def M(self) -> int:
        return int(self.setting["M"])

    def cached(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = fn()
        return self._cache[name]

    @property
    def Gamma_inv(self) -> np.ndarray:
        import theory

        return self.cached("Gamma_inv", lambda: np.linalg.inv(theory.gamma(self.Lambda, self.N)))

    @property
    def min_loss(self) -> float:
        import theory

        return self.cached("min_loss", lambda: theory.min_loss(self.Lambda, self.N))

    def dist_trajectory(self) -> np.ndarray:
        """`||u U - Gamma^{-1}||_F / ||Gamma^{-1}||_F` at every saved time of the flow."""

        def compute() -> np.ndarray:
            Gi = self.Gamma_inv
            norm = float(np.linalg.norm(Gi))
            if self.eig_traj is not None:  # Lambda's eigenbasis: O(T d) instead of O(T d^3)
                e = self.eig_traj
                gi = np.einsum("ij,jk,ki->i", e["Q"].T, Gi, e["Q"])  # diag(Q^T Gamma^-1 Q)
                u = self.flow.u
                diag = np.sum((u[:, None] * e["p"] - gi[None, :]) ** 2, axis=1)
                return np.sqrt(diag + u**2 * e["off2"]) / norm
            f = self.flow
            return (
                np.array([np.linalg.norm(f.u[i] * f.U_at(i) - Gi) for i in range(len(f.ts))]) / norm
            )

        return self.cached("dist", compute)


def first_crossing(t: np.ndarray, v: np.ndarray, level: float, log: bool) -> float:
    """First time `v` drops to `level`, interpolating linearly between saved points (in
    `log v` when `log`, in `log t` when both bracketing times are > 0)."""
    ok = np.isfinite(v) & np.isfinite(t)
    t, v = t[ok], v[ok]
    below = np.nonzero(v <= level)[0]
    if below.size == 0:
        return math.nan
    i = int(below[0])
    if i == 0:
        return float(t[0])
    t0, t1, v0, v1 = t[i - 1], t[i], v[i - 1], v[i]
    if log:
        v0, v1, level = math.log(max(v0, 1e-300)), math.log(max(v1, 1e-300)), math.log(level)
    w = 0.0 if v0 == v1 else (v0 - level) / (v0 - v1)
    if t0 > 0:
        return float(math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0))))
    return float(t0 + w * (t1 - t0))


def _m_final_loss(ctx: SettingContext) -> float:
    """Population loss (with the 1/2) at the end of the flow."""
    return float(ctx.flow.loss[-1])


def _m_min_loss(ctx: SettingContext) -> float:
    """min L = (1/2)[tr Lambda - tr(Lambda^2 Gamma^-1)] (theory.min_loss, ZFB Lemma 5.3)."""
    return ctx.min_loss


def _m_loss_gap(ctx: SettingContext) -> float:
    """final_loss - min_loss."""
    return float(ctx.flow.loss[-1]) - ctx.min_loss


def _m_dist(ctx: SettingContext) -> float:
    """Relative distance ||u U - Gamma^-1||_F / ||Gamma^-1||_F at the end (Theorem 4.1)."""
    return float(np.linalg.norm(ctx.flow.product - ctx.Gamma_inv) / np.linalg.norm(ctx.Gamma_inv))


def _m_t_converge(ctx: SettingContext) -> float:
    """First t with relative distance to Gamma^-1 <= conv_tol (log-interpolated)."""
    return first_crossing(ctx.flow.ts, ctx.dist_trajectory(), ctx["conv_tol"], log=True)


def _m_t_escape(ctx: SettingContext) -> float:
    """First t with loss gap L(t) - min L <= half the initial gap (plateau escape)."""
    gap = ctx.flow.loss - ctx.min_loss
    return first_crossing(ctx.flow.ts, gap, 0.5 * float(gap[0]), log=False)


def _m_t_escape_theory(ctx: SettingContext) -> float:
    """ln(u*/sigma) / ||Lambda^2||_F (theory.plateau_escape_time, solver-notes heuristic)."""
    import theory

    return theory.plateau_escape_time(ctx.sigma, ctx.Lambda, ctx.N)


def _m_mu_min_inv(ctx: SettingContext) -> float:
    """1 / mu_min, the slowest linearised rate at the minimum (theory.mu_min)."""
    import theory

    return 1.0 / theory.mu_min(ctx.Lambda, ctx.N)


def _m_risk_theory(ctx: SettingContext) -> float:
    """Exact test risk R(N, M) of the trained layer (theory.risk, theory.md §7.3)."""
    import theory

    return theory.risk(ctx.Lambda, ctx.N, ctx.M)


def _m_risk_floor(ctx: SettingContext) -> float:
    """The M -> infinity floor of R(N, M) (theory.risk_floor)."""
    import theory

    return theory.risk_floor(ctx.Lambda, ctx.N)


def _m_covariate_scale_risk(ctx: SettingContext) -> float:
    """Risk when test covariates are scaled by c (theory.covariate_scaling_risk, §8.5)."""
    import theory

    return theory.covariate_scaling_risk(ctx.Lambda, ctx.N, ctx.M, ctx["c"])


def _m_risk_mc(ctx: SettingContext) -> dict[str, float]:
    """Monte Carlo test risk of the full LSA map at the trained weights: n_mc prompts of
    length M with covariates (prompt and query) scaled by c, w ~ N(0, I); mean and SE."""
    from ..icl.distributions import named_shift
    from ..icl.montecarlo import mc_risk
    from ..icl.predictors import LSAPredictor

    f = ctx.flow
    pred = LSAPredictor(f.W_PV, f.W_KQ)
    dist = named_shift("scale-x", ctx.Lambda, c=ctx["c"])
    n = int(ctx["n_mc"])
    batch = max(2, min(n, 2**22 // (ctx.M * (ctx.Lambda.shape[0] + 1))))  # bounded memory
    est = mc_risk({"lsa": pred}, dist, ctx.M, n, ctx.key_mc, batch_size=batch)["lsa"]
    return {"risk_mc": est.mean, "risk_mc_se": est.se}


def _m_u_final(ctx: SettingContext) -> float:
    """u at the end of the flow (-> ||Gamma^-1||_F^{1/2})."""
    return float(ctx.flow.u_final)


def _m_balance(ctx: SettingContext) -> float:
    """max_t |u^2 - ||U||_F^2| along the flow (conserved: 0 for the paper's start)."""
    return float(np.nanmax(np.abs(ctx.flow.balance)))


#: The built-in measures (read-only; pass more to a scan with `extra_measures`).
MEASURES: Mapping[str, Measure] = MappingProxyType(
    {
        m.name: m
        for m in (
            Measure("final_loss", _m_final_loss),
            Measure("min_loss", _m_min_loss, needs_flow=False),
            Measure("loss_gap", _m_loss_gap),
            Measure("dist_Ginv", _m_dist),
            Measure("t_converge", _m_t_converge),
            Measure("t_escape", _m_t_escape),
            Measure("t_escape_theory", _m_t_escape_theory, needs_flow=False),
            Measure("mu_min_inv", _m_mu_min_inv, needs_flow=False),
            Measure("risk_theory", _m_risk_theory, needs_flow=False),
            Measure("risk_floor", _m_risk_floor, needs_flow=False),
            Measure("risk_mc", _m_risk_mc, columns=("risk_mc", "risk_mc_se")),
            Measure("covariate_scale_risk", _m_covariate_scale_risk, needs_flow=False),
            Measure("u_final", _m_u_final),
            Measure("balance", _m_balance),
        )
    }
)

#: Columns added for every setting whose flow is solved.
SOLVER_COLUMNS = ("status", "n_steps", "t_final")
#: Derived setting columns always present.
DERIVED_COLUMNS = ("sigma_max",)


def measure_registry(
    extra: Iterable[Measure] | Mapping[str, Measure] | None = None,
) -> Mapping[str, Measure]:
    """The built-in measures plus `extra` (a new read-only mapping; nothing global changes).
    An extra measure may not reuse a built-in name or another extra's name."""
    items = list(extra.values() if isinstance(extra, Mapping) else (extra or ()))
    out = dict(MEASURES)
    for m in items:
        if not isinstance(m, Measure):
            raise ScanError(f"extra measures must be `Measure` objects; got {m!r}.")
        if m.name in out:
            raise ScanError(
                f"measure name {m.name!r} is already taken "
                f"({'a built-in measure' if m.name in MEASURES else 'given twice'}); rename it."
            )
        out[m.name] = m
    return MappingProxyType(out)
