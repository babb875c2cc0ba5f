"""Parameter scans: many settings, batched gradient-flow solves, one table.

```python
import lsa
import simulations

lsa.set_precision("float64")
df = simulations.scan(
    {"sigma_fraction": [1e-4, 1e-3, 1e-2, 0.1, 0.5], "kappa": [1, 10, 100]},
    measure=["t_escape", "t_escape_theory", "t_converge", "mu_min_inv"],
    params={"d": 10, "N": 20},
)
```

A **setting** is one `lsa.Setting` (d, N, kappa, spectrum, trace, rotate, sigma or
sigma_fraction, seed, solver options; its defaults, validation and seed rule) plus the scan-only
measurement parameters `M`, `c`, `n_mc`, `conv_tol` (`Measurement`); `PARAMETERS` lists them
all. A scan expands a grid of settings (the cartesian product of `grid`, times each zipped
group of `zip`, with fixed `params` and defaults for the rest), builds each with
`lsa.Setting.build()` (so a row trains on the Lambda and Theta of `lsa train` with the same
values, bit for bit), solves the flows with `lsa.batch.batch_gradient_flow` in chunks, computes
the requested measurements (`MEASURES`, plus any `extra_measures`) and returns a pandas
DataFrame with one row per setting, sorted by `setting_id`. See `docs/scans.md`.

The modules, in the order a scan uses them:

| module | what it holds |
|---|---|
| `parameters` | `PARAMETERS` (from `lsa.Setting` and `Measurement`), value checks, grids |
| `measures` | `Measure`, `SettingContext`, the built-in `MEASURES` (read-only) |
| `config` | `ScanConfig` (validation, grid expansion, hash), `load_config` (TOML), examples |
| `plan` | `plan_chunks`: group by solver options, order by estimated cost, cut into chunks |
| `solve` | `run_chunk`: build, solve and measure one chunk (the Dask task) |
| `rundir` | `RunDir`: run directories, atomic writes, the lock, consolidation |
| `executors` | the local (threads) and Dask executors |
| `api` | `run_scan`, `scan`, `ScanResult` |
"""

from .api import ScanResult, run_scan, scan
from .config import ScanConfig, config_from_dict, example_path, examples, load_config
from .measures import MEASURES, Measure, SettingContext, measure_registry
from .parameters import PARAMETERS, Measurement, Parameter, ScanError

__all__ = [
    "MEASURES",
    "PARAMETERS",
    "Measure",
    "Measurement",
    "Parameter",
    "ScanConfig",
    "ScanError",
    "ScanResult",
    "SettingContext",
    "config_from_dict",
    "example_path",
    "examples",
    "load_config",
    "measure_registry",
    "run_scan",
    "scan",
]
