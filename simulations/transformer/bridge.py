"""The trained torch transformer as an in-context `Predictor` of `simulations.icl` (issue 11 §2).

`TorchPredictor(model)` wraps a `GPT2Regressor` so that everything written for the JAX
predictors takes it: `predictor(X, y, x_q)`, `at_every_prefix`, and the Monte Carlo engine
(`mc_risk(..., sampler="prompts")`, `mc_spd`, `mc_ilwd`), which call `Predictor._predict` inside
`jax.jit`. `_predict` is a `jax.pure_callback` into torch: the arrays reach the host as numpy,
the model runs under `torch.no_grad()` in its own dtype (float32 as trained), and the
predictions come back as float64.

**What the transformer is asked.** The prediction for the query `x_q` from the examples
`(x_1, y_1) .. (x_M, y_M)` is the model's output at the last `x` token of the prompt
`x_1, ỹ_1, .., x_M, ỹ_M, x_q` (`2M + 1` tokens). A mask (the engine's way of evaluating a
prefix, `at_every_prefix`) keeps the unmasked examples in their order and drops the others, so
the causal model's prediction at position `i` of one forward pass (`GPT2Regressor.forward`) is
the bridge's prediction from the first `i` examples (tested). With no example at all the
transformer still answers (its output at the first token), where the JAX predictors answer 0.

The host-side functions `predict_numpy`, `prefixes_numpy` and `query_hidden` do the same without
going through JAX; the experiments use them outside `jit` (one forward pass per batch, no
per-position callback).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch

from ..icl.predictors import Predictor
from .model import GPT2Regressor

__all__ = ["TorchPredictor", "predict_numpy", "prefixes_numpy", "query_hidden"]


def _tensor(a: Any, model: torch.nn.Module) -> torch.Tensor:
    p = next(model.parameters())
    return torch.as_tensor(np.asarray(a), dtype=p.dtype, device=p.device)


def _check_model(model: GPT2Regressor, n_points: int) -> None:
    if n_points > model.M_max + 1:
        raise ValueError(
            f"a prompt of {n_points - 1} examples and a query needs {2 * n_points - 1} "
            f"positions; this model reads at most M_max = {model.M_max} examples."
        )


def predict_numpy(model: GPT2Regressor, X: Any, y: Any, x_q: Any) -> np.ndarray:
    """The transformer's predictions `(B,)` (float64) for queries `x_q (B, d)` from the examples
    `X (B, M, d)`, `y (B, M)`: its output at the last token of `x_1, ỹ_1, .., x_M, ỹ_M, x_q`."""
    X = np.asarray(X)
    x_q = np.asarray(x_q)
    B, M, _ = X.shape
    _check_model(model, M + 1)
    Xf = np.concatenate([X, x_q[:, None, :]], axis=1)
    yf = np.concatenate([np.asarray(y), np.zeros((B, 1), X.dtype)], axis=1)
    with torch.no_grad():
        out = model(_tensor(Xf, model), _tensor(yf, model))[:, -1]
    return out.double().cpu().numpy()


def prefixes_numpy(model: GPT2Regressor, X: Any, y: Any) -> np.ndarray:
    """Predictions `(B, n)` at every prefix of the prompts `X (B, n, d)`, `y (B, n)` in one
    forward pass: entry `i` predicts `y_i` from examples `0 .. i-1` (as `at_every_prefix`)."""
    X = np.asarray(X)
    _check_model(model, X.shape[1])
    with torch.no_grad():
        out = model(_tensor(X, model), _tensor(y, model))
    return out.double().cpu().numpy()


def query_hidden(model: GPT2Regressor, X: Any, y: Any, x_q: Any) -> list[np.ndarray]:
    """Every layer's hidden state at the query token (the last `x` token) of the prompts
    `x_1, ỹ_1, .., x_M, ỹ_M, x_q`: `layers + 1` arrays `(B, width)` (float64), the embedding
    (read-in plus positions) first, then the residual stream after each block."""
    X = np.asarray(X)
    x_q = np.asarray(x_q)
    B, M, _ = X.shape
    _check_model(model, M + 1)
    Xf = np.concatenate([X, x_q[:, None, :]], axis=1)
    yf = np.concatenate([np.asarray(y), np.zeros((B, 1), X.dtype)], axis=1)
    with torch.no_grad():
        hs = model.hidden(_tensor(Xf, model), _tensor(yf, model))
    return [h[:, -1].double().cpu().numpy() for h in hs]


class TorchPredictor(Predictor):
    """A trained `GPT2Regressor` as a `Predictor` (module docstring).

    **Arguments:** `model` (put in `eval()` mode here), `label` (its `name`, default
    `"transformer"`). The model is a static field: two wrappers of the same model object compare
    equal, so the engine's compiled kernels are reused.
    """

    model: GPT2Regressor = eqx.field(static=True)
    label: str = eqx.field(static=True)

    def __init__(self, model: GPT2Regressor, label: str = "transformer"):
        if not isinstance(model, GPT2Regressor):
            raise TypeError(f"`model` must be a GPT2Regressor; got {type(model).__name__}.")
        model.eval()
        self.model = model
        self.label = label

    @property
    def name(self) -> str:
        return self.label

    def check_dimension(self, d: int) -> None:
        if d != self.model.d:
            raise ValueError(f"the transformer reads d = {self.model.d}; the prompts have d = {d}.")

    def check_dims(self, M: int, d: int) -> None:
        self.check_dimension(d)
        if M > self.model.M_max:
            raise ValueError(
                f"the transformer reads at most M_max = {self.model.M_max} examples; got M = {M}."
            )

    def _host(self, X: Any, y: Any, x_q: Any, keep: Any) -> np.ndarray:
        idx = np.flatnonzero(np.asarray(keep) > 0)
        X = np.asarray(X)[:, idx]
        y = np.asarray(y)[:, idx]
        return predict_numpy(self.model, X, y, x_q)

    def _predict(self, X, y, x_q, mask=None):  # type: ignore[no-untyped-def]
        keep = jnp.ones(X.shape[1], jnp.float64) if mask is None else mask
        out = jax.ShapeDtypeStruct((X.shape[0],), jnp.float64)
        return jax.pure_callback(self._host, out, X, y, x_q, keep, vmap_method="sequential")
