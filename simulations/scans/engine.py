"""Parameter scans: many settings, batched gradient-flow solves, one table.

```python
import simulations

df = simulations.scan(
    {"sigma_fraction": [1e-4, 1e-3, 1e-2, 0.1, 0.5], "kappa": [1, 10, 100]},
    measure=["t_escape", "t_escape_theory", "t_converge", "mu_min_inv"],
    params={"d": 10, "N": 20},
)
```

A **setting** is one value of every parameter in `PARAMETERS` (d, N, M, sigma or
sigma_fraction, kappa, spectrum, c, seed, solver options...). A scan expands a grid of settings
(the cartesian product of `grid`, times each zipped group of `zip`, with fixed `params` and
defaults for the rest), solves the reduced gradient flow of every setting that needs it with
`lsa.batch.batch_gradient_flow` (grouped by d and solver options, sorted by the closed-form time
scales so that a chunk holds settings of similar stiffness, chunked to bound memory), computes
the requested measurements (`MEASURES`) from the flow and from `theory`, and returns a pandas
DataFrame with one row per setting, sorted by `setting_id`.

**Run directories** (`out=`): `<out>/<name>-<hash12>/`, where the hash is that of the
normalised configuration (everything that changes a number: grid, parameters, measures, seed,
chunk size; not the executor, device or progress bar). It holds `config.json`,
`provenance.json` (versions, device, git revision), `plan.json` (the chunks), one
`chunks/chunk-NNNNN.parquet` per finished chunk (written atomically: temporary file, then
rename), `timings.json`, and at the end `results.parquet`, `results.csv` and last the `DONE`
marker. Rerunning the same configuration resumes: chunks already on disk are skipped, so no
row is lost or duplicated even after SIGKILL; a finished scan (DONE present) is read back
without solving anything. Everything about a configuration is validated before the directory
is created, and `DONE` is written only after the consolidated table has been checked to hold
every setting exactly once.

**Seeds.** Setting `seed` (default: the scan's seed) gives `key = PRNGKey(seed)` and
`k_rot, k_theta, k_mc = split(key, 3)`: the Haar rotation of Lambda
(`Lambda = lsa.spread_covariance(d, kappa, k_rot)` for the geometric spectrum), Theta
(`lsa.paper_init(..., key=k_theta)`) and the Monte Carlo prompts. Settings that share a seed
share these draws (common random numbers: smooth curves along a scan); put `seed` in the grid
for replicates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MEASURES",
    "PARAMETERS",
    "Measure",
    "Parameter",
    "ScanConfig",
    "ScanError",
    "SettingContext",
    "example_path",
    "examples",
    "load_config",
    "register_measure",
    "run_scan",
    "scan",
]

SCHEMA_VERSION = 1
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ScanError(ValueError):
    """A scan configuration or run directory is invalid; raised before anything runs."""


# ----------------------------------------------------------------------------------------
# Parameters of a setting
# ----------------------------------------------------------------------------------------


def _positive(x: float) -> bool:
    return x > 0 and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One setting parameter: its type (`int`, `float`, `str`, `bool`), default, a validity
    test and a one-line description. `default=None` means "derived" (see the description)."""

    kind: type
    default: Any
    check: Callable[[Any], bool]
    doc: str
    choices: tuple[str, ...] = ()


SPECTRA = ("geometric", "linear", "isotropic")
METHODS = ("eigen", "direct")

PARAMETERS: dict[str, Parameter] = {
    "d": Parameter(int, 10, lambda v: v >= 1, "input dimension"),
    "N": Parameter(int, 20, lambda v: v >= 1, "training prompt length"),
    "M": Parameter(int, None, lambda v: v >= 1, "test prompt length (default: N)"),
    "sigma": Parameter(float, None, _positive, "initial scale sigma (absolute)"),
    "sigma_fraction": Parameter(
        float, None, _positive, "sigma as a fraction of sigma_max (default 0.5 unless sigma)"
    ),
    "kappa": Parameter(float, 1.0, lambda v: v >= 1 and math.isfinite(v), "condition number"),
    "spectrum": Parameter(
        str, "geometric", lambda v: v in SPECTRA, "eigenvalue profile of Lambda", SPECTRA
    ),
    "trace": Parameter(float, None, _positive, "tr(Lambda) (default: d)"),
    "rotate": Parameter(bool, True, lambda v: True, "Haar-rotate Lambda's eigenbasis"),
    "c": Parameter(float, 1.0, _positive, "test covariate scale (covariate shift x -> c x)"),
    "seed": Parameter(int, None, lambda v: v >= 0, "seed of Lambda, Theta, MC (default: scan)"),
    "n_mc": Parameter(int, 4096, lambda v: v >= 2, "Monte Carlo prompts for risk_mc"),
    "method": Parameter(str, "eigen", lambda v: v in METHODS, "reduced-flow method", METHODS),
    "rtol": Parameter(float, 1e-10, lambda v: 0 < v < 1, "solver relative tolerance"),
    "eps": Parameter(float, 1e-10, lambda v: 0 < v < 1, "stopping rule (relative distance)"),
    "margin": Parameter(float, 20.0, _positive, "horizon = margin x closed-form time scales"),
    "max_steps": Parameter(int, 200_000, lambda v: v >= 1, "solver step budget"),
    "n_save": Parameter(int, 400, lambda v: v >= 10, "saved points per trajectory"),
    "conv_tol": Parameter(float, 1e-6, lambda v: 0 < v < 1, "t_converge threshold"),
}

