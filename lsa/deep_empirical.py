"""The empirical loss of an L-layer LSA stack on a fixed prompt set, its fast evaluation from
per-prompt Gram matrices, and its gradient flows (docs/deep.md §4).

**Why a Gram matrix suffices.** Every layer of `lsa.deep` multiplies the embedding from the left
by a (d+1) x (d+1) matrix that depends on the prompt only through its Gram matrix:

    Z_{l+1} = Z_l + W_PV Z_l D (Z_l^T W_KQ Z_l) / n = M_l Z_l,
    M_l = I + W_PV G_l W_KQ,        G_l = Z_l D Z_l^T / n,

so `Z_l = M_{l-1} ... M_0 Z_0`, and since `D` acts on the right, `G_{l+1} = M_l G_l M_l^T`.
The prediction needs only the query column, `q_{l+1} = M_l q_l` with `q_0 = (x_q, 0)`, and its
label entry: `y_hat = sign * e_d^T M_{L-1} q_{L-1}`. Per prompt the stack is therefore a
function of `G_0 = Z_0 D Z_0^T / n` (with the query column for "zfb", without it for "ahn") and
`x_q` alone, at O(L (d+1)^3) instead of the literal map's O(L (d+1) (n+1)^2): the (n+1) x (n+1)
attention matrix is never formed. The last layer needs only the last row of M_{L-1}, which costs
O((d+1)^2). `deep_stats` computes `G_0` once per prompt set (O(B n (d+1)^2)); the empirical loss
and its gradient (JAX autodiff through the short recursion, jit-compiled, batched over prompts)
are then exact rewrites of the literal map: equal to it to round-off (tested to 1e-12 relative,
value and gradient, `tests/test_deep_empirical.py`; timed in `benchmarks/deep_empirical.py`).

**Flows.** `deep_empirical_flow` integrates `dW/dt = -grad L_hat(W)` over all `2 L (d+1)^2`
entries of `(W_PV, W_KQ)` (either convention), `sparse_empirical_flow` over the `L d^2` entries of
the sparse family A_l (`lsa.deep.sparse_weights`), with diffrax (Kvaerno5: an ESDIRK method, one
dense Jacobian per step, float64, PID step control, the floored chord iteration of
`lsa._diffrax`), until the gradient's largest entry falls below `gtol` (a steady state).
Failures raise `FlowError` with a status of `lsa._options.STATUS` ("horizon", "max_steps",
"non_finite", "solver_failure").
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._diffrax import (
    FlooredChord,
    _checks_without_callbacks,
    _controller,
    _f64,
    finish_steady_state,
)
from .deep import Convention, _check_convention, deep_forward, readout_sign, sparse_weights
from .model import embed
from .precision import require_x64

__all__ = [
    "DeepFlowResult",
    "DeepStats",
    "deep_empirical_flow",
    "deep_empirical_loss",
    "deep_empirical_value_and_grad",
    "deep_literal_loss",
    "deep_stats",
    "deep_stats_predict",
    "sparse_empirical_flow",
    "sparse_empirical_loss",
    "sparse_empirical_value_and_grad",
]


class DeepStats(eqx.Module):
    """What an L-layer stack sees of each prompt (module docstring), batch first:

    - `G0 (B, d+1, d+1)`: the Gram matrices `Z_0 D Z_0^T / n` (the mask of the convention);
    - `q0 (B, d+1)`: the query columns `(x_q, 0)`;
    - `y_q (B,)`: the targets;
    - `sign`: the readout sign of the convention (+1 "zfb", -1 "ahn"); `convention`; `n`.
    """

    G0: Float[Array, "B d+1 d+1"]
    q0: Float[Array, "B d+1"]
    y_q: Float[Array, " B"]
    sign: float = eqx.field(static=True)
    convention: str = eqx.field(static=True)
    n: int = eqx.field(static=True)

    @property
    def B(self) -> int:
        return int(self.G0.shape[0])

    @property
    def d(self) -> int:
        return int(self.G0.shape[-1]) - 1


def deep_stats(
    X: Float[ArrayLike, "B n d"],
    y: Float[ArrayLike, "B n"],
    x_q: Float[ArrayLike, "B d"],
    y_q: Float[ArrayLike, " B"],
    convention: Convention = "zfb",
) -> DeepStats:
    """Per-prompt statistics of the stack [ZFB eq. 3.3 stacked; Ahn et al. eq. (2)]:
    `G0 = (sum_i z_i z_i^T + [zfb] z_q z_q^T) / n` with `z_i = (x_i, y_i)`, `z_q = (x_q, 0)`.

    **Arguments:** prompts `X (B, n, d)`, `y (B, n)`, queries `x_q (B, d)`, targets `y_q (B,)`,
    and the `convention` ("zfb": the query column is a key and value; "ahn": masked).
    """
    mask = _check_convention(convention)
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    x_q = jnp.asarray(x_q)
    y_q = jnp.asarray(y_q)
    if X.ndim != 3 or y.shape != X.shape[:2] or x_q.shape != (X.shape[0], X.shape[2]):
        raise ValueError(
            f"prompts must be `X (B, n, d)`, `y (B, n)`, `x_q (B, d)`; got {X.shape}, {y.shape}, "
            f"{x_q.shape}."
        )
    if y_q.shape != (X.shape[0],):
        raise ValueError(f"`y_q` must have shape ({X.shape[0]},); got {y_q.shape}.")
    B, n, _d = X.shape
    if n < 1:
        raise ValueError("the prompts need n >= 1 in-context examples.")
    Zc = jnp.concatenate([X, y[..., None]], axis=-1)  # (B, n, d+1): the context columns
    G0 = jnp.einsum("bni,bnj->bij", Zc, Zc)
    q0 = jnp.concatenate([x_q, jnp.zeros((B, 1), x_q.dtype)], axis=-1)
    if not mask:
        G0 = G0 + q0[:, :, None] * q0[:, None, :]
    return DeepStats(
        G0=G0 / n, q0=q0, y_q=y_q, sign=readout_sign(convention), convention=convention, n=n
    )


def _check_stack(W_PV: Array, W_KQ: Array, D: int) -> None:
    for name, W in (("W_PV", W_PV), ("W_KQ", W_KQ)):
        if W.ndim != 3 or W.shape[1:] != (D, D) or W.shape[0] < 1:
            raise ValueError(
                f"`{name}` must be a stack of shape (L, {D}, {D}) with L >= 1 to match the "
                f"prompts' d+1 = {D}; got {W.shape}."
            )
    if W_PV.shape[0] != W_KQ.shape[0]:
        raise ValueError(
            f"`W_PV` and `W_KQ` must have the same number of layers; got {W_PV.shape[0]} and "
            f"{W_KQ.shape[0]}."
        )


def _T(A: Array) -> Array:
    return jnp.swapaxes(A, -1, -2)


def _forward(W_PV: Array, W_KQ: Array, stats: DeepStats) -> tuple[Array, list, tuple]:
    """The recursion of the module docstring, batched over prompts (batch first: XLA's batched
    products of small matrices; a batch-last layout measured 3-6x slower on CPU); returns the
    predictions and what the backward pass needs (per layer: G_l, q_l, H_l = G_l K_l,
    v_l = H_l q_l, M_l, M_l G_l)."""
    G, q = stats.G0, stats.q0
    eye = jnp.eye(G.shape[-1], dtype=G.dtype)
    tape = []
    for ell in range(W_PV.shape[0] - 1):
        P, K = W_PV[ell], W_KQ[ell]
        H = G @ K
        v = jnp.einsum("bij,bj->bi", H, q)
        M = eye + jnp.matmul(P, H)
        MG = M @ G
        tape.append((G, q, H, v, M, MG))
        q = q + v @ P.T
        G = MG @ _T(M)  # M G M^T
    # last layer: only the label entry, q_d + p^T G K q with p = W_PV[d, :]
    p, K = W_PV[-1][-1], W_KQ[-1]
    Kq = q @ K.T
    Gp = jnp.einsum("bij,i->bj", G, p)  # G^T p
    yhat = stats.sign * (q[:, -1] + jnp.sum(Gp * Kq, axis=-1))
    return yhat, tape, (G, q, p, K, Kq, Gp)


def deep_stats_predict(
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    stats: DeepStats,
) -> Float[Array, " B"]:
    """The stack's predictions `readout_sign * Z_L[d, n]` from the statistics (module
    docstring): equal to `lsa.deep.deep_predict` on the embedded prompts up to round-off."""
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    _check_stack(W_PV, W_KQ, stats.d + 1)
    return _forward(W_PV, W_KQ, stats)[0]


def deep_empirical_loss(
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    stats: DeepStats,
) -> Float[Array, ""]:
    """The empirical loss `(1/2B) sum_b (y_hat_b - y_q,b)^2` of the stack [ZFB eq. 3.7 with the
    stack's prediction], from the statistics (module docstring); differentiable by JAX."""
    r = deep_stats_predict(W_PV, W_KQ, stats) - stats.y_q
    return 0.5 * jnp.mean(r * r)


def deep_empirical_value_and_grad(
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    stats: DeepStats,
) -> tuple[Float[Array, ""], tuple[Float[Array, "L d+1 d+1"], Float[Array, "L d+1 d+1"]]]:
    """`deep_empirical_loss` and its gradient in `(W_PV, W_KQ)` by a hand-written backward pass
    through the recursion (the fast route: about 3x the forward cost, where autodiff of the
    batched products costs about 8x on CPU). Plain JAX code, so it can itself be differentiated
    in forward mode (the flows' Jacobians). Backward of one layer, with the adjoints `Gb` of
    `G_{l+1} = M G M^T` and `qb` of `q_{l+1} = q + P v`:

        Mb = (Gb + Gb^T) M G,   Gb <- M^T Gb M + Hb K^T,   vb = P^T qb,
        Hb = vb q^T + P^T Mb,   qb <- qb + H^T vb,   Pb += sum_b (qb v^T + Mb H^T),
        Kb += sum_b G^T Hb.
    """
    W_PV = jnp.asarray(W_PV)
    W_KQ = jnp.asarray(W_KQ)
    _check_stack(W_PV, W_KQ, stats.d + 1)
    yhat, tape, (G, q, p, K, Kq, Gp) = _forward(W_PV, W_KQ, stats)
    r = yhat - stats.y_q
    loss = 0.5 * jnp.mean(r * r)
    rb = stats.sign * r / r.shape[0]  # d loss / d (Z_L[d, n]) per prompt
    L = W_PV.shape[0]
    gP = [jnp.zeros_like(W_PV[0])] * L
    gK = [jnp.zeros_like(W_KQ[0])] * L
    # last layer: Z_L[d, n] = q_d + p^T G K q
    v = jnp.einsum("bij,bj->bi", G, Kq)
    gP[-1] = gP[-1].at[-1].set(rb @ v)
    gK[-1] = (Gp * rb[:, None]).T @ q
    qb = rb[:, None] * (Gp @ K)
    qb = qb.at[:, -1].add(rb)
    Gb = p[None, :, None] * (Kq * rb[:, None])[:, None, :]
    for ell in range(L - 2, -1, -1):
        G, q, H, v, M, MG = tape[ell]
        P, K = W_PV[ell], W_KQ[ell]
        Mb = (Gb + _T(Gb)) @ MG
        Gb_new = _T(M) @ (Gb @ M)  # M^T Gb M
        vb = qb @ P
        Hb = vb[:, :, None] * q[:, None, :] + jnp.matmul(P.T, Mb)
        gP[ell] = qb.T @ v + jnp.einsum("bik,bjk->ij", Mb, H)
        gK[ell] = jnp.einsum("bji,bjk->ik", G, Hb)
        qb = qb + jnp.einsum("bji,bj->bi", H, vb)
        Gb = Gb_new + Hb @ K.T
    return loss, (jnp.stack(gP), jnp.stack(gK))


def sparse_empirical_loss(A: Float[ArrayLike, "L d d"], stats: DeepStats) -> Float[Array, ""]:
    """`deep_empirical_loss` at the sparse-family weights `lsa.deep.sparse_weights(A)`."""
    W_PV, W_KQ = sparse_weights(A)
    return deep_empirical_loss(W_PV, W_KQ, stats)


def sparse_empirical_value_and_grad(
    A: Float[ArrayLike, "L d d"], stats: DeepStats
) -> tuple[Float[Array, ""], Float[Array, "L d d"]]:
    """`sparse_empirical_loss` and its gradient in A by the fast route: `W_KQ[:d, :d] = -A^T`,
    so `grad_A = -(grad_{W_KQ}[:d, :d])^T`."""
    W_PV, W_KQ = sparse_weights(A)
    loss, (_, gK) = deep_empirical_value_and_grad(W_PV, W_KQ, stats)
    return loss, -jnp.swapaxes(gK[:, :-1, :-1], -1, -2)


def deep_literal_loss(
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    X: Float[ArrayLike, "B n d"],
    y: Float[ArrayLike, "B n"],
    x_q: Float[ArrayLike, "B d"],
    y_q: Float[ArrayLike, " B"],
    convention: Convention = "zfb",
) -> Float[Array, ""]:
    """The same loss by the literal map: embed every prompt (`lsa.embed`), apply
    `lsa.deep.deep_forward`, read `readout_sign * Z_L[d, n]`. The reference of the tests and the
    baseline of the benchmark."""
    E = embed(X, y, x_q)
    pred = readout_sign(convention) * deep_forward(E, W_PV, W_KQ, convention)[..., -1, -1]
    r = pred - jnp.asarray(y_q)
    return 0.5 * jnp.mean(r * r)


# ----------------------------------------------------------------------------------------------
# Flows


@dataclasses.dataclass(frozen=True)
class DeepFlowResult:
    """A solved empirical flow of a deep stack.

    - `ts (T,)`, `loss (T,)` (empirical loss with the 1/2) at the accepted steps (with t = 0);
    - `params_traj`: `{"W_PV": (T, L, d+1, d+1), "W_KQ": ...}` or `{"A": (T, L, d, d)}`;
    - `grad_norm`: the largest gradient entry at the end; `status`: "converged"; `stats`.
    """

    ts: np.ndarray
    loss: np.ndarray
    params_traj: dict[str, np.ndarray]
    grad_norm: float
    status: str
    stats: dict[str, Any]

    @property
    def final(self) -> dict[str, np.ndarray]:
        """The final parameters (the last saved step)."""
        return {k: v[-1] for k, v in self.params_traj.items()}


def _full_loss(p: dict[str, Array], stats: DeepStats) -> Array:
    return deep_empirical_loss(p["W_PV"], p["W_KQ"], stats)


def _sparse_loss(p: dict[str, Array], stats: DeepStats) -> Array:
    return sparse_empirical_loss(p["A"], stats)


def _full_grad(p: dict[str, Array], stats: DeepStats) -> dict[str, Array]:
    _, (gP, gK) = deep_empirical_value_and_grad(p["W_PV"], p["W_KQ"], stats)
    return {"W_PV": gP, "W_KQ": gK}


def _sparse_grad(p: dict[str, Array], stats: DeepStats) -> dict[str, Array]:
    return {"A": sparse_empirical_value_and_grad(p["A"], stats)[1]}


_LOSSES = {"full": _full_loss, "sparse": _sparse_loss}
_GRADS = {"full": _full_grad, "sparse": _sparse_grad}


def _vf(kind: str):  # type: ignore[no-untyped-def]
    grad = _GRADS[kind]

    def vf(t, y, stats):  # type: ignore[no-untyped-def]
        return jax.tree_util.tree_map(jnp.negative, grad(y, stats))

    return vf


_VF = {k: _vf(k) for k in _LOSSES}


def _gmax(kind: str, y: dict[str, Array], stats: DeepStats) -> Array:
    g = _GRADS[kind](y, stats)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(v)) for v in jax.tree_util.tree_leaves(g)]))


