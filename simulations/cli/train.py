"""`lsa train`: train one setting by gradient flow and write a result directory.

The setting is an `lsa.Setting`: options (one per field, e.g. `--d 6 --N 15 --kappa 7 --seed 3`)
or a TOML file (`--config`, keys at the top level or under `[setting]` / `[train]`); options
override the file. Lambda, Theta and sigma come from `Setting.build()`, so the same values give
the same problem as a scan row or the Python API, bit for bit. The result directory (default
`runs/train-<hash>`, named by `Setting.digest()`) holds:

- `config.json`: every value of the setting (`Setting.model_dump`), the derived sigma,
  sigma_max and eigenvalues, and provenance;
- `trajectory.csv` and `trajectory.npz`: t, u, loss, ||U||_F^2, u^2 - ||U||_F^2 on the saved
  (log-spaced) times;
- `weights.npz`: final `W_PV`, `W_KQ`, `u_final`, `U_final`; `Lambda`, `Theta`, the start
  `u0`, `U0` and the initial `W_PV0`, `W_KQ0`;
- `summary.json`: stop reason, solver statistics, final loss, provenance (package versions,
  device, git revision).

A finished directory is not recomputed (rerunning prints its summary); `--force` recomputes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsa.setting import RENAMED, Setting, field_rule, load_toml

from ..provenance import provenance, write_json

#: Setting fields whose option is not `--<name>`: `rotate` is switched off by `--no-rotate`.
_NEGATED = {"rotate": "--no-rotate"}


def _option(name: str) -> str:
    return _NEGATED.get(name, "--" + name.replace("_", "-"))


def _add_setting_options(p: argparse.ArgumentParser) -> None:
    """One option per `lsa.Setting` field, typed and documented by the field itself."""
    g = p.add_argument_group("setting (lsa.Setting; options override --config)")
    sigma = g.add_mutually_exclusive_group()
    for name, field in Setting.model_fields.items():
        default = "" if field.default is None else f" (default {field.default})"
        help_ = f"{field.description}: {field_rule(field)}{default}"
        if name in _NEGATED:
            g.add_argument(_option(name), dest=name, action="store_false", default=None,
                           help=f"do not {field.description}")  # fmt: skip
            continue
        ann = field.annotation
        if isinstance(ann, types.UnionType):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        kw: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = typing.get_args(ann)
        elif typing.get_origin(ann) is tuple:
            kw.update(type=float, nargs="+")
        else:
            kw["type"] = ann
        (sigma if name in ("sigma", "sigma_fraction") else g).add_argument(_option(name), **kw)
    for old in RENAMED:  # refused with the new name (see `setting_from_args`)
        p.add_argument("--" + old.replace("_", "-"), dest=f"renamed_{old}", default=None,
                       help=argparse.SUPPRESS)  # fmt: skip


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train one setting and write a result directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--sigma-frac` must not silently mean `--sigma-fraction`
    )
    p.add_argument("--config", type=Path, help="TOML file with the setting ([setting] or [train])")
    _add_setting_options(p)
    p.add_argument("--out", type=Path, help="result directory (default runs/train-<hash>)")
    p.add_argument("--force", action="store_true", help="recompute even if the run is finished")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)


def setting_from_args(args: argparse.Namespace) -> Setting:
    """The `lsa.Setting` of the command line: the file's values, overridden by the options."""
    for old, new in RENAMED.items():
        if getattr(args, f"renamed_{old}", None) is not None:
            raise ValueError(
                f"option `--{old.replace('_', '-')}` was renamed to `{_option(new)}`; "
                f"use `{_option(new)}`."
            )
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    given = {k: getattr(args, k) for k in Setting.model_fields if getattr(args, k) is not None}
    for a, b in (("sigma", "sigma_fraction"), ("sigma_fraction", "sigma")):
        if a in given:  # an option replaces the file's choice of sigma
            values.pop(b, None)
    if "eigenvalues" in given and "d" not in given and "d" not in values:
        given["d"] = len(given["eigenvalues"])
    values.update(given)
    return Setting.from_dict(values)


def train(setting: Setting, out: Path, progress: bool = False) -> dict[str, Any]:
    """Train one setting and write its result directory. Returns the summary."""
    from lsa.flow import gradient_flow

    problem = setting.build()
    method, options = setting.method_and_options()
    options = dataclasses.replace(options, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    derived = {
        "sigma": problem.sigma,
        "sigma_max": problem.sigma_max,
        "eigenvalues": problem.eigenvalues.tolist(),
        "digest": setting.digest(),
    }
    config = {**setting.model_dump(mode="json"), "derived": derived, "provenance": provenance()}
    write_json(out / "config.json", config)
    res = gradient_flow(problem.Lambda, setting.N, problem.init, method=method, options=options)
    pd.DataFrame(res.as_dict()).to_csv(out / "trajectory.csv", index=False)
    np.savez(out / "trajectory.npz", **res.as_dict())
    W_PV0, W_KQ0 = problem.init.weights()
    np.savez(
        out / "weights.npz",
        W_PV=res.W_PV,
        W_KQ=res.W_KQ,
        u_final=np.float64(res.u_final),
        U_final=np.asarray(res.U_final),
        Lambda=problem.Lambda,
        Theta=setting.Theta(),
        u0=np.asarray(problem.init.u),
        U0=np.asarray(problem.init.U),
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


def _finished(out: Path, setting: Setting) -> bool:
    """Whether `out` holds a finished run of this setting (another setting is an error)."""
    if not (out / "summary.json").exists():
        return False
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}
    mine = setting.model_dump(mode="json")
    if {k: saved.get(k) for k in mine} != mine:
        raise ValueError(
            f"{out} holds a finished run of another setting; choose another --out, or --force "
            "to overwrite it."
        )
    return True


def run(args: argparse.Namespace) -> int:
    setting = setting_from_args(args)
    out = args.out or Path("runs") / f"train-{setting.digest()}"
    if not args.force and _finished(out, setting):
        print(f"lsa train: {out} is finished (use --force to recompute)")
        print((out / "summary.json").read_text()[:2000])
        return 0
    summary = train(setting, out, progress=args.progress)
    print(
        f"lsa train: {summary['stop_reason']} at t = {summary['t_final']:.6g}, "
        f"final loss {summary['final_loss']:.12g}, {summary['stats']['num_steps']} steps "
        f"-> {out}/"
    )
    return 0


if __name__ == "__main__":
    from . import main

    sys.exit(main(["train", *sys.argv[1:]]))
