"""The parameters of a scan row: one name, one type, one range each, taken from the models.

A scan row is one **training setting** (`lsa.Setting`: d, N, kappa, spectrum, trace, rotate,
sigma / sigma_fraction, seed and the solver options) plus the scan-only **measurement**
parameters (`Measurement`: M, c, n_mc, conv_tol), which change what is measured but never the
flow. Both are pydantic models, so a value is validated here exactly as `lsa train` and the
Python API validate it; `PARAMETERS` is derived from them (it is what `lsa scan --list` and the
docs show), not a second table.

`eigenvalues` and `t_end` are `lsa.Setting` fields that scans do not take: a scan describes
Lambda by `kappa`, `spectrum` and `trace`, and ends every flow by the stopping rule.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from lsa.setting import RENAMED, Setting, SettingError, field_rule

__all__ = [
    "FLOW_KEYS",
    "PARAMETERS",
    "SOLVER_KEYS",
    "Measurement",
    "Parameter",
    "ScanError",
    "check_names",
    "check_value",
    "expand_values",
    "resolve_row",
    "setting_of",
]


class ScanError(ValueError):
    """A scan configuration or run directory is invalid; raised before anything runs."""


class Measurement(BaseModel):
    """The scan-only parameters: how a trained setting is measured (never how it is trained)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", validate_default=True)

    M: int | None = Field(None, ge=1, description="test prompt length (unset: N)")
    c: float = Field(1.0, gt=0, allow_inf_nan=False, description="test covariate scale: x -> c x")
    n_mc: int = Field(4096, ge=2, description="Monte Carlo prompts of risk_mc")
    conv_tol: float = Field(1e-6, gt=0, lt=1, description="t_converge threshold")


#: Setting fields a scan does not take, and why.
UNSUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "eigenvalues": "a scan describes Lambda by `kappa`, `spectrum` and `trace`; use "
        "`lsa train --eigenvalues` or `lsa.Setting(eigenvalues=...)` for an explicit spectrum",
        "t_end": "a scan ends every flow by the stopping rule (`eps`); use `lsa train --t-end` "
        "or `lsa.gradient_flow` for a fixed end time",
    }
)

SETTING_KEYS: tuple[str, ...] = tuple(k for k in Setting.model_fields if k not in UNSUPPORTED)
MEASUREMENT_KEYS: tuple[str, ...] = tuple(Measurement.model_fields)