# Parameters that change how a flow is solved; settings are batched only when these agree.
SOLVER_KEYS = ("d", "method", "rtol", "eps", "margin", "max_steps", "n_save")
# Parameters the trained flow depends on: settings equal on these share one solve.
FLOW_KEYS = (*SOLVER_KEYS, "N", "sigma", "sigma_fraction", "kappa", "spectrum", "trace",
             "rotate", "seed")  # fmt: skip


def _coerce(name: str, value: Any) -> Any:
    """Normalise one value to its parameter's type (so `1` and `1.0` hash alike)."""
    spec = PARAMETERS[name]
    kind = spec.kind
    bad = ScanError(
        f"parameter `{name}` must be {kind.__name__}"
        + (f" (one of {', '.join(spec.choices)})" if spec.choices else "")
        + f"; got {value!r}."
    )
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        out: Any = value
    elif kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int | np.integer):
            raise bad
        out = int(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise bad
        out = float(value)
    else:
        if not isinstance(value, str):
            raise bad
        out = value
    if not spec.check(out):
        raise ScanError(
            f"parameter `{name}` = {value!r} is out of range ({spec.doc}"
            + (f"; one of {', '.join(spec.choices)}" if spec.choices else "")
            + ")."
        )
    return out


def _expand_values(name: str, spec: Any) -> list[Any]:
    """A grid entry: a list, or `{geomspace|linspace = [start, stop, num]}`, or
    `{range = [start, stop(, step)]}` (stop exclusive). Integer parameters round and drop
    duplicates."""
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise ScanError(
                f"grid entry `{name}` must have exactly one of geomspace, linspace, range."
            )
        ((kind, a),) = spec.items()
        if kind not in ("geomspace", "linspace", "range") or not isinstance(a, list):
            raise ScanError(
                f"grid entry `{name}`: unknown generator {kind!r}; use geomspace = [start, stop, "
                "num], linspace = [start, stop, num] or range = [start, stop, step]."
            )
        vals: list[Any]
        try:
            if kind == "range":
                vals = list(np.arange(*a))
            else:
                start, stop, num = a
                if int(num) != num or num < 1:
                    raise ValueError
                fn = np.geomspace if kind == "geomspace" else np.linspace
                vals = list(fn(float(start), float(stop), int(num)))
        except (TypeError, ValueError) as exc:
            raise ScanError(f"grid entry `{name}`: bad {kind} arguments {a!r} ({exc}).") from None
        if PARAMETERS[name].kind is int:
            vals = list(dict.fromkeys(int(np.rint(float(v))) for v in vals))
        else:
            vals = [float(v) for v in vals]
    elif isinstance(spec, list | tuple | np.ndarray):
        vals = list(spec)
    else:
        vals = [spec]
    if not vals:
        raise ScanError(f"grid entry `{name}` is empty: an empty grid has no settings to run.")
    out = [_coerce(name, v) for v in vals]
    if len(set(map(repr, out))) != len(out):
        raise ScanError(f"grid entry `{name}` repeats a value: {out}.")
    return out


def _check_names(names: Iterable[str], where: str) -> None:
    unknown = sorted(set(names) - set(PARAMETERS))
    if unknown:
        raise ScanError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} in {where}; valid parameters "
            f"are: {', '.join(PARAMETERS)}."
        )


# ----------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measure:
    """A measurement: `fn(ctx) -> float | dict[str, float]` (a dict adds several columns,
    e.g. a mean and its standard error). `needs_flow`: the setting's gradient flow must be
    solved first; `columns`: the columns it writes."""

    name: str
    fn: Callable[[SettingContext], Any]
    needs_flow: bool
    columns: tuple[str, ...]
    doc: str


MEASURES: dict[str, Measure] = {}


