"""The models of issue 11 in torch: a GPT-2-style causal transformer reading prompts as Garg et
al. (2022) do, and a torch re-implementation of the single LSA layer of ZFB.

**Reading a prompt (Garg et al.).** A prompt of `n` points `(x_1, y_1), ..., (x_n, y_n)`,
`x_i` in R^d, becomes the token sequence `x_1, ỹ_1, x_2, ỹ_2, ..., x_n` with `ỹ_i = [y_i, 0, ...,
0]` in R^d (the last label is never read, so the sequence has `2n - 1` tokens). A read-in linear
layer maps each token to the model width, learned absolute positions are added, a stack of
pre-LayerNorm causal blocks (`torch.nn.TransformerEncoderLayer(norm_first=True)` under a causal
mask: torch's own attention, no hand-written kernel) follows, then a final LayerNorm and a
read-out linear layer. The output at the token of `x_i` is the prediction of `y_i` from
`(x_k, y_k)_{k<i}` and `x_i`: `i - 1` in-context examples.

**Positions.** `M_max` is the largest number of in-context examples the model can read: a test
prompt of `M` examples and a query has `M + 1` points and `2M + 1` tokens, so the model has
`2 M_max + 1` learned positions. Positions beyond those seen in training (`2N + 1` for a training
length `N`) are never trained: ZFB's Figure 1 attributes the error spike at `M > N` to them.

**TorchLSA.** `f_LSA(E) = E + W_PV E (E^T W_KQ E) / rho`, `rho` = columns - 1, no mask, with the
prediction at `[d, n]`: the same map as `lsa.lsa_forward` (ZFB eq. 3.3), written with
`torch.matmul` so that the cross-framework identity of issue 11 §3 can be tested.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GPT2Regressor", "TorchLSA", "interleave", "torch_embed"]


def interleave(X: Tensor, y: Tensor) -> Tensor:
    """Garg et al.'s token sequence of prompts `X (B, n, d)`, `y (B, n)`: `x_1, ỹ_1, ..., x_n`
    with `ỹ_i = [y_i, 0, ..., 0]`; shape `(B, 2n - 1, d)`."""
    if X.ndim != 3 or y.shape != X.shape[:2]:
        raise ValueError(
            f"X must be (B, n, d) and y (B, n); got {tuple(X.shape)}, {tuple(y.shape)}."
        )
    B, n, d = X.shape
    ys = torch.zeros_like(X)
    ys[..., 0] = y
    tokens = torch.stack((X, ys), dim=2).reshape(B, 2 * n, d)
    return tokens[:, :-1]


class GPT2Regressor(nn.Module):
    """A GPT-2-style causal transformer predicting `y` at every `x` position of a prompt.

    **Arguments:** `d` (token dimension: the largest input dimension), `M_max` (largest number
    of in-context examples; `2 M_max + 1` learned positions), `width`, `layers`, `heads`
    (`width % heads == 0`), `mlp_ratio` (feed-forward width / width, 4 as GPT-2).

    Dropout is 0 (as Garg et al.'s GPT-2 configuration for this task), so a training step draws
    no random numbers inside the model.
    """

    def __init__(
        self, d: int, M_max: int, width: int, layers: int, heads: int, mlp_ratio: int = 4
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads}).")
        self.d = d
        self.M_max = M_max
        self.n_positions = 2 * M_max + 1
        self.read_in = nn.Linear(d, width)
        self.positions = nn.Embedding(self.n_positions, width)
        block = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=mlp_ratio * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(width)
        self.read_out = nn.Linear(width, 1)
        nn.init.normal_(self.positions.weight, std=0.02)  # GPT-2's initialisation of wpe

    def hidden(self, X: Tensor, y: Tensor) -> list[Tensor]:
        """The residual stream after the embedding and after every block (`layers + 1`
        tensors of shape `(B, 2n - 1, width)`), for probing."""
        tokens = interleave(X, y)
        T = tokens.shape[1]
        if T > self.n_positions:
            raise ValueError(
                f"a prompt of {X.shape[1]} points needs {T} positions; this model has "
                f"{self.n_positions} (M_max = {self.M_max} in-context examples)."
            )
        h = self.read_in(tokens) + self.positions.weight[:T]
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=h.device, dtype=h.dtype)
        out = [h]
        for block in self.blocks.layers:
            h = block(h, src_mask=mask, is_causal=True)
            out.append(h)
        return out

    def forward(self, X: Tensor, y: Tensor) -> Tensor:
        """Predictions `(B, n)`: entry `i` predicts `y_i` from `(x_k, y_k)_{k<i}` and `x_i`
        (as `simulations.icl.predictors.at_every_prefix`)."""
        h = self.hidden(X, y)[-1]
        return self.read_out(self.ln_f(h[:, ::2]))[..., 0]


def torch_embed(X: Tensor, y: Tensor, x_q: Tensor) -> Tensor:
    """The ZFB embedding `E = [[x_1 .. x_n, x_q], [y_1 .. y_n, 0]]`, `(B, d+1, n+1)`
    (`lsa.embed` in torch)."""
    top = torch.cat((X, x_q[:, None, :]), dim=1)  # (B, n+1, d)
    bottom = torch.cat((y, torch.zeros_like(y[:, :1])), dim=1)  # (B, n+1)
    return torch.cat((top.transpose(1, 2), bottom[:, None, :]), dim=1)


class TorchLSA(nn.Module):
    """The single linear self-attention layer of ZFB (eq. 3.3) in torch, parameters
    `W_PV`, `W_KQ` of shape `(d+1, d+1)`: `f(E) = E + W_PV E (E^T W_KQ E) / rho`, `rho` =
    columns - 1, no mask; the prediction is `f(E)[..., d, n]`."""

    def __init__(self, W_PV: Tensor, W_KQ: Tensor) -> None:
        super().__init__()
        if W_PV.shape != W_KQ.shape or W_PV.ndim != 2 or W_PV.shape[0] != W_PV.shape[1]:
            raise ValueError("W_PV and W_KQ must be square matrices of the same shape.")
        self.W_PV = nn.Parameter(W_PV.clone())
        self.W_KQ = nn.Parameter(W_KQ.clone())

    def forward(self, E: Tensor) -> Tensor:
        """The full map `f_LSA(E)` for `E (B, d+1, n+1)`."""
        rho = E.shape[-1] - 1
        attn = E.transpose(-1, -2) @ self.W_KQ @ E
        return E + self.W_PV @ E @ attn / rho

    def predict(self, X: Tensor, y: Tensor, x_q: Tensor) -> Tensor:
        """The prediction for prompts `X (B, n, d)`, `y (B, n)`, queries `x_q (B, d)`: `(B,)`."""
        return self.forward(torch_embed(X, y, x_q))[..., -1, -1]
