"""Standard figures from a saved scan table: lines over one parameter, a heatmap over two, and
facets (one panel per value of a third). Everything is drawn from the table alone (Parquet or
CSV), so figures can be remade and restyled without recomputing."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.cm
import numpy as np
import pandas as pd

from .figures import STYLE, _subplots

__all__ = ["default_plot", "load_results", "plot_table"]

KINDS = ("line", "heatmap")


def load_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any] | None, Path]:
    """Read a results table: a run directory, or a `.parquet` / `.csv` file. Returns the
    table, the run's `config.json` (or `None`), and the folder for figures."""
    path = Path(path)
    if path.is_dir():
        cfg_path = path / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
        for name in ("results.parquet", "results.csv"):
            if (path / name).is_file():
                return _read(path / name), cfg, path / "figures"
        chunks = sorted((path / "chunks").glob("chunk-*.parquet"))
        if chunks:  # an unfinished run: plot what is there
            df = pd.concat([pd.read_parquet(p) for p in chunks], ignore_index=True)
            return df.sort_values("setting_id").reset_index(drop=True), cfg, path / "figures"
        raise FileNotFoundError(f"{str(path)!r} holds no results table (results.parquet).")
    if not path.is_file():
        raise FileNotFoundError(f"results {str(path)!r} do not exist.")
    cfg_path = path.parent / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    return _read(path), cfg, path.parent / "figures"


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=True)
    raise ValueError(f"results must be .parquet or .csv; got {path.name!r}.")


def default_plot(cfg: dict[str, Any] | None, df: pd.DataFrame) -> dict[str, Any]:
    """The figure a run asks for: its `[plot]` table, else lines over its one grid parameter,
    or a heatmap of the first measure over the first two (faceted by a third)."""
    if cfg is None:
        raise ValueError("no config.json next to the table: give --x and --y.")
    if cfg.get("plot"):
        return dict(cfg["plot"])
    axes = list(cfg.get("grid", {}))
    for g in cfg.get("zip", []):
        axes.append(next(iter(g)))
    measures = [c for c in _measure_columns(cfg, df) if not c.endswith("_se")]
    if not axes:
        raise ValueError("the scan has no grid parameter to plot against; give --x.")
    if len(axes) == 1:
        return {"x": axes[0], "y": measures, "kind": "line"}
    out = {"x": axes[0], "y": axes[1], "z": measures[0], "kind": "heatmap"}
    if len(axes) > 2:
        out["facet"] = axes[2]
    return out


def _measure_columns(cfg: dict[str, Any], df: pd.DataFrame) -> list[str]:
    from ..scans.measures import MEASURES

    cols: list[str] = []
    for m in cfg.get("measures", []):
        cols += [c for c in (MEASURES[m].columns if m in MEASURES else (m,)) if c in df]
    return cols


def _auto_log(values: pd.Series) -> bool:
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    return bool(v.size and np.all(v > 0) and v.max() / v.min() > 50)


def _check_columns(df: pd.DataFrame, names: Sequence[str | None]) -> None:
    missing = [n for n in names if n is not None and n not in df.columns]
    if missing:
        raise ValueError(
            f"unknown column(s) {missing}; the table has: {', '.join(map(str, df.columns))}."
        )


def plot_table(
    df: pd.DataFrame,
    *,
    x: str,
    y: str | Sequence[str],
    z: str | None = None,
    hue: str | None = None,
    facet: str | None = None,
    kind: str = "line",
    logx: bool | None = None,
    logy: bool | None = None,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw one figure to `path` (PNG/PDF/SVG by suffix) and return it.

    - `kind="line"`: each column of `y` against `x`, one line per `hue` value (error bars
      from a `<col>_se` column when present);
    - `kind="heatmap"`: the value `z` over the grid `x` (columns) by `y` (rows);
    - `facet`: one panel per value of this column.
    Log axes are chosen automatically for positive data spanning more than 50x.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}.")
    ys = [y] if isinstance(y, str) else list(y)
    if not ys:
        raise ValueError("give at least one y column.")
    if kind == "heatmap":
        if len(ys) != 1 or z is None:
            raise ValueError("a heatmap needs one --y parameter and a --z value column.")
        _check_columns(df, [x, ys[0], z, facet])
    else:
        _check_columns(df, [x, *ys, hue, facet])
    facets = [None] if facet is None else sorted(df[facet].dropna().unique())
    n = len(facets)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(
            nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False, sharex=True, sharey=True
        )
        for k, fv in enumerate(facets):
            ax = axes[k // ncol][k % ncol]
            sub = df if fv is None else df[df[facet] == fv]
            if kind == "line":
                _lines(ax, sub, x, ys, hue)
                ax.set_xscale(
                    "log" if (logx if logx is not None else _auto_log(df[x])) else "linear"
                )
                ylog = logy if logy is not None else all(_auto_log(df[c]) for c in ys)
                ax.set_yscale("log" if ylog else "linear")
                ax.set_xlabel(x)
                ax.set_ylabel(ys[0] if len(ys) == 1 else "value")
            else:
                _heatmap(fig, ax, sub, x, ys[0], z)  # type: ignore[arg-type]
            if fv is not None:
                ax.set_title(
                    f"{facet} = {fv:g}" if isinstance(fv, int | float) else f"{facet} = {fv}"
                )
        for k in range(n, nrow * ncol):
            axes[k // ncol][k % ncol].set_visible(False)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        return path


def _lines(ax: Any, df: pd.DataFrame, x: str, ys: list[str], hue: str | None) -> None:
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=True))
    markers = "os^vDP*X"
    for gi, (hv, g) in enumerate(groups):
        g = g.sort_values(x)
        for yi, col in enumerate(ys):
            label = (
                col
                if hue is None
                else (f"{hue}={hv:g}" if isinstance(hv, int | float) else f"{hue}={hv}")
            )
            if hue is not None and len(ys) > 1:
                label = f"{col}, {label}"
            se = f"{col}_se"
            kw = {"marker": markers[yi % len(markers)], "ms": 4, "lw": 1.5, "label": label}
            if hue is not None:
                kw["color"] = matplotlib.cm.viridis(gi / max(len(groups) - 1, 1))
            if se in g.columns:
                ax.errorbar(g[x], g[col], yerr=2 * g[se], capsize=2, **kw)
            else:
                ax.plot(g[x], g[col], **kw)
    if len(groups) * len(ys) > 1:
        ax.legend(fontsize=7)


def _heatmap(fig: Any, ax: Any, df: pd.DataFrame, x: str, y: str, z: str) -> None:
    table = df.pivot_table(index=y, columns=x, values=z, aggfunc="mean")
    vals = table.to_numpy(dtype=float)
    positive = np.all(vals[np.isfinite(vals)] > 0) and np.isfinite(vals).any()
    norm = None
    if positive and np.nanmax(vals) / np.nanmin(vals) > 50:
        from matplotlib.colors import LogNorm

        norm = LogNorm(vmin=np.nanmin(vals), vmax=np.nanmax(vals))
    im = ax.imshow(vals, origin="lower", aspect="auto", norm=norm, cmap="viridis")
    ax.set_xticks(range(len(table.columns)), [f"{v:.3g}" for v in table.columns], rotation=45)
    ax.set_yticks(range(len(table.index)), [f"{v:.3g}" for v in table.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(False)
    fig.colorbar(im, ax=ax, label=z)
