"""The `lsa` command.

Subcommands live in their own modules; each exposes `add_parser(subparsers)` which registers
its parser and sets `func` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

SUBCOMMANDS = (
    "simulations.cli.reproduce",
    "simulations.cli.train",
    "simulations.cli.shift",
    "simulations.cli.scan",
    "simulations.cli.check",
    "simulations.cli.transformer",
    "simulations.cli.deep",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsa",
        description="Gradient-flow theory simulator for in-context learning with one linear "
        "self-attention layer (Zhang, Frei & Bartlett 2024).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


CACHE_ENV = "LSA_FLOW_CACHE_DIR"


def cache_dir() -> Path | None:
    """The persistent compilation cache of the `lsa` command: `$LSA_FLOW_CACHE_DIR`, else
    `$XDG_CACHE_HOME/lsa-flow/jax` (default `~/.cache/lsa-flow/jax`); `LSA_FLOW_CACHE_DIR=off`
    disables it."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lsa-flow" / "jax"


def configure_runtime() -> None:
    """What the command chooses for the process (a library import never does): float64,
    JAX's persistent compilation cache and the serialized solves of `lsa.flow` (a second run
    neither traces nor compiles the solve again), and the non-interactive Agg backend."""
    import jax
    import matplotlib

    import lsa

    lsa.set_precision("float64")
    folder = cache_dir()
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            folder = None
    if folder is not None:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        lsa.flow.enable_exported_solves(folder / "export")
    matplotlib.use("Agg")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_runtime()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lsa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