def register_measure(
    name: str,
    fn: Callable[[SettingContext], Any],
    *,
    needs_flow: bool = True,
    columns: Sequence[str] | None = None,
    doc: str = "",
) -> Measure:
    """Add a measurement to the registry (usable by name in scans and configs).

    Custom measures run in the process that solves the chunk; with the Dask executor register
    them in a module the workers import.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"measure name {name!r} must be an identifier.")
    if name in PARAMETERS:
        raise ValueError(f"measure name {name!r} clashes with a parameter.")
    m = Measure(name, fn, needs_flow, tuple(columns or (name,)), doc or (fn.__doc__ or ""))
    MEASURES[name] = m
    return m


class SettingContext:
    """What a measurement sees: the setting, its `Lambda` (and eigen-decomposition), the initial
    scale, the solved flow (`flow`, an `lsa.flow.FlowResult`, or `None` when no requested
    measure needs it or the solve failed) and cached theory quantities."""

    def __init__(
        self,
        setting: dict[str, Any],
        Lambda: np.ndarray,
        sigma: float,
        key_mc: Any,
        flow: Any = None,
        eig_traj: dict[str, np.ndarray] | None = None,
    ):
        self.setting = setting
        self.Lambda = Lambda
        self.sigma = sigma
        self.key_mc = key_mc
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


def _first_crossing(t: np.ndarray, v: np.ndarray, level: float, log: bool) -> float:
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
    return _first_crossing(ctx.flow.ts, ctx.dist_trajectory(), ctx["conv_tol"], log=True)


def _m_t_escape(ctx: SettingContext) -> float:
    """First t with loss gap L(t) - min L <= half the initial gap (plateau escape)."""
    gap = ctx.flow.loss - ctx.min_loss
    return _first_crossing(ctx.flow.ts, gap, 0.5 * float(gap[0]), log=False)


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


for _name, _fn, _flow, _cols in [
    ("final_loss", _m_final_loss, True, None),
    ("min_loss", _m_min_loss, False, None),
    ("loss_gap", _m_loss_gap, True, None),
    ("dist_Ginv", _m_dist, True, None),
    ("t_converge", _m_t_converge, True, None),
    ("t_escape", _m_t_escape, True, None),
    ("t_escape_theory", _m_t_escape_theory, False, None),
    ("mu_min_inv", _m_mu_min_inv, False, None),
    ("risk_theory", _m_risk_theory, False, None),
    ("risk_floor", _m_risk_floor, False, None),
    ("risk_mc", _m_risk_mc, True, ("risk_mc", "risk_mc_se")),
    ("covariate_scale_risk", _m_covariate_scale_risk, False, None),
    ("u_final", _m_u_final, True, None),
    ("balance", _m_balance, True, None),
]:
    register_measure(_name, _fn, needs_flow=_flow, columns=_cols)

#: Columns added for every setting whose flow is solved.
SOLVER_COLUMNS = ("status", "n_steps", "t_final")
#: Derived setting columns always present.
DERIVED_COLUMNS = ("sigma_max",)


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

_SCAN_KEYS = {"name", "seed", "chunk_size", "measures", "description"}
_SECTIONS = {"scan", "params", "grid", "zip", "plot"}
_PLOT_KEYS = {"x", "y", "hue", "facet", "kind", "logx", "logy"}


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """A validated, normalised scan configuration (see `load_config` for the TOML layout).

    - `name`: run-directory prefix (letters, digits, `._-`);
    - `seed`: default seed of every setting; `chunk_size`: settings per batched solve;
    - `measures`: measurement names (`MEASURES`);
    - `params`: fixed parameter values; `grid`: cartesian lists; `zips`: groups of zipped
      lists (each group's lists have equal lengths); a parameter may appear in one place only;
    - `plot`: default `lsa plot` options (not part of the hash); `description`: free text.
    """

    name: str
    measures: tuple[str, ...]
    seed: int = 0
    chunk_size: int = 1024
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    grid: Mapping[str, list[Any]] = dataclasses.field(default_factory=dict)
    zips: tuple[Mapping[str, list[Any]], ...] = ()
    plot: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    @staticmethod
    def build(
        *,
        name: str = "scan",
        measures: str | Sequence[str] = ("final_loss",),
        seed: int = 0,
        chunk_size: int = 1024,
        params: Mapping[str, Any] | None = None,
        grid: Mapping[str, Any] | None = None,
        zips: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        plot: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> ScanConfig:
        """Validate and normalise; raises `ScanError` with a clear message on any problem."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ScanError(f"scan name {name!r} must be letters, digits, '.', '_' or '-'.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ScanError(f"scan seed must be an integer >= 0; got {seed!r}.")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ScanError(f"chunk_size must be an integer >= 1; got {chunk_size!r}.")
        if isinstance(measures, str):
            measures = (measures,)
        measures = tuple(measures)
        if not measures:
            raise ScanError(f"no measures requested; choose from: {', '.join(MEASURES)}.")
        unknown = [m for m in measures if m not in MEASURES]
        if unknown:
            raise ScanError(
                f"unknown measure(s) {', '.join(map(repr, unknown))}; valid measures are: "
                f"{', '.join(MEASURES)}."
            )
        if len(set(measures)) != len(measures):
            raise ScanError(f"measures repeat a name: {list(measures)}.")
        params = dict(params or {})
        grid = dict(grid or {})
        if zips is None:
            zip_groups: list[Mapping[str, Any]] = []
        elif isinstance(zips, Mapping):
            zip_groups = [zips] if zips else []
        else:
            zip_groups = list(zips)
        _check_names(params, "[params]")
        _check_names(grid, "[grid]")
        for g in zip_groups:
            if not isinstance(g, Mapping):
                raise ScanError("each [zip] group must be a table of lists.")
            _check_names(g, "[zip]")
        seen: dict[str, str] = {}
        for where, names in [("params", params), ("grid", grid)] + [
            (f"zip group {i}", g) for i, g in enumerate(zip_groups)
        ]:
            for n in names:
                if n in seen:
                    raise ScanError(
                        f"parameter `{n}` is given twice (in {seen[n]} and in {where}); "
                        "give each parameter in one place."
                    )
                seen[n] = where
        if "sigma" in seen and "sigma_fraction" in seen:
            raise ScanError(
                "conflicting options: give `sigma` (absolute) or `sigma_fraction` (of sigma_max), "
                "not both."
            )
        norm_params = {k: _coerce(k, v) for k, v in sorted(params.items())}
        norm_grid = {k: _expand_values(k, v) for k, v in sorted(grid.items())}
        norm_zips = []
        for g in zip_groups:
            if not g:
                raise ScanError("a [zip] group is empty: an empty grid has no settings to run.")
            cols = {k: _expand_values(k, v) for k, v in sorted(g.items())}
            lengths = {k: len(v) for k, v in cols.items()}
            if len(set(lengths.values())) != 1:
                raise ScanError(f"zipped lists must have equal lengths; got {lengths}.")
            norm_zips.append(cols)
        norm_zips.sort(key=lambda g: tuple(g))
        plot = dict(plot or {})
        bad = sorted(set(plot) - _PLOT_KEYS)
        if bad:
            raise ScanError(f"unknown [plot] key(s) {bad}; valid keys: {sorted(_PLOT_KEYS)}.")
        cfg = ScanConfig(
            name=name,
            measures=measures,
            seed=seed,
            chunk_size=chunk_size,
            params=norm_params,
            grid=norm_grid,
            zips=tuple(norm_zips),
            plot=plot,
            description=str(description),
        )
        cfg.settings()  # validates every setting (conflicts, ranges) before anything runs
        return cfg

    def normalized(self) -> dict[str, Any]:
        """Everything that determines the numbers, in canonical form (hashed)."""
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "measures": list(self.measures),
            "params": dict(self.params),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "zip": [{k: list(v) for k, v in g.items()} for g in self.zips],
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.normalized(), "plot": dict(self.plot), "description": self.description}

    @property
    def hash(self) -> str:
        blob = json.dumps(self.normalized(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.hash}"

    @property
    def needs_flow(self) -> bool:
        return any(MEASURES[m].needs_flow for m in self.measures)

    @property
    def columns(self) -> list[str]:
        cols = ["setting_id", *PARAMETERS, *DERIVED_COLUMNS]
        for m in self.measures:
            cols += list(MEASURES[m].columns)
        if self.needs_flow:
            cols += list(SOLVER_COLUMNS)
        return [*cols, "error"]

    def settings(self) -> list[dict[str, Any]]:
        """All settings, fully resolved, in canonical order (their index is `setting_id`)."""
        axes: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in self.grid.items()]
        for g in self.zips:
            keys = list(g)
            axes.append(
                [dict(zip(keys, row, strict=True)) for row in zip(*g.values(), strict=True)]
            )
        out = []
        for i, combo in enumerate(itertools.product(*axes)):
            s: dict[str, Any] = {"setting_id": i}
            for k, spec in PARAMETERS.items():
                s[k] = self.params.get(k, spec.default)
            for part in combo:
                s.update(part)
            _resolve(s, self.seed)
            out.append(s)
        if not out:
            raise ScanError("the grid is empty: it has no settings to run.")
        return out


