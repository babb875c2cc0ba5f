"""A scan configuration: the grid of settings, the measures, and its TOML form.

`ScanConfig.build(...)` (or `load_config(path)`) validates everything before anything runs and
normalises it, so that equal configurations hash alike; `ScanConfig.settings()` expands the
grid into rows (one per setting, with `setting_id`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .measures import DERIVED_COLUMNS, MEASURES, SOLVER_COLUMNS, Measure, measure_registry
from .parameters import (
    PARAMETERS,
    ScanError,
    check_names,
    check_value,
    expand_values,
    resolve_row,
)

__all__ = ["ScanConfig", "config_from_dict", "example_path", "examples", "load_config"]

#: Part of every hash: 2 since the one setting model (`lsa.Setting`: its seed rule, defaults
#: and solver default rtol), so that no run directory of schema 1 is mistaken for a new one.
SCHEMA_VERSION = 2
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

_SCAN_KEYS = {"name", "seed", "chunk_size", "measures", "description"}
_SECTIONS = {"scan", "params", "grid", "zip", "plot"}
_PLOT_KEYS = {"x", "y", "hue", "facet", "kind", "logx", "logy"}

ZipGroups = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """A validated, normalised scan configuration (see `load_config` for the TOML layout).

    - `name`: run-directory prefix (letters, digits, `._-`);
    - `seed`: default seed of every setting; `chunk_size`: settings per batched solve;
    - `measures`: measurement names (`MEASURES`, or an `extra_measures` name);
    - `params`: fixed parameter values; `grid`: cartesian lists; `zips`: groups of zipped
      lists (each group's lists have equal lengths); a parameter may appear in one place only;
    - `plot`: default `lsa plot` options (not part of the hash); `description`: free text;
    - `extra_measures`: the `Measure` objects of requested names that are not built in (only
      their names are part of the hash).
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
    extra_measures: tuple[Measure, ...] = ()

    @staticmethod
    def build(
        *,
        name: str = "scan",
        measures: str | Sequence[str] = ("final_loss",),
        seed: int = 0,
        chunk_size: int = 1024,
        params: Mapping[str, Any] | None = None,
        grid: Mapping[str, Any] | None = None,
        zips: ZipGroups = None,
        plot: Mapping[str, Any] | None = None,
        description: str = "",
        extra_measures: Sequence[Measure] | Mapping[str, Measure] | None = None,
    ) -> ScanConfig:
        """Validate and normalise; raises `ScanError` with a clear message on any problem."""
        _check_head(name, seed, chunk_size)
        registry = measure_registry(extra_measures)
        names = _check_measures(measures, registry)
        params, grid, zip_groups = dict(params or {}), dict(grid or {}), _zip_groups(zips)
        _check_places(params, grid, zip_groups)
        plot = dict(plot or {})
        bad = sorted(set(plot) - _PLOT_KEYS)
        if bad:
            raise ScanError(f"unknown [plot] key(s) {bad}; valid keys: {sorted(_PLOT_KEYS)}.")
        cfg = ScanConfig(
            name=name,
            measures=names,
            seed=seed,
            chunk_size=chunk_size,
            params={k: check_value(k, v) for k, v in sorted(params.items())},
            grid={k: expand_values(k, v) for k, v in sorted(grid.items())},
            zips=_normalise_zips(zip_groups),
            plot=plot,
            description=str(description),
            extra_measures=tuple(registry[m] for m in names if m not in MEASURES),
        )
        cfg.settings()  # validates every setting (conflicts, ranges) before anything runs
        return cfg

    # -- identity ----------------------------------------------------------------------------

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

    # -- measures and columns ----------------------------------------------------------------

    def measure_defs(self) -> dict[str, Measure]:
        """The requested measures by name (a plain dict: it travels to Dask workers)."""
        extra = {m.name: m for m in self.extra_measures}
        return {n: extra[n] if n in extra else MEASURES[n] for n in self.measures}

    @property
    def needs_flow(self) -> bool:
        return any(m.needs_flow for m in self.measure_defs().values())

    @property
    def columns(self) -> list[str]:
        cols = ["setting_id", *PARAMETERS, *DERIVED_COLUMNS]
        for m in self.measure_defs().values():
            cols += list(m.columns)
        if self.needs_flow:
            cols += list(SOLVER_COLUMNS)
        return [*cols, "error"]

    # -- the grid ----------------------------------------------------------------------------

    def settings(self) -> list[dict[str, Any]]:
        """All settings, fully resolved and validated as `lsa.Setting`s, in canonical order
        (their index is `setting_id`)."""
        axes: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in self.grid.items()]
        for g in self.zips:
            keys = list(g)
            axes.append(
                [dict(zip(keys, row, strict=True)) for row in zip(*g.values(), strict=True)]
            )
        defaults = {k: p.default for k, p in PARAMETERS.items()}
        defaults["seed"] = self.seed
        out = []
        for i, combo in enumerate(itertools.product(*axes)):
            s: dict[str, Any] = {"setting_id": i, **defaults, **self.params}
            for part in combo:
                s.update(part)
            resolve_row(s)
            out.append(s)
        if not out:
            raise ScanError("the grid is empty: it has no settings to run.")
        return out


