"""Training the GPT-2-style transformer on linear regression (issue 11 §1), resumable bit for bit.

**Configuration.** `TransformerConfig`: a frozen, strict pydantic model (unknown keys, wrong types
and out-of-range values raise `TransformerConfigError` naming the field and its rule), built as
`lsa.Setting` is. Fields: `d`, `N` (training prompt length: `N` in-context examples before the
last query, so a training prompt has `N + 1` points and every prefix is a training example),
`M_max` (largest test length; `2 M_max + 1` learned positions; default `2N`), `width`, `layers`,
`heads`, `steps`, `batch`, `lr` (Adam), `seed`, `covariance`, the curriculum and
`checkpoint_every`, `threads`, `device`.

**Training law.** `w ~ N(0, I_d)`, `y_i = <w, x_i>` (noiseless, as ZFB and Garg et al.), and

- `covariance = "fixed"`: `x ~ N(0, Lambda)` with `Lambda = lsa.Setting(d=d).Lambda()`, the
  default anisotropic covariance of lsa-flow (condition number 10, Haar-rotated, trace d);
- `"identity"`: `x ~ N(0, I_d)`;
- `"random"`: per prompt `Lambda = diag(lambda_1..lambda_d)`, `lambda_j` iid Exp(1) (ZFB §4.3,
  Def. 4.4), `x ~ N(0, Lambda)` given it.

The loss is the mean squared error over every prefix position of the prompt (Garg et al.; ZFB's
Figure 1 models), at the prompt's `N + 1` points.

**Curriculum (Garg et al.), optional.** With `curriculum = true`, at step `s` the prompts use
the first `d_s = min(d, curriculum_d_start + s // curriculum_every)` coordinates (the others are
set to 0, as Garg's code does) and `n_s = min(N + 1, curriculum_n_start + 2 (s //
curriculum_every))` points.

**Determinism and resume.** The batch of step `s` is drawn by a `torch.Generator` seeded with a
hash of `(seed, s)` only, so a resumed run draws exactly the batches an uninterrupted one draws.
Training runs with `torch.use_deterministic_algorithms(True)`, `threads` intra-op threads and no
dropout. Every `checkpoint_every` steps the model, Adam's state, torch's global RNG state, the
step, the loss history and the configuration are written atomically (temporary file, fsync,
`os.replace`) to `checkpoint.pt`; a run restarted on the same directory continues from it, so a
killed run loses at most one interval and ends with bit-identical weights on CPU (tested with
SIGKILL). Checkpoints hold tensors and plain values only and are read with `weights_only=True`.

**Run directory.** `config.json` (the configuration and provenance), `checkpoint.pt`, and when
finished `model.pt` (the final state dict), `loss.csv` (the loss of every step) and
`result.json` (final loss, timing, device, torch version, provenance), written last.

Usage: `python -m simulations.transformer.train --config CONFIG.json --out DIR`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from ..provenance import provenance, write_json
from .model import GPT2Regressor

__all__ = [
    "TransformerConfig",
    "TransformerConfigError",
    "build_model",
    "fixed_covariance",
    "load_model",
    "sample_batch",
    "stream_seed",
    "torch_provenance",
    "train",
]

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RESULT = "result.json"


class TransformerConfigError(ValueError):
    """An invalid transformer configuration (raised before any computation)."""


class TransformerConfig(BaseModel):
    """The configuration of one transformer training run (module docstring)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", validate_default=True)

    d: int = Field(5, ge=1, le=1024, description="input dimension")
    N: int = Field(20, ge=1, le=10_000, description="training prompt length (examples)")
    M_max: int | None = Field(
        None, ge=1, description="largest test length (2 M_max + 1 positions; default 2N)"
    )
    width: int = Field(64, ge=1, description="model width")
    layers: int = Field(3, ge=1, description="number of transformer blocks")
    heads: int = Field(2, ge=1, description="attention heads (divide the width)")
    steps: int = Field(2000, ge=1, description="Adam steps")
    batch: int = Field(64, ge=1, description="prompts per step")
    lr: float = Field(1e-4, gt=0, lt=1, allow_inf_nan=False, description="Adam learning rate")
    seed: int = Field(0, ge=0, description="seed of the initial weights and of the data")
    covariance: Literal["fixed", "identity", "random"] = Field(
        "fixed", description="training covariance"
    )
    curriculum: bool = Field(False, description="Garg et al.'s curriculum over d and n")
    curriculum_d_start: int = Field(1, ge=1, description="curriculum: first dimension")
    curriculum_n_start: int = Field(2, ge=2, description="curriculum: first number of points")
    curriculum_every: int = Field(2000, ge=1, description="curriculum: steps per increment")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    threads: int = Field(1, ge=1, le=256, description="torch intra-op threads")
    device: Literal["cpu", "cuda"] = Field("cpu", description="torch device")
    bf16: bool = Field(
        False, description="bf16 autocast for the forward pass (the loss and Adam stay float32)"
    )
    compile: bool = Field(False, description="torch.compile the model for training")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TransformerConfigError(_explain(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise TransformerConfigError(
                    f"unknown transformer key(s) {', '.join(map(repr, unknown))}; valid keys: "
                    f"{', '.join(cls.model_fields)}."
                )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TransformerConfig:
        if self.width % self.heads:
            raise ValueError(f"`heads` ({self.heads}) must divide `width` ({self.width}).")
        if self.M_max is not None and self.M_max < self.N:
            raise ValueError(f"`M_max` ({self.M_max}) must be at least `N` ({self.N}).")
        if self.curriculum and self.curriculum_d_start > self.d:
            raise ValueError(
                f"`curriculum_d_start` ({self.curriculum_d_start}) must be at most `d` ({self.d})."
            )
        if self.curriculum and self.curriculum_n_start > self.N + 1:
            raise ValueError(
                f"`curriculum_n_start` ({self.curriculum_n_start}) must be at most N + 1 "
                f"({self.N + 1} points)."
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TransformerConfig:
        return TransformerConfig(**{**self.model_dump(), **changes})

    @property
    def m_max(self) -> int:
        """`M_max`, or `2N` when unset."""
        return 2 * self.N if self.M_max is None else self.M_max

    def d_at(self, step: int) -> int:
        """The number of active coordinates at `step` (the curriculum's, or `d`)."""
        if not self.curriculum:
            return self.d
        return min(self.d, self.curriculum_d_start + step // self.curriculum_every)

    def points_at(self, step: int) -> int:
        """The number of points per training prompt at `step` (`N + 1` at the end)."""
        if not self.curriculum:
            return self.N + 1
        return min(self.N + 1, self.curriculum_n_start + 2 * (step // self.curriculum_every))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in build_model(self).parameters())

    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _explain(exc: ValidationError) -> str:
    from lsa.setting import field_rule

    lines = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            lines.append(msg)
            continue
        loc = ".".join(str(p) for p in err["loc"])
        field = TransformerConfig.model_fields.get(str(err["loc"][0]))
        what = f" ({field.description}: {field_rule(field)})" if field is not None else ""
        given = f"; got {err['input']!r}" if "input" in err and err["type"] != "missing" else ""
        lines.append(f"`{loc}`{what}: {msg}{given}")
    return "invalid transformer configuration: " + "; ".join(lines)


# ----------------------------------------------------------------------------------------------
# data


def stream_seed(seed: int, step: int) -> int:
    """The seed of the `torch.Generator` of step `step`: 63 bits of SHA-256 of `(seed, step)`."""
    blob = f"lsa-flow/transformer/{seed}/{step}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


@lru_cache(maxsize=16)
def fixed_covariance(d: int) -> np.ndarray:
    """`lsa.Setting(d=d).Lambda()`: lsa-flow's default anisotropic covariance (needs
    `lsa.set_precision('float64')`, which the `lsa` command sets)."""
    from lsa.setting import Setting

    out = np.asarray(Setting(d=d).Lambda(), dtype=np.float64)
    out.setflags(write=False)
    return out


def sample_batch(
    config: TransformerConfig,
    step: int,
    *,
    n_points: int | None = None,
    batch: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of `step`: `X (batch, n_points, d)`, `y (batch, n_points)`, on the
    CPU, a function of `(config.seed, step)` and the configuration only."""
    g = torch.Generator().manual_seed(stream_seed(config.seed, step))
    B = config.batch if batch is None else batch
    n = config.points_at(step) if n_points is None else n_points
    d = config.d
    Z = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    if config.covariance == "fixed":
        L = torch.from_numpy(np.linalg.cholesky(fixed_covariance(d)))
        X = Z @ L.T
    elif config.covariance == "random":
        lam = torch.empty(B, d, dtype=torch.float64).exponential_(1.0, generator=g)
        X = Z * lam.sqrt()[:, None, :]
    else:
        X = Z
    d_s = config.d_at(step)
    if d_s < d:
        X[..., d_s:] = 0.0
        w[..., d_s:] = 0.0
    y = torch.einsum("bnd,bd->bn", X, w)
    return X.to(dtype), y.to(dtype)


# ----------------------------------------------------------------------------------------------
# model, checkpoints


def build_model(config: TransformerConfig) -> GPT2Regressor:
    """The initial model of a configuration: torch's initialisation seeded by `config.seed`
    (inside `torch.random.fork_rng`, so the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return GPT2Regressor(config.d, config.m_max, config.width, config.layers, config.heads)


def _atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file, fsync, `os.replace`, fsync the directory."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_model(out: Path, map_location: str = "cpu") -> tuple[GPT2Regressor, TransformerConfig]:
    """The final model of a finished run directory and its configuration."""
    out = Path(out)
    config = TransformerConfig.from_dict(_read_config(out))
    model = build_model(config)
    state = torch.load(out / MODEL, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, config


def _read_config(out: Path) -> dict[str, Any]:
    data = json.loads((out / "config.json").read_text())
    return dict(data["config"])


def torch_provenance(config: TransformerConfig | None = None) -> dict[str, Any]:
    """torch's version, threads, device and determinism settings."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cuda_available": torch.cuda.is_available(),
    }
    if config is not None:
        info["bf16_autocast"] = config.bf16
        info["compiled"] = config.compile
    if config is not None and config.device == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _configure(config: TransformerConfig) -> torch.device:
    torch.set_num_threads(config.threads)
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("`device = 'cuda'` but torch sees no CUDA device.")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
    return torch.device(config.device)


# ----------------------------------------------------------------------------------------------
# training


def train(
    config: TransformerConfig,
    out: Path,
    *,
    progress: bool = True,
    force: bool = False,
    throttle: float = 0.0,
    desc: str | None = None,
    position: int | None = None,
) -> dict[str, Any]:
    """Train (or resume, or return) the run of `config` in directory `out`; returns the result.

    A finished directory (`result.json`) is returned as it is unless `force`; a directory with a
    checkpoint of the same configuration resumes from it; a directory of another configuration
    is an error. `throttle` (seconds slept after every step; the tests use it to kill a run
    mid-way) does not change the numbers.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = config.model_dump(mode="json")
    if (out / "config.json").exists():
        saved = _read_config(out)
        if saved != mine:
            raise ValueError(
                f"{out} holds a run of another configuration; choose another directory."
            )
        if not force and (out / RESULT).exists():
            return dict(json.loads((out / RESULT).read_text()))
    if force:
        for name in (CHECKPOINT, MODEL, RESULT):
            (out / name).unlink(missing_ok=True)
    write_json(out / "config.json", {"config": mine, "provenance": provenance()})

    device = _configure(config)
    model = build_model(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    start, losses = 0, []
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if json.loads(state["config"]) != mine:
            raise ValueError(f"{ckpt_path} was written by another configuration.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        losses = state["losses"].tolist()
    resumed_from = start
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        disable=not progress,
        desc=desc or f"transformer {config.covariance}",
        unit="step",
        mininterval=1.0,
        position=position,
    )
    # torch.compile shares the parameters with `model` (checkpoints hold `model`'s state);
    # bf16 autocast covers the forward pass only. Bit-identical resume is promised (and tested)
    # for the default float32 eager CPU path; compiled or autocast runs are deterministic only
    # as far as their kernels are.
    forward = torch.compile(model) if config.compile else model
    for step in bar:
        X, y = sample_batch(config, step)
        X, y = X.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            pred = forward(X, y)
        loss = torch.mean((pred.float() - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"non-finite training loss at step {step}.")
        if progress and (step % 50 == 0):
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            _atomic_save(
                {
                    "step": done,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(),
                    "losses": torch.tensor(losses, dtype=torch.float64),
                    "config": json.dumps(mine, sort_keys=True),
                },
                ckpt_path,
            )
        if throttle > 0:
            time.sleep(throttle)
    bar.close()
    wall = time.perf_counter() - t0
    _atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / MODEL)
    np.savetxt(out / "loss.csv", np.asarray(losses), header="loss", comments="", fmt="%.9g")
    tail = max(1, min(100, len(losses) // 10))
    result = {
        "config": mine,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "positions": model.n_positions,
        "M_max": config.m_max,
        "steps": config.steps,
        "resumed_from": resumed_from,
        "final_loss": float(np.mean(losses[-tail:])),
        "final_loss_window": tail,
        "initial_loss": float(losses[0]),
        "wall_s": wall,
        "steps_per_s": (config.steps - resumed_from) / wall if wall > 0 else None,
        "torch": torch_provenance(config),
        "provenance": provenance(),
    }
    write_json(out / RESULT, result)  # written last: marks the run finished
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train one transformer run (resumable).")
    ap.add_argument("--config", type=Path, required=True, help="JSON file of TransformerConfig")
    ap.add_argument("--out", type=Path, required=True, help="run directory")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--position", type=int, default=None, help="progress bar line (tqdm)")
    ap.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import lsa

    lsa.set_precision("float64")  # the fixed covariance is drawn by lsa.Setting in float64
    config = TransformerConfig.from_dict(json.loads(args.config.read_text()))
    res = train(
        config, args.out, progress=not args.no_progress, throttle=args.throttle,
        desc=args.out.name, position=args.position,
    )  # fmt: skip
    print(f"final loss {res['final_loss']:.6g} after {res['steps']} steps -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