@eqx.filter_jit
def _solve(kind, y0, stats, t1, dt0, rtol, atol, gtol, *, max_steps):  # type: ignore[no-untyped-def]
    solver = diffrax.Kvaerno5(root_finder=FlooredChord(rtol=1e-6, atol=1e-10, norm=optx.max_norm))
    event = diffrax.Event(lambda t, y, args, **kw: _gmax(kind, y, args) <= gtol)

    def save(t, y, args):  # type: ignore[no-untyped-def]
        return {"y": y, "loss": _LOSSES[kind](y, args)}

    return diffrax.diffeqsolve(
        diffrax.ODETerm(_VF[kind]),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=stats,
        saveat=diffrax.SaveAt(t0=True, steps=True, fn=save),
        stepsize_controller=_controller(rtol, atol, 0.2, 0.4),
        event=event,
        max_steps=max_steps,
        throw=False,
    )


def _check_positive(name: str, v: float) -> None:
    if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
        raise ValueError(f"`{name}` must be a positive finite number; got {v!r}.")


def _run_flow(
    kind: str,
    y0: dict[str, np.ndarray],
    stats: DeepStats,
    *,
    gtol: float,
    rtol: float,
    atol: float,
    t_max: float,
    max_steps: int,
    dt0: float,
) -> DeepFlowResult:
    for name, v in (("gtol", gtol), ("rtol", rtol), ("atol", atol), ("t_max", t_max)):
        _check_positive(name, v)
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer; got {max_steps!r}.")
    for label, arr in y0.items():
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"the start `{label}` contains NaN or inf; pass finite weights.")
    t_start = time.perf_counter()
    with _checks_without_callbacks():
        sol = _solve(
            kind,
            {k: _f64(v) for k, v in y0.items()},
            stats,
            _f64(t_max),
            _f64(dt0),
            _f64(rtol),
            _f64(atol),
            _f64(gtol),
            max_steps=max_steps,
        )
    jax.block_until_ready(sol.ys)
    out, keep = finish_steady_state(
        sol, t_start, "deep empirical flow", B=stats.B, convention=stats.convention
    )
    ts = np.asarray(sol.ts)[keep]
    traj = {k: np.asarray(v)[keep] for k, v in sol.ys["y"].items()}
    loss = np.asarray(sol.ys["loss"])[keep]
    status = out["status"]
    last = {k: jnp.asarray(v[-1]) for k, v in traj.items()}
    gnorm = float(_gmax_jit(kind, last, stats))
    return DeepFlowResult(
        ts=ts, loss=loss, params_traj=traj, grad_norm=gnorm, status=status, stats=out
    )