def _resolve(s: dict[str, Any], seed: int) -> None:
    """Fill derived defaults and check cross-parameter constraints of one setting."""
    if s["M"] is None:
        s["M"] = s["N"]
    if s["seed"] is None:
        s["seed"] = seed
    if s["sigma"] is None and s["sigma_fraction"] is None:
        s["sigma_fraction"] = 0.5
    if s["trace"] is None:
        s["trace"] = float(s["d"])
    if s["spectrum"] == "isotropic" and s["kappa"] != 1.0:
        raise ScanError(
            f"conflicting options in setting {s['setting_id']}: spectrum 'isotropic' needs "
            f"kappa = 1, got kappa = {s['kappa']}."
        )


def load_config(path: str | os.PathLike[str]) -> ScanConfig:
    """Read a scan configuration from TOML:

    ```toml
    [scan]
    name = "sigma_scan"          # required
    seed = 0                     # default seed of every setting
    chunk_size = 256             # settings per batched solve
    measures = ["t_escape", "t_escape_theory"]

    [params]                     # fixed values (defaults for the rest)
    d = 10
    kappa = 10

    [grid]                       # cartesian product
    sigma_fraction = { geomspace = [1e-6, 0.5, 13] }

    [zip]                        # zipped lists (or [[zip]] for several groups)
    N = [10, 20, 40]
    M = [10, 20, 40]

    [plot]                       # default figure of `lsa plot`
    x = "t_escape_theory"
    y = ["t_escape"]
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scan configuration {str(path)!r} does not exist.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScanError(f"{path}: not valid TOML ({exc}).") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: Mapping[str, Any], source: str = "configuration") -> ScanConfig:
    """Build a `ScanConfig` from the TOML layout as a dict (see `load_config`)."""
    bad = sorted(set(data) - _SECTIONS)
    if bad:
        raise ScanError(f"{source}: unknown section(s) {bad}; valid sections: {sorted(_SECTIONS)}.")
    head = dict(data.get("scan", {}))
    bad = sorted(set(head) - _SCAN_KEYS)
    if bad:
        raise ScanError(f"{source}: unknown [scan] key(s) {bad}; valid keys: {sorted(_SCAN_KEYS)}.")
    if "name" not in head:
        raise ScanError(f"{source}: [scan] needs a `name`.")
    if "measures" not in head:
        raise ScanError(f"{source}: [scan] needs `measures`; choose from: {', '.join(MEASURES)}.")
    try:
        return ScanConfig.build(
            name=head["name"],
            measures=head["measures"],
            seed=head.get("seed", 0),
            chunk_size=head.get("chunk_size", 1024),
            params=data.get("params"),
            grid=data.get("grid"),
            zips=data.get("zip"),
            plot=data.get("plot"),
            description=head.get("description", ""),
        )
    except ScanError as exc:
        raise ScanError(f"{source}: {exc}") from None


def examples() -> dict[str, Path]:
    """The example scans shipped with the package: name -> TOML path."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def example_path(name: str) -> Path:
    ex = examples()
    if name not in ex:
        raise ScanError(f"unknown example {name!r}; shipped examples: {', '.join(ex)}.")
    return ex[name]


# ----------------------------------------------------------------------------------------
# Planning: group by solver options, sort by stiffness, chunk
# ----------------------------------------------------------------------------------------


