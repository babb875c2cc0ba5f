"""simulations: experiments that run `lsa`, compare with `theory`, and write tables and figures.

`simulations.scan(grid, measure=...)` runs a parameter scan (see `simulations.scans`); it is
imported lazily so that `import simulations` (e.g. by the `lsa` command) stays cheap.
"""

from typing import Any

__all__ = ["scan"]


def __getattr__(name: str) -> Any:
    if name == "scan":
        from .scans import scan

        return scan
    raise AttributeError(f"module 'simulations' has no attribute {name!r}")
