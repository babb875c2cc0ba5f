"""Serialized solves: a second process skips tracing the diffrax solve (opt-in).

JAX's persistent compilation cache stores compiled executables, but finding one needs the
traced program, and tracing diffrax's Kvaerno5 solve costs 2-5 s of Python per process. With
`lsa.flow.enable_exported_solves(folder)` the reduced solve is exported once with `jax.export`
(StableHLO, serialized with flatbuffers) to `folder`, and every later process deserializes it
and calls it: tracing is skipped, and the executable comes from the compilation cache. Measured
at d = 10: the first solve of a second process takes 0.5 s instead of 2.6 s (persistent cache
alone) or 7 s (no cache), with bit-identical results.

Nothing happens until `enable_exported_solves` is called (the `lsa` command does, next to the
compilation cache; `LSA_FLOW_CACHE_DIR=off` disables both). The cache key holds the package
versions, a hash of every `lsa` source file, the backend, the static options and the input
shapes and dtypes, so a changed solver never reuses an old export. A file that fails to load is
exported anew; when exporting fails (no `flatbuffers`, an unwritable folder) the ordinary path
runs, with a warning.

One safety check of `jax.export` is disabled: the QR factorisation lineax calls
(`lapack_dormqr_ffi`) has no cross-version compatibility guarantee. That is safe here because
the key pins the exact jax and jaxlib versions.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import diffrax
import jax
import jax.numpy as jnp

__all__ = ["call_solve", "enable_exported_solves", "exported_solves_folder"]

_PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "optimistix", "lineax")

#: The diffrax results a solve can end with, by code (the exported function returns the code).
_RESULTS = (
    diffrax.RESULTS.successful,
    diffrax.RESULTS.event_occurred,
    diffrax.RESULTS.max_steps_reached,
    diffrax.RESULTS.nonlinear_divergence,
    diffrax.RESULTS.nonlinear_max_steps_reached,
    diffrax.RESULTS.singular,
    diffrax.RESULTS.breakdown,
    diffrax.RESULTS.dt_min_reached,
    diffrax.RESULTS.nonfinite,
)


class _State:
    """Where exported solves live (None: disabled) and the ones loaded in this process."""

    folder: Path | None = None
    loaded: dict[str, Any] = {}  # noqa: RUF012  (a per-process cache, keyed by content)


def enable_exported_solves(folder: str | os.PathLike[str] | None) -> None:
    """Serialize the reduced solves to `folder` and reuse them across processes (module
    docstring); `None` disables it. An explicit, process-wide choice, like JAX's
    `jax_compilation_cache_dir`, which should be set to a folder too."""
    _State.folder = None if folder is None else Path(folder)


def exported_solves_folder() -> Path | None:
    """The folder of `enable_exported_solves`, or None when disabled."""
    return _State.folder


@functools.cache
def _source_hash() -> str:
    files = sorted(Path(__file__).resolve().parent.glob("*.py"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _key(name: str, dyn: tuple[Any, ...], static: dict[str, Any]) -> str:
    leaves = jax.tree.leaves(dyn)
    parts = (
        name,
        *(md.version(p) for p in _PACKAGES),
        _source_hash(),
        jax.default_backend(),
        sorted(static.items()),
        [(tuple(a.shape), str(a.dtype)) for a in leaves],
        str(jax.tree.structure(dyn)),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def _flat(sol: Any) -> dict[str, Any]:
    """A diffrax `Solution` as arrays only (exportable): the result as a code of `_RESULTS`."""
    code = jnp.int32(-1)
    for i, item in enumerate(_RESULTS):
        code = jnp.where(sol.result == item, jnp.int32(i), code)
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    return {"ts": sol.ts, "ys": sol.ys, "stats": stats, "result": code, "mask": sol.event_mask}


def _unflat(out: dict[str, Any]) -> SimpleNamespace:
    code = int(out["result"])
    result = _RESULTS[code] if code >= 0 else diffrax.RESULTS.internal_error
    return SimpleNamespace(
        ts=out["ts"], ys=out["ys"], stats=out["stats"], result=result, event_mask=out["mask"]
    )


def _load_or_export(
    name: str, solve: Callable[..., Any], dyn: tuple[Any, ...], static: dict
) -> Any:
    folder = _State.folder
    assert folder is not None
    key = _key(name, dyn, static)
    if key in _State.loaded:
        return _State.loaded[key]
    path = folder / f"{name}-{key}.jaxexport"
    exported = None
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # missing, truncated or foreign: export anew
        try:
            fn = jax.jit(lambda *a: _flat(solve(*a, **static)))
            unchecked = [jax.export.DisabledSafetyCheck.custom_call("lapack_dormqr_ffi")]
            exported = jax.export.export(fn, disabled_checks=unchecked)(*dyn)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(exported.serialize())
            os.replace(tmp, path)  # atomic: concurrent processes never read half a file
        except Exception as exc:
            warnings.warn(
                f"lsa: exported solve unavailable ({type(exc).__name__}: {exc}); tracing "
                "instead (the result is the same, only the first call is slower).",
                RuntimeWarning,
                stacklevel=4,
            )
            exported = None
    _State.loaded[key] = exported
    return exported


def call_solve(name: str, solve: Callable[..., Any], dyn: tuple[Any, ...], **static: Any) -> Any:
    """`solve(*dyn, **static)`, through a serialized export when enabled (module docstring).

    Call it inside `lsa._diffrax._checks_without_callbacks()`: a solve holding host callbacks
    can be neither cached nor exported. Returns the diffrax `Solution`, or a namespace with the
    fields `lsa.flow` reads (`ts`, `ys`, `stats`, `result`, `event_mask`).
    """
    if _State.folder is None or static.get("progress"):
        return solve(*dyn, **static)
    exported = _load_or_export(name, solve, dyn, static)
    if exported is None:
        return solve(*dyn, **static)
    return _unflat(exported.call(*dyn))