def spectrum(s: Mapping[str, Any]) -> np.ndarray:
    """Eigenvalues of Lambda for a setting (ascending, trace `trace`)."""
    d, kappa = int(s["d"]), float(s["kappa"])
    k = np.arange(d) / max(d - 1, 1)
    if s["spectrum"] == "geometric":
        lam = kappa**k
    elif s["spectrum"] == "linear":
        lam = 1.0 + (kappa - 1.0) * k
    else:
        lam = np.ones(d)
    return lam * (float(s["trace"]) / lam.sum())


def _sigma_max(lam: np.ndarray, N: int) -> float:
    """sqrt(2 / (sqrt(d) ||Gamma||_op)) (Theorem 4.1), from Lambda's eigenvalues."""
    g_max = (1.0 + 1.0 / N) * lam.max() + lam.sum() / N
    return math.sqrt(2.0 / (math.sqrt(lam.size) * g_max))


def _sigma(s: Mapping[str, Any], lam: np.ndarray) -> tuple[float, float]:
    smax = _sigma_max(lam, int(s["N"]))
    sigma = float(s["sigma"]) if s["sigma"] is not None else float(s["sigma_fraction"]) * smax
    return sigma, smax


def step_estimate(s: Mapping[str, Any]) -> float:
    """A rough step count of the batched solver for a setting, used only to order settings so
    that a chunk holds flows of similar cost (members of a chunk run until the slowest is done).

    `f = ln(max_i c_i / min_ij c_ij)` is the log stiffness ratio of the eigenbasis flow
    (`c_i = gamma_i lam_i^2` the fastest diagonal rate, `c_ij = gamma_i lam_i lam_j` the slowest
    off-diagonal one) and `ln(sigma_max / sigma)` the length of the plateau; the coefficients
    are a fit to measured step counts at d = 10 (7% rms error), good enough for ordering.
    """
    lam = spectrum(s)
    n = int(s["N"])
    gam = (1.0 + 1.0 / n) * lam + lam.sum() / n
    f = math.log(float(np.max(gam * lam**2)) / float(np.min(gam[:, None] * lam[:, None] * lam)))
    sigma, smax = _sigma(s, lam)
    return 26.0 * f + 6.5 * f * f + 35.0 * math.log(max(smax / sigma, 1.0))


def plan_chunks(cfg: ScanConfig, settings: list[dict[str, Any]]) -> list[list[int]]:
    """Deterministic chunks of setting ids: grouped by solver options (`SOLVER_KEYS`), sorted
    by `step_estimate` (similar cost together; equal flows side by side), then cut into
    `chunk_size` pieces. Without flow measures: plain id order."""
    if not cfg.needs_flow:
        ids = [s["setting_id"] for s in settings]
        return [ids[i : i + cfg.chunk_size] for i in range(0, len(ids), cfg.chunk_size)]
    groups: dict[tuple[Any, ...], list[tuple[float, str, int]]] = {}
    for s in settings:
        key = tuple(s[k] for k in SOLVER_KEYS)
        flow_key = repr(tuple(s[k] for k in FLOW_KEYS))
        groups.setdefault(key, []).append((step_estimate(s), flow_key, s["setting_id"]))
    chunks = []
    for key in sorted(groups, key=repr):
        members = sorted(groups[key])
        for i in range(0, len(members), cfg.chunk_size):
            # longest first inside a chunk: the solver's lanes refill from the front of the
            # queue, so the last flows to start are the short ones (little idle tail)
            part = sorted(members[i : i + cfg.chunk_size], key=lambda m: (-m[0], m[1], m[2]))
            chunks.append([m[2] for m in part])
    return chunks


# ----------------------------------------------------------------------------------------
# Solving one chunk (runs in this process or on a Dask worker)
# ----------------------------------------------------------------------------------------


def _keys(seeds: Sequence[int]) -> dict[int, tuple[Any, Any, Any]]:
    import jax

    out = {}
    for seed in sorted(set(seeds)):
        k_rot, k_theta, k_mc = jax.random.split(jax.random.PRNGKey(seed), 3)
        out[seed] = (k_rot, k_theta, k_mc)
    return out