#: Parameters that change how a flow is solved; settings are batched only when these agree.
SOLVER_KEYS = ("d", "method", "rtol", "eps", "margin", "max_steps", "n_save")
#: Parameters the trained flow depends on (the whole `lsa.Setting`): equal settings share a solve.
FLOW_KEYS = SETTING_KEYS


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One scan parameter as the models define it: `kind` (`int`, `float`, `str`, `bool`),
    `default` (`None`: unset, see `doc`), the allowed values in words (`rule`), a one-line
    description and the model it belongs to (`Setting` or `Measurement`)."""

    name: str
    kind: str
    default: Any
    rule: str
    doc: str
    model: str

    @property
    def choices(self) -> tuple[str, ...]:
        ann = _field(self.name).annotation
        return tuple(typing.get_args(ann)) if typing.get_origin(ann) is typing.Literal else ()


def _field(name: str) -> FieldInfo:
    if name in Measurement.model_fields:
        return Measurement.model_fields[name]
    return Setting.model_fields[name]


def _kind(field: FieldInfo) -> str:
    """`int`, `float`, `str` or `bool` (an optional field: its type when set)."""
    ann = field.annotation
    if isinstance(ann, types.UnionType):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is typing.Literal:
        return "str"
    return str(getattr(ann, "__name__", ann))


_UNSET_DOCS = {
    "sigma_fraction": "sigma as a fraction of sigma_max (unset with sigma unset: 0.5)",
    "trace": "tr Lambda (unset: d)",
    "rtol": "solver relative tolerance (unset: the solver's default)",
    "seed": "seed of Lambda, Theta and the Monte Carlo keys (default: the scan's seed)",
}


def _parameters() -> dict[str, Parameter]:
    out = {}
    for model, keys in (("Setting", SETTING_KEYS), ("Measurement", MEASUREMENT_KEYS)):
        for k in keys:
            f = _field(k)
            doc = _UNSET_DOCS.get(k, f.description or "")
            out[k] = Parameter(k, _kind(f), f.default, field_rule(f), doc, model)
    return out


#: Every scan parameter, derived from `lsa.Setting` and `Measurement` (read-only).
PARAMETERS: Mapping[str, Parameter] = MappingProxyType(_parameters())


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    f = _field(name)
    ann: Any = Annotated[f.annotation, *f.metadata] if f.metadata else f.annotation
    return TypeAdapter(ann, config=ConfigDict(strict=True))


def _plain(value: Any) -> Any:
    """numpy scalars to Python values (grids built with numpy)."""
    return value.item() if isinstance(value, np.generic) else value


def check_value(name: str, value: Any) -> Any:
    """One value of parameter `name`, validated by its model field (type and range) and
    normalised (`1` and `1.0` hash alike for a float parameter)."""
    value = _plain(value)
    try:
        out = _adapter(name).validate_python(value)
    except ValidationError as exc:
        p = PARAMETERS[name]
        msg = exc.errors(include_url=False)[0]["msg"]
        raise ScanError(f"parameter `{name}` ({p.doc}: {p.rule}): {msg}; got {value!r}.") from None
    return float(out) if PARAMETERS[name].kind == "float" and out is not None else out


def check_names(names: Iterable[str], where: str) -> None:
    """Refuse unknown, renamed and unsupported parameter names, naming the valid ones."""
    names = list(names)
    for old, new in RENAMED.items():
        if old in names:
            raise ScanError(f"parameter `{old}` in {where} was renamed to `{new}`; use `{new}`.")
    for name in names:
        if name in UNSUPPORTED:
            raise ScanError(f"`{name}` in {where} is not a scan parameter: {UNSUPPORTED[name]}.")
    unknown = sorted(set(names) - set(PARAMETERS))
    if unknown:
        raise ScanError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} in {where}; valid parameters "
            f"are: {', '.join(PARAMETERS)}."
        )


def expand_values(name: str, spec: Any) -> list[Any]:
    """A grid entry: a list, or `{geomspace|linspace = [start, stop, num]}`, or
    `{range = [start, stop(, step)]}` (stop exclusive). Integer parameters round and drop
    duplicates; every value is validated (`check_value`)."""
    if isinstance(spec, Mapping):
        vals = _generate(name, spec)
    elif isinstance(spec, list | tuple | np.ndarray):
        vals = list(spec)
    else:
        vals = [spec]
    if not vals:
        raise ScanError(f"grid entry `{name}` is empty: an empty grid has no settings to run.")
    out = [check_value(name, v) for v in vals]
    if len(set(map(repr, out))) != len(out):
        raise ScanError(f"grid entry `{name}` repeats a value: {out}.")
    return out


def _generate(name: str, spec: Mapping[str, Any]) -> list[Any]:
    if len(spec) != 1:
        raise ScanError(f"grid entry `{name}` must have exactly one of geomspace, linspace, range.")
    ((kind, a),) = spec.items()
    if kind not in ("geomspace", "linspace", "range") or not isinstance(a, list):
        raise ScanError(
            f"grid entry `{name}`: unknown generator {kind!r}; use geomspace = [start, stop, "
            "num], linspace = [start, stop, num] or range = [start, stop, step]."
        )
    try:
        if kind == "range":
            vals = list(np.arange(*a))
        else:
            start, stop, num = a
            if int(num) != num or num < 1:
                raise ValueError("num must be an integer >= 1")
            fn = np.geomspace if kind == "geomspace" else np.linspace
            vals = list(fn(float(start), float(stop), int(num)))
    except (TypeError, ValueError) as exc:
        raise ScanError(f"grid entry `{name}`: bad {kind} arguments {a!r} ({exc}).") from None
    if PARAMETERS[name].kind == "int":
        return list(dict.fromkeys(int(np.rint(float(v))) for v in vals))
    return [float(v) for v in vals]


def setting_of(row: Mapping[str, Any]) -> Setting:
    """The `lsa.Setting` of a scan row (its setting parameters; the rest is measurement)."""
    return Setting(**{k: row[k] for k in SETTING_KEYS})


def resolve_row(row: dict[str, Any]) -> Setting:
    """Check one row's parameters together (conflicts between values) and fill `M` (unset:
    N); returns its `lsa.Setting`. The row keeps the unresolved setting values, so that
    `setting_of(row)` rebuilds the same setting."""
    where = f"setting {row['setting_id']}"
    try:
        setting = setting_of(row)
    except SettingError as exc:
        raise ScanError(f"conflicting options in {where}: {exc}") from None
    try:
        Measurement(**{k: row[k] for k in MEASUREMENT_KEYS})
    except ValidationError as exc:  # pragma: no cover - values were checked one by one
        raise ScanError(f"{where}: {exc}") from None
    if row["M"] is None:
        row["M"] = row["N"]
    return setting
