"""`lsa train`: train one setting by gradient flow and write a result directory.

The setting comes from options or a TOML file (options override the file). The result
directory (default `runs/train-<hash>`, named by a hash of the configuration) holds:

- `config.json`: the full configuration, including the seed;
- `trajectory.csv` and `trajectory.npz`: t, u, loss, ||U||_F^2, u^2 - ||U||_F^2 on the saved
  (log-spaced) times;
- `weights.npz`: final `W_PV`, `W_KQ`, `Lambda` and the initial `W_PV0`, `W_KQ0`;
- `summary.json`: stop reason, solver statistics, final loss, provenance (package versions,
  device, git revision).

A finished directory is not recomputed (rerunning prints its summary); `--force` recomputes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

import lsa
from lsa.flow import METHODS, FlowOptions, gradient_flow

from ..provenance import provenance, to_jsonable, write_json


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Lambda is either `eigenvalues` (rotated by a Haar matrix from `seed`)
    or a `kappa` spread (geometric, trace d); sigma is `sigma` or `sigma_fraction` x sigma_max.
    """

    d: int = 5
    N: int = 20
    kappa: float = 10.0
    eigenvalues: tuple[float, ...] | None = None
    rotate: bool = True
    sigma: float | None = None
    sigma_fraction: float | None = 0.5
    seed: int = 0
    method: str = "eigen"
    rtol: float | None = None
    eps: float = 1e-10
    t_end: float | None = None
    max_steps: int = 200_000
    n_save: int = 400

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown solver `method={self.method!r}`; choose one of {sorted(METHODS)}."
            )
        if self.sigma is not None and self.sigma_fraction is not None:
            raise ValueError("give only one of `sigma` and `sigma_fraction`.")
        if self.sigma is None and self.sigma_fraction is None:
            raise ValueError("give one of `sigma` or `sigma_fraction`.")
        if self.eigenvalues is not None and len(self.eigenvalues) != self.d:
            raise ValueError(
                f"`eigenvalues` must have d = {self.d} entries; got {len(self.eigenvalues)}."
            )

    def Lambda(self) -> np.ndarray:
        key = jax.random.PRNGKey(self.seed) if self.rotate else None
        if self.eigenvalues is not None:
            lam = np.asarray(self.eigenvalues, dtype=np.float64)
            if key is None:
                return np.diag(lam)
            return np.asarray(lsa.rotated_covariance(lam, key))
        return np.asarray(lsa.spread_covariance(self.d, self.kappa, key))

    def digest(self) -> str:
        blob = json.dumps(to_jsonable(dataclasses.asdict(self)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML configuration: keys at the top level or under `[train]`."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"malformed TOML in {path}: {exc}") from exc
    if "train" in data:
        extra = set(data) - {"train"}
        if extra:
            raise ValueError(f"unknown section(s) {sorted(extra)} in {path}; only [train].")
        data = data["train"]
    unknown = set(data) - FIELDS
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} in {path}; valid keys: {sorted(FIELDS)}."
        )
    if "eigenvalues" in data:
        data["eigenvalues"] = tuple(float(x) for x in data["eigenvalues"])
    return data


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train one setting and write a result directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with the setting ([train] section)")
    p.add_argument("--d", type=int)
    p.add_argument("--N", type=int)
    p.add_argument("--kappa", type=float, help="condition number of Lambda (geometric spectrum)")
    p.add_argument("--eigenvalues", type=float, nargs="+", help="explicit spectrum of Lambda")
    p.add_argument(
        "--no-rotate",
        dest="rotate",
        action="store_false",
        default=None,
        help="keep Lambda diagonal (default: Haar-rotated, non-diagonal)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sigma", type=float, help="initialisation scale")
    g.add_argument("--sigma-fraction", type=float, help="sigma as a fraction of sigma_max")
    p.add_argument("--seed", type=int)
    p.add_argument("--method", choices=sorted(METHODS))
    p.add_argument("--rtol", type=float, help="solver relative tolerance")
    p.add_argument("--eps", type=float, help="stopping rule: relative distance to the fixed point")
    p.add_argument("--t-end", type=float, help="integrate to this time (default: until converged)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--out", type=Path, help="result directory (default runs/train-<hash>)")
    p.add_argument("--force", action="store_true", help="recompute even if the run is finished")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    for name in (
        "d",
        "N",
        "kappa",
        "rotate",
        "sigma",
        "seed",
        "method",
        "rtol",
        "eps",
        "t_end",
        "max_steps",
    ):
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if args.sigma_fraction is not None:
        values["sigma_fraction"] = args.sigma_fraction
        values.pop("sigma", None)
    elif values.get("sigma") is not None:
        values["sigma_fraction"] = None
    if args.eigenvalues is not None:
        values["eigenvalues"] = tuple(args.eigenvalues)
        values.setdefault("d", len(args.eigenvalues))
    return TrainConfig(**values)


def train(cfg: TrainConfig, out: Path, progress: bool = False) -> dict[str, Any]:
    """Run one configuration and write its result directory. Returns the summary."""
    Lambda = cfg.Lambda()
    init = lsa.paper_init(
        Lambda,
        cfg.N,
        sigma=cfg.sigma,
        sigma_fraction=cfg.sigma_fraction,
        key=jax.random.PRNGKey(cfg.seed + 1),
    )
    method = METHODS[cfg.method]()
    if cfg.rtol is not None:
        method = dataclasses.replace(method, rtol=cfg.rtol)
    opts = FlowOptions(
        eps=cfg.eps, t_end=cfg.t_end, max_steps=cfg.max_steps, n_save=cfg.n_save, progress=progress
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"config": dataclasses.asdict(cfg), "Lambda": Lambda})
    res = gradient_flow(Lambda, cfg.N, init, method=method, options=opts)
    traj = pd.DataFrame(res.as_dict())
    traj.to_csv(out / "trajectory.csv", index=False)
    np.savez(out / "trajectory.npz", **res.as_dict())
    W_PV0, W_KQ0 = init.weights()
    np.savez(
        out / "weights.npz",
        W_PV=res.W_PV,
        W_KQ=res.W_KQ,
        Lambda=Lambda,
        W_PV0=np.asarray(W_PV0),
        W_KQ0=np.asarray(W_KQ0),
    )
    summary = {
        "stop_reason": res.stop_reason,
        "t_final": res.t_final,
        "final_loss": float(res.loss[-1]),
        "u_final": res.u_final,
        "max_abs_balance_drift": float(np.max(np.abs(res.balance - res.balance[0]))),
        "stats": res.stats,
        "provenance": provenance(),
    }
    write_json(out / "summary.json", summary)  # written last: marks the run finished
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = args.out or Path("runs") / f"train-{cfg.digest()}"
    if (out / "summary.json").exists() and not args.force:
        print(f"lsa train: {out} is finished (use --force to recompute)")
        print((out / "summary.json").read_text()[:2000])
        return 0
    summary = train(cfg, out, progress=args.progress)
    print(
        f"lsa train: {summary['stop_reason']} at t = {summary['t_final']:.6g}, "
        f"final loss {summary['final_loss']:.12g}, {summary['stats']['num_steps']} steps "
        f"-> {out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(0)