def _check_head(name: Any, seed: Any, chunk_size: Any) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ScanError(f"scan name {name!r} must be letters, digits, '.', '_' or '-'.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScanError(f"scan seed must be an integer >= 0; got {seed!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ScanError(f"chunk_size must be an integer >= 1; got {chunk_size!r}.")


def _check_measures(measures: str | Sequence[str], registry: Mapping[str, Any]) -> tuple[str, ...]:
    names = (measures,) if isinstance(measures, str) else tuple(measures)
    if not names:
        raise ScanError(f"no measures requested; choose from: {', '.join(registry)}.")
    unknown = [m for m in names if m not in registry]
    if unknown:
        raise ScanError(
            f"unknown measure(s) {', '.join(map(repr, unknown))}; valid measures are: "
            f"{', '.join(registry)}."
        )
    if len(set(names)) != len(names):
        raise ScanError(f"measures repeat a name: {list(names)}.")
    return names


def _zip_groups(zips: ZipGroups) -> list[Mapping[str, Any]]:
    if zips is None:
        return []
    if isinstance(zips, Mapping):
        return [zips] if zips else []
    groups = list(zips)
    for g in groups:
        if not isinstance(g, Mapping):
            raise ScanError("each [zip] group must be a table of lists.")
    return groups


def _check_places(
    params: Mapping[str, Any], grid: Mapping[str, Any], zip_groups: list[Mapping[str, Any]]
) -> None:
    """Known names, each given in one place only, and not both sigma and sigma_fraction."""
    check_names(params, "[params]")
    check_names(grid, "[grid]")
    for g in zip_groups:
        check_names(g, "[zip]")
    seen: dict[str, str] = {}
    places = [("params", params), ("grid", grid)]
    places += [(f"zip group {i}", g) for i, g in enumerate(zip_groups)]
    for where, names in places:
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


def _normalise_zips(zip_groups: list[Mapping[str, Any]]) -> tuple[dict[str, list[Any]], ...]:
    out = []
    for g in zip_groups:
        if not g:
            raise ScanError("a [zip] group is empty: an empty grid has no settings to run.")
        cols = {k: expand_values(k, v) for k, v in sorted(g.items())}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) != 1:
            raise ScanError(f"zipped lists must have equal lengths; got {lengths}.")
        out.append(cols)
    out.sort(key=lambda g: tuple(g))
    return tuple(out)


def load_config(
    path: str | os.PathLike[str],
    extra_measures: Sequence[Measure] | Mapping[str, Measure] | None = None,
) -> ScanConfig:
    """Read a scan configuration from TOML (`extra_measures`: as in `ScanConfig.build`):

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
    return config_from_dict(data, source=str(path), extra_measures=extra_measures)


def config_from_dict(
    data: Mapping[str, Any],
    source: str = "configuration",
    extra_measures: Sequence[Measure] | Mapping[str, Measure] | None = None,
) -> ScanConfig:
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
            extra_measures=extra_measures,
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