_gmax_jit = eqx.filter_jit(_gmax)


def deep_empirical_flow(
    stats: DeepStats,
    W_PV: Float[ArrayLike, "L d+1 d+1"],
    W_KQ: Float[ArrayLike, "L d+1 d+1"],
    *,
    gtol: float = 1e-10,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    t_max: float = 1e8,
    max_steps: int = 20_000,
) -> DeepFlowResult:
    """Gradient flow `dW/dt = -grad L_hat(W)` over all entries of an L-layer stack [ZFB eq. 3.9
    with the empirical loss of the stack], in the convention of `stats`, from `(W_PV, W_KQ)`,
    until the largest gradient entry is `<= gtol`.

    **Arguments:**

    - `stats`: the training prompts (`deep_stats`, which fixes the convention).
    - `W_PV`, `W_KQ`: the start, shape (L, d+1, d+1) each.
    - `gtol`: the steady-state threshold on `max |grad|`; `rtol`, `atol`: step-size control;
      `t_max`: horizon; `max_steps`: step budget (also the size of the saved trajectory).

    **Returns:** a `DeepFlowResult` with `params_traj = {"W_PV", "W_KQ"}`. Raises `FlowError`
    (status "horizon", "max_steps", "non_finite", "solver_failure") when it does not converge.
    """
    require_x64("lsa.deep_empirical.deep_empirical_flow")
    if not isinstance(stats, DeepStats):
        raise TypeError(
            f"`stats` must be a DeepStats (lsa.deep_empirical.deep_stats); got {stats!r}."
        )
    Wp = np.asarray(W_PV, dtype=np.float64)
    Wk = np.asarray(W_KQ, dtype=np.float64)
    _check_stack(jnp.asarray(Wp), jnp.asarray(Wk), stats.d + 1)
    scale = float(jnp.mean(jnp.sum(stats.G0 * stats.G0, axis=(-1, -2))))
    return _run_flow(
        "full",
        {"W_PV": Wp, "W_KQ": Wk},
        stats,
        gtol=gtol,
        rtol=rtol,
        atol=atol,
        t_max=t_max,
        max_steps=max_steps,
        dt0=1e-3 / max(scale, 1.0),
    )