def _build(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Lambda, the start (u0, U0), sigma and keys of every setting (vectorised over seeds)."""
    import lsa

    keys = _keys([s["seed"] for s in settings])
    rot: dict[tuple[int, int], np.ndarray] = {}
    theta: dict[tuple[int, int], np.ndarray] = {}
    for seed, d in sorted({(s["seed"], s["d"]) for s in settings}):
        k_rot, k_theta, _ = keys[seed]
        rot[seed, d] = np.asarray(lsa.random_orthogonal(k_rot, d))
        Th = np.asarray(lsa.random_theta(k_theta, d))
        TT = Th @ Th.T
        theta[seed, d] = TT / np.linalg.norm(TT)
    Lams, u0s, U0s, sigmas, smaxs = [], [], [], [], []
    for s in settings:
        lam = spectrum(s)
        if s["rotate"]:
            Q = rot[s["seed"], s["d"]]
            L = (Q * lam[None, :]) @ Q.T
            L = 0.5 * (L + L.T)
        else:
            L = np.diag(lam)
        sigma, smax = _sigma(s, lam)  # sigma >= sigma_max is allowed: see sigma_fraction
        Lams.append(L)
        u0s.append(sigma)
        U0s.append(sigma * theta[s["seed"], s["d"]])
        sigmas.append(sigma)
        smaxs.append(smax)
    return {
        "Lambda": Lams,
        "u0": np.array(u0s),
        "U0": U0s,
        "sigma": np.array(sigmas),
        "sigma_max": np.array(smaxs),
        "key_mc": [keys[s["seed"]][2] for s in settings],
    }


_Solved = tuple[Any, dict[str, np.ndarray] | None, str, int]


def _solve_flows(
    settings: list[dict[str, Any]], built: dict[str, Any], pad_to: int
) -> list[_Solved]:
    """(FlowResult or None, eigen trajectory, status, steps) per setting."""
    import lsa
    from lsa.batch import batch_gradient_flow
    from lsa.flow import DirectMethod, EigenMethod, FlowError, FlowOptions, gradient_flow

    s0 = settings[0]
    opts = FlowOptions(
        eps=s0["eps"], margin=s0["margin"], max_steps=s0["max_steps"], n_save=s0["n_save"]
    )
    inits = [lsa.Init(u=u, U=U) for u, U in zip(built["u0"], built["U0"], strict=True)]
    if s0["method"] == "eigen":
        res = batch_gradient_flow(
            np.stack(built["Lambda"]),
            [s["N"] for s in settings],
            inits,
            method=EigenMethod(rtol=s0["rtol"]),
            options=opts,
            pad_to=pad_to,
        )
        out: list[_Solved] = []
        reasons = res.stop_reason
        for b in range(len(settings)):
            status = reasons[b]
            steps = int(res.n_accepted[b] + res.n_rejected[b])
            if not res.ok[b]:
                out.append((None, None, status, steps))
                continue
            m = int(res.n_saved[b])
            eig = {"p": res.p[b, :m], "off2": res.off2[b, :m], "Q": res.Q[b]}
            out.append((res.member(b), eig, status, steps))
        return out
    out = []
    for s, L, init in zip(settings, built["Lambda"], inits, strict=True):
        try:
            f = gradient_flow(L, s["N"], init, method=DirectMethod(rtol=s["rtol"]), options=opts)
            out.append((f, None, f.stop_reason, int(f.stats["num_steps"])))
        except FlowError as exc:
            out.append((None, None, f"failed: {str(exc).split(' [')[0]}", -1))
    return out


_MEASURE_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError)


def run_chunk(
    config: Mapping[str, Any], settings: list[dict[str, Any]], device: str | None = None
) -> pd.DataFrame:
    """Solve and measure one chunk of settings; returns its rows (sorted by setting id).

    Top-level and picklable: this is the task a Dask worker runs. `config` is
    `ScanConfig.to_json()`.
    """
    import jax

    from lsa.batch import select_device

    # Only the measures matter here (the settings arrive resolved and validated).
    cfg = ScanConfig(
        name=config["name"],
        measures=tuple(config["measures"]),
        seed=config["seed"],
        chunk_size=config["chunk_size"],
    )
    with jax.default_device(select_device(device)):
        built = _build(settings)
        if cfg.needs_flow:
            # one solve per distinct flow (e.g. settings that differ only in M or c)
            keys = [tuple(s[k] for k in FLOW_KEYS) for s in settings]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            uniq = sorted(first.values())
            sub = {k: [built[k][i] for i in uniq] for k in ("Lambda", "U0")}
            sub["u0"] = built["u0"][uniq]
            solved = _solve_flows([settings[i] for i in uniq], sub, pad_to=cfg.chunk_size)
            by_key = {keys[i]: r for i, r in zip(uniq, solved, strict=True)}
            flows = [by_key[k] for k in keys]
        else:
            flows = [(None, None, "", 0)] * len(settings)
        rows = []
        for i, s in enumerate(settings):
            flow, eig, status, steps = flows[i]
            ctx = SettingContext(
                s, built["Lambda"][i], float(built["sigma"][i]), built["key_mc"][i], flow, eig
            )
            row: dict[str, Any] = dict(s)
            row["sigma"] = float(built["sigma"][i])
            row["sigma_max"] = float(built["sigma_max"][i])
            row["sigma_fraction"] = row["sigma"] / row["sigma_max"]
            errors = []
            for name in cfg.measures:
                m = MEASURES[name]
                if m.needs_flow and flow is None:
                    row.update(dict.fromkeys(m.columns, math.nan))
                    continue
                try:
                    val = m.fn(ctx)
                except _MEASURE_ERRORS as exc:
                    errors.append(f"{name}: {exc}")
                    val = dict.fromkeys(m.columns, math.nan)
                if isinstance(val, Mapping):
                    row.update({c: float(val[c]) for c in m.columns})
                else:
                    row[m.columns[0]] = float(val)
            if cfg.needs_flow:
                row["status"] = status
                row["n_steps"] = steps
                row["t_final"] = float(flow.t_final) if flow is not None else math.nan
            row["error"] = "; ".join(errors)
            rows.append(row)
    df = pd.DataFrame(rows)
    return df[cfg.columns].sort_values("setting_id").reset_index(drop=True)


# ----------------------------------------------------------------------------------------
# Run directory
# ----------------------------------------------------------------------------------------

_CHUNK_RE = re.compile(r"chunk-(\d{5,})\.parquet")


def _check_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove it is writable (before anything runs)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lsa-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ScanError(f"output folder {str(folder)!r} is not writable: {exc.strerror}.") from None
    return folder


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


class RunDir:
    """The on-disk state of one scan (see the module docstring for the layout)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.chunks = self.root / "chunks"

    @property
    def done(self) -> bool:
        return (self.root / "DONE").is_file() and (self.root / "results.parquet").is_file()

    def create(self, cfg: ScanConfig, plan: list[list[int]]) -> None:
        """Create the folder (config first, then plan) or check an existing one matches."""
        cfg_json = cfg.to_json()
        if (self.root / "config.json").is_file():
            old = json.loads((self.root / "config.json").read_text())
            if {k: old.get(k) for k in cfg.normalized()} != cfg.normalized():
                raise ScanError(
                    f"run directory {str(self.root)!r} holds a different configuration "
                    "(hash collision or edited files); remove it or rename the scan."
                )
            old_plan = json.loads((self.root / "plan.json").read_text())["chunks"]
            if old_plan != plan:
                raise ScanError(f"run directory {str(self.root)!r} holds a different chunk plan.")
            return
        self.chunks.mkdir(parents=True, exist_ok=True)
        from ..provenance import write_json

        write_json(self.root / "plan.json", {"chunks": plan})
        write_json(self.root / "config.json", cfg_json)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock (released by the OS even on SIGKILL)."""
        fh = open(self.root / ".lock", "w")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ScanError(
                    f"another process is running this scan ({self.root}); wait for it to finish."
                ) from None
            yield
        finally:
            fh.close()

    def clean_temporaries(self) -> None:
        for p in list(self.chunks.glob(".*.tmp-*")) + list(self.root.glob(".*.tmp-*")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def finished_chunks(self) -> dict[int, Path]:
        out = {}
        for p in self.chunks.glob("chunk-*.parquet"):
            m = _CHUNK_RE.fullmatch(p.name)
            if m:
                out[int(m.group(1))] = p
        return out

    def write_chunk(self, index: int, df: pd.DataFrame) -> None:
        path = self.chunks / f"chunk-{index:05d}.parquet"
        _atomic_write(path, lambda p: df.to_parquet(p, index=False))

    def consolidate(self, expected_ids: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
        parts = [pd.read_parquet(p) for _, p in sorted(self.finished_chunks().items())]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        df = df.sort_values("setting_id").reset_index(drop=True)
        ids = df["setting_id"].to_numpy()
        if len(ids) != len(set(ids.tolist())) or sorted(ids.tolist()) != sorted(expected_ids):
            raise ScanError(
                f"run directory {self.root} is inconsistent (duplicated or missing settings); "
                "remove its chunks folder and rerun."
            )
        _atomic_write(self.root / "results.parquet", lambda p: df.to_parquet(p, index=False))
        _atomic_write(self.root / "results.csv", lambda p: df.to_csv(p, index=False))
        return df

    def mark_done(self) -> None:
        _atomic_write(self.root / "DONE", lambda p: _write_text(p, time.strftime("%FT%T%z\n")))


# ----------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------

EXECUTORS = ("local", "dask")


def _local_map(
    config: dict[str, Any],
    tasks: list[tuple[int, list[dict[str, Any]]]],
    device: str | None,
    threads: int,
) -> Iterator[tuple[int, pd.DataFrame, float]]:
    """Chunks in this process; with `threads > 1` several chunks run at once (XLA releases
    the GIL while it integrates), results are yielded as they finish."""
    if threads <= 1:
        for index, chunk in tasks:
            df, wall = _timed_chunk(config, chunk, device)
            yield index, df, wall
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    queue = list(tasks)
    if queue:  # the first chunk alone: it compiles the solve that the others then share
        index, chunk = queue.pop(0)
        df, wall = _timed_chunk(config, chunk, device)
        yield index, df, wall
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: dict[Any, int] = {}
        while queue or pending:
            while queue and len(pending) < threads:
                index, chunk = queue.pop(0)
                pending[pool.submit(_timed_chunk, config, chunk, device)] = index
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                index = pending.pop(fut)
                df, wall = fut.result()
                yield index, df, wall


def _timed_chunk(
    config: dict[str, Any], chunk: list[dict[str, Any]], device: str | None
) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    df = run_chunk(config, chunk, device)
    return df, time.perf_counter() - t0


def _dask_map(
    config: dict[str, Any],
    tasks: list[tuple[int, list[dict[str, Any]]]],
    device: str | None,
    address: str | None,
    n_workers: int,
) -> Iterator[tuple[int, pd.DataFrame, float]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ScanError('the Dask executor needs `pip install "lsa-flow[distributed]"`.') from None
    cluster = None
    if address is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        # task keys carry the configuration's hash: a shared scheduler never confuses two scans
        tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        futures = {
            client.submit(_timed_chunk, config, chunk, device, pure=False,
                          key=f"lsa-scan-{tag}-chunk-{i:05d}"): i
            for i, chunk in tasks
        }  # fmt: skip
        for fut in as_completed(futures):
            df, wall = fut.result()
            yield futures[fut], df, wall
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """A finished scan: the table, its run directory (or `None`), and whether it was read
    back from a finished run (`cached`)."""

    table: pd.DataFrame
    run_dir: Path | None
    cached: bool
    seconds: float


def run_scan(
    cfg: ScanConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    executor: str = "local",
    address: str | None = None,
    n_workers: int = 2,
    device: str | None = None,
    progress: bool = False,
) -> ScanResult:
    """Run (or resume, or read back) a scan. `out=None` keeps everything in memory.

    - `executor`: `"local"` (chunks one after another in this process) or `"dask"` (chunks as
      Dask tasks; `address` of a running scheduler, or `None` for a `LocalCluster` of
      `n_workers` single-threaded worker processes);
    - `device`: `"cpu"`, `"gpu"` or `"auto"` (default: `LSA_FLOW_DEVICE`, else auto);
    - `progress`: a progress bar over settings (done, total, time left).
    """
    t_start = time.perf_counter()
    if executor not in EXECUTORS:
        raise ScanError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    if address is not None and executor != "dask":
        raise ScanError("conflicting options: `address` is only used with executor='dask'.")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ScanError(f"n_workers must be an integer >= 1; got {n_workers!r}.")
    from lsa.batch import select_device

    select_device(device)  # validates the device name (and GPU presence) up front

    run: RunDir | None = None
    if out is not None:
        run = RunDir(_check_writable(Path(out)) / cfg.run_name)
        if run.done:
            df = pd.read_parquet(run.root / "results.parquet")
            return ScanResult(df, run.root, True, time.perf_counter() - t_start)
    settings = cfg.settings()
    by_id = {s["setting_id"]: s for s in settings}
    plan = plan_chunks(cfg, settings)
    config = cfg.to_json()

    with contextlib.ExitStack() as stack:
        done: dict[int, Path] = {}
        timings: dict[str, Any] = {}
        if run is not None:
            run.root.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run.lock())
            run.create(cfg, plan)
            run.clean_temporaries()
            done = run.finished_chunks()
            tfile = run.root / "timings.json"
            if tfile.is_file():
                timings = json.loads(tfile.read_text())
            _write_provenance(run, device, executor)
        tasks = [(i, [by_id[j] for j in ids]) for i, ids in enumerate(plan) if i not in done]
        n_done = sum(len(plan[i]) for i in done if i < len(plan))
        results: dict[int, pd.DataFrame] = {}
        bar = _progress(len(settings), n_done, progress, cfg.name)
        chunk_times = timings.setdefault("chunks", {})
        try:
            if executor == "local":
                stream = _local_map(config, tasks, device, n_workers)
            else:
                stream = _dask_map(config, tasks, device, address, n_workers)
            for index, df, wall in stream:
                if run is not None:
                    run.write_chunk(index, df)
                    chunk_times[str(index)] = {"settings": len(df), "seconds": round(wall, 4)}
                    _write_timings(run, timings)
                else:
                    results[index] = df
                bar.update(len(df))
        finally:
            bar.close()
        if run is None:
            parts = [results[i] for i in sorted(results)]
            df = pd.concat(parts, ignore_index=True).sort_values("setting_id")
            return ScanResult(df.reset_index(drop=True), None, False, time.perf_counter() - t_start)
        df = run.consolidate(list(by_id), cfg.columns)
        timings["total_seconds_last_run"] = round(time.perf_counter() - t_start, 4)
        _write_timings(run, timings)
        run.mark_done()
    return ScanResult(df, run.root, False, time.perf_counter() - t_start)


def _write_provenance(run: RunDir, device: str | None, executor: str) -> None:
    from lsa.batch import select_device

    from ..provenance import provenance, write_json

    p = provenance()
    p["scan"] = {
        "executor": executor,
        "device_requested": device or os.environ.get("LSA_FLOW_DEVICE", "auto"),
        "device_used": str(select_device(device)),
    }
    path = run.root / "provenance.json"
    if path.is_file():  # keep the history of resumed runs
        old = json.loads(path.read_text())
        p["previous_runs"] = [*old.pop("previous_runs", []), old]
    write_json(path, p)


def _write_timings(run: RunDir, timings: dict[str, Any]) -> None:
    from ..provenance import write_json

    write_json(run.root / "timings.json", timings)


def _progress(total: int, initial: int, enabled: bool, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc=f"scan {name}", unit="setting",
        smoothing=0.0,
    )  # fmt: skip


def scan(
    grid: Mapping[str, Any] | ScanConfig | str | os.PathLike[str] | None = None,
    measure: str | Sequence[str] = ("final_loss",),
    *,
    zip: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    name: str = "scan",
    seed: int = 0,
    chunk_size: int = 1024,
    out: str | os.PathLike[str] | None = None,
    executor: str = "local",
    address: str | None = None,
    n_workers: int = 2,
    device: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run a parameter scan and return one row per setting (a pandas DataFrame).

    **Arguments:**

    - `grid`: parameter -> list of values (cartesian product; a value may also be
      `{"geomspace": [start, stop, num]}`, `{"linspace": ...}` or `{"range": ...}`), or a
      `ScanConfig`, or the path of a TOML configuration (then the other configuration
      arguments must be left at their defaults).
    - `measure`: measurement name(s) from `MEASURES` (see `lsa scan --list`).
    - `zip`: parameter -> list, zipped (equal lengths), or a list of such groups; combined with
      `grid` by product.
    - `params`: fixed parameter values; defaults in `PARAMETERS` for the rest.
    - `name`, `seed`, `chunk_size`: as in the TOML `[scan]` table.
    - `out`: a folder for the run directory (resumable; see the module docstring); `None`
      keeps everything in memory.
    - `executor`, `address`, `n_workers`, `device`, `progress`: see `run_scan`.

    Every input is validated before anything runs (unknown names, empty grids, conflicting
    options, an unwritable `out`): errors are `ScanError` (a `ValueError`).
    """
    if isinstance(grid, ScanConfig):
        cfg = grid
    elif isinstance(grid, str | os.PathLike):
        cfg = load_config(grid)
    else:
        cfg = ScanConfig.build(
            name=name,
            measures=measure,
            seed=seed,
            chunk_size=chunk_size,
            params=params,
            grid=grid,
            zips=zip,
        )
    return run_scan(
        cfg, out, executor=executor, address=address, n_workers=n_workers, device=device,
        progress=progress,
    ).table  # fmt: skip
