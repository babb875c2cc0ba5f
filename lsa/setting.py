"""One training setting: the single, validated, immutable description of a run.

Every entry point of lsa-flow builds its problem from a `Setting`: the Python API, `lsa train`,
every row of `lsa scan`, and the check suites of `lsa reproduce` and `lsa shift`. So the same
values give the same `Lambda`, `Theta` and Monte Carlo keys everywhere, bit for bit.

**The seed rule.** `key = jax.random.PRNGKey(seed)` and
`k_Lambda, k_Theta, k_mc = jax.random.split(key, 3)`:

- `k_Lambda` draws the Haar rotation of Lambda's eigenbasis (`lsa.random_orthogonal`);
- `k_Theta` draws Theta of Assumption 3.3 (`lsa.random_theta`, `||Theta Theta^T||_F = 1`);
- `k_mc` is the root of every Monte Carlo draw of the setting; a suite derives one key per
  check from it with `jax.random.fold_in(k_mc, tag)` (`Setting.mc_key(tag)`).

Settings that share a seed share these draws (common random numbers: smooth curves along a
scan); put `seed` in a scan's grid for replicates.

**Lambda.** Either an explicit spectrum `eigenvalues`, or `d` values with condition number
`kappa` and profile `spectrum` (`geometric`: `kappa^(k/(d-1))`; `linear`; `isotropic`), rescaled
to trace `trace` (default `d`; explicit eigenvalues are rescaled only when `trace` is given).
With `rotate` (default) Lambda is `Q diag(eigenvalues) Q^T` with the Haar `Q` above, so it is
anisotropic and non-diagonal (theory.md §14: diagonal instances hide errors).

**sigma.** Exactly one of `sigma` (absolute) or `sigma_fraction` (of
`sigma_max = sqrt(2 / (sqrt(d) ||Gamma||_op))`, ZFB Theorem 4.1); neither means
`sigma_fraction = 0.5`. `sigma >= sigma_max` is allowed with a `TheoremCoverageWarning`.

**Solver options** (`method`, `rtol`, `eps`, `margin`, `max_steps`, `n_save`, `t_end`) are part
of the setting, because they change the numbers; `rtol=None` means the solver's default
(`lsa.flow.EigenMethod().rtol`).

Unknown keys, wrong types and out-of-range values raise `SettingError` (a `ValueError`) that
names the parameter and the allowed range. Names that changed are refused with the new name
(`RENAMED`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import annotated_types
import jax
import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from ._validate import warn_sigma
from .precision import require_x64
from .prompts import Init, paper_init, random_orthogonal, random_theta

__all__ = ["RENAMED", "Problem", "Setting", "SettingError", "SettingKeys", "field_rule"]

#: Names that were used before the one setting model, with the name that replaced them.
RENAMED: dict[str, str] = {"spread": "kappa", "sigma_frac": "sigma_fraction"}

SPECTRA = ("geometric", "linear", "isotropic")
METHODS = ("eigen", "direct")


class SettingError(ValueError):
    """An invalid setting: unknown key, wrong type or out-of-range value (raised before any
    computation)."""


def _plain(value: Any) -> Any:
    """numpy scalars and arrays to Python values; lists to tuples (TOML and JSON give lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | list):
        return tuple(_plain(v) for v in np.asarray(value).tolist())
    return value


_Eigenvalues = Annotated[
    tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...] | None,
    BeforeValidator(_plain),
]


class SettingKeys(NamedTuple):
    """The three keys of the seed rule: `split(PRNGKey(seed), 3)`."""

    Lambda: jax.Array
    Theta: jax.Array
    mc: jax.Array


class Problem(NamedTuple):
    """What a setting builds (`Setting.build()`): Lambda, the start of Assumption 3.3 (`init`,
    with `init.U = sigma Theta Theta^T`), sigma, sigma_max, the eigenvalues and the keys."""

    Lambda: np.ndarray
    init: Init
    sigma: float
    sigma_max: float
    eigenvalues: np.ndarray
    keys: SettingKeys