def sparse_empirical_flow(
    stats: DeepStats,
    A: Float[ArrayLike, "L d d"],
    *,
    gtol: float = 1e-10,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    t_max: float = 1e8,
    max_steps: int = 20_000,
) -> DeepFlowResult:
    """Gradient flow `dA/dt = -grad_A L_hat(sparse_weights(A))` over the `L d^2` entries of the
    sparse family [Ahn et al. eq. (2), Lemma 1; `lsa.deep.sparse_weights`], in the convention of
    `stats`, from `A (L, d, d)`, until `max |grad| <= gtol`. Everything else as
    `deep_empirical_flow`; `params_traj = {"A"}`."""
    require_x64("lsa.deep_empirical.sparse_empirical_flow")
    if not isinstance(stats, DeepStats):
        raise TypeError(
            f"`stats` must be a DeepStats (lsa.deep_empirical.deep_stats); got {stats!r}."
        )
    A0 = np.asarray(A, dtype=np.float64)
    d = stats.d
    if A0.ndim != 3 or A0.shape[1:] != (d, d) or A0.shape[0] < 1:
        raise ValueError(
            f"`A` must have shape (L, {d}, {d}) with L >= 1 to match the prompts; got {A0.shape}."
        )
    scale = float(jnp.mean(jnp.sum(stats.G0 * stats.G0, axis=(-1, -2))))
    return _run_flow(
        "sparse",
        {"A": A0},
        stats,
        gtol=gtol,
        rtol=rtol,
        atol=atol,
        t_max=t_max,
        max_steps=max_steps,
        dt0=1e-3 / max(scale, 1.0),
    )
