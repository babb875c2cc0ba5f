"""Provenance of saved results: package versions, device, time, git revision.

Every file lsa-flow writes carries this, so a result can be traced to the code and machine
that made it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = (
    "lsa-flow",
    "jax",
    "jaxlib",
    "diffrax",
    "equinox",
    "lineax",
    "optimistix",
    "numpy",
    "scipy",
    "matplotlib",
    "pandas",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info() -> dict[str, str]:
    import jax

    devs = jax.devices()
    return {
        "backend": jax.default_backend(),
        "devices": ", ".join(str(d) for d in devs),
        "x64": str(jax.config.read("jax_enable_x64")),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        rev = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "device": device_info(),
        "git": git_revision(),
    }


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / jax values inside nested containers to JSON-serialisable ones."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, str):
        arr = np.asarray(obj)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False))
    tmp.replace(path)
