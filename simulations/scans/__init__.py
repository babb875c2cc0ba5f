"""Parameter scans: grids of settings, batched solves, measurements, resumable run directories.

See `simulations.scans.engine` and `docs/scans.md`.
"""

from .engine import (
    MEASURES,
    PARAMETERS,
    Measure,
    Parameter,
    ScanConfig,
    ScanError,
    SettingContext,
    example_path,
    examples,
    load_config,
    register_measure,
    run_scan,
    scan,
)

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