class Setting(BaseModel):
    """One training setting (see the module docstring for the seed rule and every default).

    Build with keywords, `Setting.from_dict(mapping)` or `Setting.from_toml(path)`; it is
    immutable (`setting.replace(N=40)` makes a changed copy) and hashable.

    **Arguments:** `d`, `N` (training prompt length), `kappa`, `spectrum`, `eigenvalues`,
    `trace`, `rotate`, `sigma` / `sigma_fraction`, `seed`, and the solver options `method`,
    `rtol`, `eps`, `margin`, `max_steps`, `n_save`, `t_end`.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", validate_default=True)

    d: int = Field(5, ge=1, description="input dimension")
    N: int = Field(20, ge=1, description="training prompt length")
    kappa: float = Field(10.0, ge=1.0, allow_inf_nan=False, description="condition number")
    spectrum: Literal["geometric", "linear", "isotropic"] = Field(
        "geometric", description="eigenvalue profile of Lambda"
    )
    eigenvalues: _Eigenvalues = Field(None, description="explicit spectrum of Lambda (d values)")
    trace: float | None = Field(None, gt=0, allow_inf_nan=False, description="tr Lambda")
    rotate: bool = Field(True, description="Haar-rotate Lambda's eigenbasis")
    sigma: float | None = Field(None, gt=0, allow_inf_nan=False, description="initial scale")
    sigma_fraction: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="sigma as a fraction of sigma_max"
    )
    seed: int = Field(0, ge=0, description="seed of Lambda, Theta and the Monte Carlo keys")
    method: Literal["eigen", "direct"] = Field("eigen", description="reduced-flow method")
    rtol: float | None = Field(None, gt=0, lt=1, description="solver relative tolerance")
    eps: float = Field(1e-10, gt=0, lt=1, description="stopping rule: relative distance")
    margin: float = Field(20.0, gt=0, allow_inf_nan=False, description="horizon margin")
    max_steps: int = Field(200_000, ge=1, description="solver step budget")
    n_save: int = Field(400, ge=10, description="saved points per trajectory")
    t_end: float | None = Field(None, gt=0, allow_inf_nan=False, description="fixed end time")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SettingError(_explain(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _names_and_plain_values(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED.items():
            if old in data:
                raise SettingError(f"setting key `{old}` was renamed to `{new}`; use `{new}`.")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise SettingError(
                f"unknown setting key(s) {', '.join(map(repr, unknown))}; valid keys: "
                f"{', '.join(cls.model_fields)}."
            )
        return {k: (v if k == "eigenvalues" else _plain(v)) for k, v in data.items()}

    @model_validator(mode="after")
    def _consistent(self) -> Setting:
        if self.sigma is not None and self.sigma_fraction is not None:
            raise ValueError("give only one of `sigma` and `sigma_fraction`.")
        if self.eigenvalues is not None and len(self.eigenvalues) != self.d:
            raise ValueError(
                f"`eigenvalues` must have d = {self.d} entries; got {len(self.eigenvalues)}."
            )
        if self.spectrum == "isotropic" and self.kappa != 1.0 and self.eigenvalues is None:
            raise ValueError(f"spectrum 'isotropic' needs kappa = 1; got kappa = {self.kappa}.")
        return self

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Setting:
        """A setting from a mapping (TOML, JSON or a scan row); unknown keys are refused."""
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | Path, section: str | None = None) -> Setting:
        """A setting from a TOML file: keys at the top level, or in one section (`[setting]`,
        or `[train]` as written by earlier versions)."""
        return cls.from_dict(load_toml(path, section))

    def replace(self, **changes: Any) -> Setting:
        """A validated copy with some values changed."""
        return Setting(**{**self.model_dump(), **changes})

    # -- derived values ----------------------------------------------------------------------

    @property
    def resolved_sigma_fraction(self) -> float | None:
        """`sigma_fraction`, or 0.5 when neither sigma nor sigma_fraction was given."""
        if self.sigma is None and self.sigma_fraction is None:
            return 0.5
        return self.sigma_fraction

    def spectrum_values(self) -> np.ndarray:
        """Lambda's eigenvalues (ascending for the named profiles), float64."""
        if self.eigenvalues is not None:
            lam = np.asarray(self.eigenvalues, dtype=np.float64)
            return lam if self.trace is None else lam * (self.trace / lam.sum())
        k = np.arange(self.d) / max(self.d - 1, 1)
        if self.spectrum == "geometric":
            lam = self.kappa**k
        elif self.spectrum == "linear":
            lam = 1.0 + (self.kappa - 1.0) * k
        else:
            lam = np.ones(self.d)
        trace = float(self.d) if self.trace is None else self.trace
        return lam * (trace / lam.sum())

    def sigma_max(self) -> float:
        """`sqrt(2 / (sqrt(d) ||Gamma||_op))` [ZFB Theorem 4.1], from the eigenvalues."""
        lam = self.spectrum_values()
        g_max = (1.0 + 1.0 / self.N) * lam.max() + lam.sum() / self.N
        return math.sqrt(2.0 / (math.sqrt(self.d) * g_max))

    def sigma_value(self) -> float:
        """The initial scale sigma (absolute)."""
        if self.sigma is not None:
            return self.sigma
        frac = self.resolved_sigma_fraction
        assert frac is not None
        return frac * self.sigma_max()

    def keys(self) -> SettingKeys:
        """`split(PRNGKey(seed), 3)`: the keys of Lambda's rotation, Theta and Monte Carlo."""
        return _keys(self.seed)

    def mc_key(self, tag: int) -> jax.Array:
        """The Monte Carlo key number `tag` of this setting: `fold_in(k_mc, tag)`."""
        return jax.random.fold_in(self.keys().mc, tag)

    def Lambda(self) -> np.ndarray:
        """The covariance Lambda (float64, symmetric)."""
        lam = self.spectrum_values()
        if not self.rotate:
            return np.diag(lam)
        Q = _rotation(self.seed, self.d)
        L = (Q * lam[None, :]) @ Q.T
        return 0.5 * (L + L.T)

    def Theta(self) -> np.ndarray:
        """Theta of Assumption 3.3, drawn from `k_Theta`."""
        return _theta(self.seed, self.d)

    def init(self) -> Init:
        """The start of Assumption 3.3 (`lsa.paper_init`)."""
        return self.build().init

    def build(self) -> Problem:
        """Lambda, the start of Assumption 3.3 (through `lsa.paper_init`), sigma and the keys.

        `init` equals `lsa.paper_init(Lambda, N, sigma=sigma, Theta=Theta)` bit for bit: the
        normalised direction `Theta Theta^T / ||Theta Theta^T||_F` is computed once per
        `(seed, d)` by `paper_init` itself and then scaled by sigma (one exact multiplication),
        so that a scan of 10^4 settings does not pay 10^4 dispatches of `paper_init`. Its leaves
        are numpy float64 arrays.
        """
        Lambda = self.Lambda()
        sigma = self.sigma_value()
        sigma_max = self.sigma_max()
        warn_sigma(sigma, sigma_max)  # as paper_init: allowed, but not covered by Theorem 4.1
        # numpy float64 leaves (the solvers take any array): no device dispatch per setting
        u0: Any = np.asarray(sigma, np.float64)
        U0: Any = sigma * _direction(self.seed, self.d)
        init = Init(u=u0, U=U0)
        return Problem(
            Lambda=Lambda,
            init=init,
            sigma=sigma,
            sigma_max=sigma_max,
            eigenvalues=self.spectrum_values(),
            keys=self.keys(),
        )

    def method_and_options(self) -> tuple[Any, Any]:
        """The `(method, options)` of `lsa.flow.gradient_flow` for this setting."""
        from .flow import DirectMethod, EigenMethod, FlowOptions

        if self.method == "eigen":
            method: Any = EigenMethod() if self.rtol is None else EigenMethod(rtol=self.rtol)
        else:
            method = DirectMethod() if self.rtol is None else DirectMethod(rtol=self.rtol)
        options = FlowOptions(
            eps=self.eps,
            margin=self.margin,
            max_steps=self.max_steps,
            n_save=self.n_save,
            t_end=self.t_end,
        )
        return method, options

    def digest(self) -> str:
        """A 12-hex-digit hash of every value (names run directories)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=64)
def _keys(seed: int) -> SettingKeys:
    k_Lambda, k_Theta, k_mc = jax.random.split(jax.random.PRNGKey(seed), 3)
    return SettingKeys(Lambda=k_Lambda, Theta=k_Theta, mc=k_mc)


# The draws run on the CPU whatever the default device, so that Lambda and Theta are the same
# bits on every machine and inside any `jax.default_device(...)` block (a GPU's QR or matmul
# may round differently), and they need float64 (a float32 draw is a different Lambda).


def _host() -> Any:
    return jax.default_device(jax.devices("cpu")[0])


@functools.lru_cache(maxsize=512)
def _draw(seed: int, d: int, what: Literal["Lambda", "Theta"]) -> np.ndarray:
    """The Haar rotation of Lambda (`k_Lambda`) or Theta (`k_Theta`) of a seed, read-only."""
    require_x64(f"lsa.Setting (drawing {what})")
    keys = _keys(seed)
    with _host():
        if what == "Lambda":
            out = np.asarray(random_orthogonal(keys.Lambda, d), dtype=np.float64)
        else:
            out = np.asarray(random_theta(keys.Theta, d), dtype=np.float64)
    out.setflags(write=False)
    return out


def _rotation(seed: int, d: int) -> np.ndarray:
    return _draw(seed, d, "Lambda")


def _theta(seed: int, d: int) -> np.ndarray:
    return _draw(seed, d, "Theta")


@functools.lru_cache(maxsize=256)
def _direction(seed: int, d: int) -> np.ndarray:
    """`Theta Theta^T / ||Theta Theta^T||_F` exactly as `lsa.paper_init` computes it: its `U`
    at sigma = 1 (`1.0 * x` is exact). The covariance passed is only validated, and is small
    so that sigma = 1 stays below sigma_max (no warning)."""
    with _host():
        init = paper_init(1e-12 * np.eye(d), 1, sigma=1.0, Theta=_theta(seed, d))
        TT = np.asarray(init.U, dtype=np.float64)
    TT.setflags(write=False)
    return TT


def field_rule(field: FieldInfo) -> str:
    """The allowed values of a model field in words, e.g. `an integer >= 1`,
    `a number in (0, 1), or unset`, `one of 'eigen', 'direct'` (used in error messages and
    in `lsa scan --list`)."""
    ann = field.annotation
    optional = False
    args = typing.get_args(ann)
    if type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        ann = rest[0] if len(rest) == 1 else ann
    origin = typing.get_origin(ann)
    if origin is Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    elif ann is bool:
        text = "true or false"
    elif origin is tuple:
        text = "a list of numbers > 0"
    else:
        kinds: dict[Any, str] = {int: "an integer", float: "a number", str: "a string"}
        kind = kinds.get(ann, str(ann))
        lo = hi = None
        for m in field.metadata:
            if isinstance(m, annotated_types.Ge):
                lo = f"[{m.ge:g}"
            elif isinstance(m, annotated_types.Gt):
                lo = f"({m.gt:g}"
            elif isinstance(m, annotated_types.Le):
                hi = f"{m.le:g}]"
            elif isinstance(m, annotated_types.Lt):
                hi = f"{m.lt:g})"
        if lo and hi:
            text = f"{kind} in {lo}, {hi}"
        elif lo:
            text = f"{kind} {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        elif hi:
            text = f"{kind} {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        else:
            text = kind
    return f"{text}, or unset" if optional else text


def _explain(exc: ValidationError) -> str:
    """One line per invalid value: the parameter, the rule it breaks and the value given."""
    lines = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule between several values: the message names them
            lines.append(msg)
            continue
        loc = ".".join(str(p) for p in err["loc"])
        field = Setting.model_fields.get(str(err["loc"][0]))
        what = f" ({field.description}: {field_rule(field)})" if field is not None else ""
        given = f"; got {err['input']!r}" if "input" in err and err["type"] != "missing" else ""
        lines.append(f"`{loc}`{what}: {msg}{given}")
    return "invalid setting: " + "; ".join(lines)


def load_toml(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """The setting keys of a TOML file: at the top level, or under `[setting]` / `[train]`
    (or the named `section`). A malformed file raises `SettingError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"setting file {str(path)!r} does not exist.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"malformed TOML in {path}: {exc}") from None
    sections = [section] if section else ["setting", "train"]
    found = [s for s in sections if s in data and isinstance(data[s], dict)]
    if found:
        extra = sorted(set(data) - {found[0]})
        if extra:
            raise SettingError(
                f"unknown section(s) or key(s) {extra} in {path}; put every setting key in "
                f"[{found[0]}]."
            )
        return dict(data[found[0]])
    return dict(data)
