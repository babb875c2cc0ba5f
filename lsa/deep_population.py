"""The exact population risk of the masked sparse stack with matrix steps, and its gradient flow
(docs/deep.md, "Matrix steps: the exact population flow").

For the sparse family in Ahn et al.'s masked convention (`lsa.deep.sparse_weights`, "ahn") the
stack computes w_L of w_{l+1} = w_l - A_l grad R(w_l) from w_0 = 0 (Ahn et al. Lemma 1), so for
noiseless labels y = X w*,

    w_L - w* = -P(S) w*,     P(S) = (I - A_L S)(I - A_{L-1} S) ... (I - A_1 S),   S = X^T X / N,

and the risk at test length N (no 1/2, as `theory.risk`), with rows x_i, x_q ~ N(0, Sigma) and
w* ~ N(0, Sigma_w), is

    f(A) = E (x_q^T P(S) w*)^2 = E tr( P(S)^T Sigma P(S) Sigma_w ).

**Expansion.** P(S) = sum over subsets T = {t_1 < ... < t_k} of (-1)^k A_{t_k} S ... A_{t_1} S,
so f is a sum over pairs (T, T') of mixed Wishart moments E tr(S B_1 S B_2 ... S B_m) with
m = |T| + |T'| <= 2L and blocks B_j made of A's, their transposes, Sigma and Sigma_w.

**Mixed moments by Wick pairings.** With S = R S_z R, R = Sigma^{1/2}, S_z = Z^T Z / N (Z: N x d,
iid N(0, 1)), every block becomes R B_j R and

    E tr(S_z C_1 ... S_z C_m) = N^{-m} sum over the (2m-1)!! perfect matchings pi of the 2m
                                 vector slots  N^{c(pi)} prod_{cycles} tr(oriented block product),

where slot 2j (2j+1) is the left (right) vector of the j-th S_z = (1/N) sum_i z_i z_i^T, c(pi)
counts the sample classes (components of pi joined with "slots 2j and 2j+1 share a sample"), and
the index cycles run through the blocks forwards or transposed as the matching dictates. The
cycle structure of each matching is enumerated once per m (numpy); the products are evaluated
vectorised over matchings (JAX), so f is jit-able and differentiable in A, Sigma and Sigma_w.
m <= 6 (L <= 3: 10395 matchings) is supported.

This is lsa's own route. The tests compare it with `theory.deep.step_sizes_risk` (A_l = a_l I,
whose moments come from the loop equation) and with Monte Carlo through the literal stack.

**The flow** dA/dt = -grad f(A) over all L d^2 entries: diffrax Kvaerno5, float64, PID control,
the floored chord iteration, stopped when max |grad f| <= gtol * (curvature scale
tr(Sigma^2) tr(Sigma Sigma_w) / d); the Newton estimate ||H^{-1} grad f||_inf of the distance to
the fixed point and the smallest Hessian eigenvalue are reported at the end (a Hessian at every
step cost more than the solve). Failures raise `FlowError`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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
from .deep_flow import _matchings
from .precision import require_x64

__all__ = [
    "MAX_POPULATION_LAYERS",
    "MatrixFlowResult",
    "mixed_wishart_moment",
    "sparse_population_flow",
    "sparse_population_risk",
]

#: Largest L of the exact matrix-step risk: the expansion needs mixed moments of order 2L <= 6.
MAX_POPULATION_LAYERS = 3


# ----------------------------------------------------------------------------------------------
# Mixed Wishart moments


@functools.cache
def _cycle_structure(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every perfect matching of the 2m slots of tr(S_z C_1 ... S_z C_m): the order in which
    the index cycles visit the blocks (`order[p, s]` in 0..2m-1: block j forwards is j, transposed
    is m + j), whether step s closes a cycle (`close[p, s]`), and the sample-class count c(pi)
    (`classes[p]`). Shapes ((2m-1)!!, m), ((2m-1)!!, m), ((2m-1)!!,)."""
    pi = _matchings(2 * m).astype(np.int64)
    P = pi.shape[0]
    order = np.zeros((P, m), np.int64)
    close = np.zeros((P, m), bool)
    classes = np.zeros(P, np.int64)
    for p in range(P):
        partner = pi[p]
        # Sample classes: union-find over the m samples joined by the matching.
        parent = list(range(m))

        def find(x: int, parent: list[int] = parent) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for s in range(2 * m):
            a, b = find(s // 2), find(int(partner[s]) // 2)
            if a != b:
                parent[a] = b
        classes[p] = len({find(j) for j in range(m)})
        # Index cycles. Block j (between S_z number j and number j+1) has its row index on slot
        # 2j+1 and its column index on slot 2((j+1) mod m).
        seen = [False] * m
        s_out = 0
        for j0 in range(m):
            if seen[j0]:
                continue
            start_slot = 2 * j0 + 1
            j, forward = j0, True
            while True:
                seen[j] = True
                order[p, s_out] = j if forward else m + j
                end_slot = 2 * ((j + 1) % m) if forward else 2 * j + 1
                nxt = int(partner[end_slot])
                s_out += 1
                if nxt == start_slot:
                    close[p, s_out - 1] = True
                    break
                if nxt % 2 == 1:  # a row slot: the next block forwards
                    j, forward = nxt // 2, True
                else:  # a column slot: the block ending there, transposed
                    j, forward = (nxt // 2 - 1) % m, False
    return order, close, classes


def mixed_wishart_moment(
    C: Float[ArrayLike, "m d d"], N: int | Float[ArrayLike, ""]
) -> Float[Array, ""]:
    """E tr(S C_1 S C_2 ... S C_m) for S = Z^T Z / N, Z an N x d matrix of iid N(0, 1) entries,
    by Wick pairings (module docstring). Exact up to floating-point round-off; m <= 6.

    **Arguments:** `C` (m, d, d) the blocks (m >= 1); `N` the number of samples (may be traced).
    """
    C = jnp.asarray(C)
    m = C.shape[0]
    if not 1 <= m <= 2 * MAX_POPULATION_LAYERS:
        raise ValueError(f"mixed moments of order m in [1, 6] are supported; got m = {m}.")
    order, close, classes = _cycle_structure(m)
    oriented = jnp.concatenate([C, jnp.swapaxes(C, -1, -2)])  # (2m, d, d)
    d = C.shape[-1]
    flat = oriented.reshape(2 * m, d * d)
    eye = jnp.eye(d, dtype=C.dtype)

    # Unrolled over the m positions, batched over the matchings: M_p <- M_p @ block; at a cycle's
    # end acc_p *= tr(M_p) and M_p <- I. (A lax.scan: 1.5-2x slower under autodiff.)
    P = order.shape[0]
    M = jnp.broadcast_to(eye, (P, d, d))
    acc = jnp.ones((P,), C.dtype)
    for s in range(m):
        # Select the blocks by a one-hot product, not a gather: its transpose under autodiff is
        # a dense product instead of a scatter-add (Jacobian 1.46 s against 1.92 s, L = 3, d = 3).
        onehot = jnp.asarray(np.eye(2 * m)[order[:, s]], C.dtype)  # (P, 2m)
        M = M @ (onehot @ flat).reshape(P, d, d)
        if close[:, s].any():
            end = jnp.asarray(close[:, s])
            acc = jnp.where(end, acc * jnp.trace(M, axis1=-2, axis2=-1), acc)
            M = jnp.where(end[:, None, None], eye, M)
    vals = acc
    N = jnp.asarray(N, C.dtype)
    weights = N ** (jnp.asarray(classes, C.dtype) - m)
    return jnp.sum(weights * vals)


# ----------------------------------------------------------------------------------------------
# The risk


def _sqrtm_spd(Sigma: Array) -> Array:
    lam, V = jnp.linalg.eigh(Sigma)
    return (V * jnp.sqrt(lam)) @ V.T


def _terms(L: int) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """(sign, T, T') for all pairs of subsets of the layers, T sorted increasingly."""
    subsets = [c for k in range(L + 1) for c in itertools.combinations(range(L), k)]
    return [((-1) ** (len(T) + len(Tp)), T, Tp) for T in subsets for Tp in subsets]


def sparse_population_risk(
    A: Float[ArrayLike, "L d d"],
    N: int,
    Sigma: Float[ArrayLike, "d d"] | None = None,
    Sigma_w: Float[ArrayLike, "d d"] | None = None,
) -> Float[Array, ""]:
    """The exact risk E(y_hat - <w*, x_q>)^2 (no 1/2) of the masked sparse stack with matrix
    steps A_l [Ahn et al. eq. (2), Lemma 1; `lsa.deep.sparse_weights`, convention "ahn"] at test
    length N, for x, x_q ~ N(0, Sigma), w* ~ N(0, Sigma_w), noiseless labels (module docstring).

    **Arguments:**

    - `A`: the steps, shape (L, d, d), 1 <= L <= 3 (any real matrices).
    - `N`: the prompt length (training = test).
    - `Sigma`, `Sigma_w`: covariances of x and of w* (default identity); symmetric positive
      definite (not checked here: the flow checks them once).

    JAX-differentiable in A, Sigma and Sigma_w; jit-able with N static.
    """
    A = jnp.asarray(A)
    L, d = A.shape[0], A.shape[-1]
    if A.ndim != 3 or A.shape[1:] != (d, d) or not 1 <= L <= MAX_POPULATION_LAYERS:
        raise ValueError(
            f"`A` must have shape (L, d, d) with 1 <= L <= {MAX_POPULATION_LAYERS}; got {A.shape}."
        )
    eye = jnp.eye(d, dtype=A.dtype)
    Sig = eye if Sigma is None else jnp.asarray(Sigma, A.dtype)
    Sw = eye if Sigma_w is None else jnp.asarray(Sigma_w, A.dtype)
    R = _sqrtm_spd(Sig)
    total = jnp.zeros((), A.dtype)
    by_order: dict[int, tuple[list[float], list[Array]]] = {}
    for sign, T, Tp in _terms(L):
        # Tokens of the cyclic word tr(P_T'^T Sigma P_T Sigma_w); None marks an S.
        tokens: list[Array | None] = []
        for t in Tp:  # P_T'^T = S A_{t'_1}^T S A_{t'_2}^T ... S A_{t'_k'}^T
            tokens += [None, A[t].T]
        tokens.append(Sig)
        for t in reversed(T):  # P_T = A_{t_k} S ... A_{t_1} S
            tokens += [A[t], None]
        tokens.append(Sw)
        m = tokens.count(None)
        if m == 0:
            total = total + sign * jnp.trace(Sig @ Sw)
            continue
        # Rotate so that the word starts with an S, then collect the block after each S.
        first = tokens.index(None)
        tokens = tokens[first:] + tokens[:first]
        blocks: list[Array] = []
        for tok in tokens:
            if tok is None:
                blocks.append(eye)
            else:
                blocks[-1] = blocks[-1] @ tok
        signs, Cs = by_order.setdefault(m, ([], []))
        signs.append(float(sign))
        Cs.append(jnp.stack([R @ b @ R for b in blocks]))
    # One vectorised evaluation per order m (not one per term).
    for _m, (signs, Cs) in sorted(by_order.items()):
        vals = jax.vmap(lambda C: mixed_wishart_moment(C, N))(jnp.stack(Cs))
        total = total + jnp.dot(jnp.asarray(signs, A.dtype), vals)
    return total


# ----------------------------------------------------------------------------------------------
# The flow


@dataclasses.dataclass(frozen=True)
class MatrixFlowResult:
    """A solved matrix-step population flow.

    - `ts (T,)`, `A_traj (T, L, d, d)`, `risk (T,)`: accepted steps (with t = 0);
    - `A (L, d, d)`: the end point; `newton_distance`: ||H^{-1} grad f||_inf there;
    - `hessian_min_eig`: the smallest Hessian eigenvalue at the end (> 0: a strict minimum);
    - `status`: "converged"; `stats`: solver statistics.
    """

    ts: np.ndarray
    A_traj: np.ndarray
    risk: np.ndarray
    newton_distance: float
    hessian_min_eig: float
    status: str
    stats: dict[str, Any]

    @property
    def A(self) -> np.ndarray:
        return self.A_traj[-1]


def _flat_risk(v: Array, args: tuple[Any, ...]) -> Array:
    shape, N, Sig, Sw = args
    return sparse_population_risk(v.reshape(shape), N, Sig, Sw)


def _vf(t, v, args):  # type: ignore[no-untyped-def]
    return -jax.grad(_flat_risk)(v, args)


def _newton(v: Array, args: tuple[Any, ...]) -> tuple[Array, Array]:
    g = jax.grad(_flat_risk)(v, args)
    H = jax.hessian(_flat_risk)(v, args)
    H = 0.5 * (H + H.T)
    lam_min = jnp.linalg.eigvalsh(H)[0]
    step = jnp.linalg.solve(H, g)
    return jnp.where(lam_min > 0, jnp.max(jnp.abs(step)), jnp.inf), lam_min


@eqx.filter_jit
def _solve(v0, args, t1, dt0, rtol, atol, gtol, *, max_steps):  # type: ignore[no-untyped-def]
    solver = diffrax.Kvaerno5(root_finder=FlooredChord(rtol=1e-6, atol=1e-10, norm=optx.max_norm))
    # A gradient test (cheap), not the Newton estimate at every step (a Hessian per step cost
    # more than the solve); the Newton distance is measured once at the end.
    event = diffrax.Event(
        lambda t, y, a, **kw: jnp.max(jnp.abs(jax.grad(_flat_risk)(y, a))) <= gtol
    )

    def save(t, y, a):  # type: ignore[no-untyped-def]
        return {"y": y, "risk": _flat_risk(y, a)}

    return diffrax.diffeqsolve(
        diffrax.ODETerm(_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=v0,
        args=args,
        saveat=diffrax.SaveAt(t0=True, steps=True, fn=save),
        stepsize_controller=_controller(rtol, atol, 0.2, 0.4),
        event=event,
        max_steps=max_steps,
        throw=False,
    )


_newton_jit = eqx.filter_jit(_newton)


def _check_spd(name: str, S: np.ndarray, d: int) -> None:
    if S.shape != (d, d) or not np.all(np.isfinite(S)):
        raise ValueError(f"`{name}` must be a finite ({d}, {d}) matrix; got shape {S.shape}.")
    if not np.allclose(S, S.T, rtol=1e-12, atol=1e-14 * np.abs(S).max()):
        raise ValueError(f"`{name}` must be symmetric; symmetrise it, e.g. (S + S.T) / 2.")
    if np.linalg.eigvalsh(S)[0] <= 0:
        raise ValueError(f"`{name}` must be positive definite; its smallest eigenvalue is <= 0.")


def sparse_population_flow(
    A0: Float[ArrayLike, "L d d"],
    N: int,
    Sigma: Float[ArrayLike, "d d"] | None = None,
    Sigma_w: Float[ArrayLike, "d d"] | None = None,
    *,
    gtol: float = 1e-12,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    t_max: float = 1e9,
    max_steps: int = 20_000,
) -> MatrixFlowResult:
    """Gradient flow dA/dt = -grad f(A) over all entries of the matrix steps of a masked sparse
    stack on its exact population risk f (`sparse_population_risk`; Ahn et al. eq. (2) trained by
    gradient flow as ZFB eq. (3.9)), from `A0`, until max |grad f| <= gtol times the curvature
    scale tr(Sigma^2) tr(Sigma Sigma_w) / d. Check `hessian_min_eig > 0` (a strict minimum) and
    `newton_distance` (the estimated distance to it) in the result.

    **Arguments:**

    - `A0`: the start, shape (L, d, d), 1 <= L <= 3.
    - `N`: prompt length; `Sigma`, `Sigma_w`: covariances of x and w* (default identity).
    - `gtol`: the relative stopping threshold; `rtol`, `atol`: step-size control; `t_max`: horizon;
      `max_steps`: step budget (also the size of the saved trajectory).

    **Returns:** a `MatrixFlowResult`. Raises `FlowError` (status "horizon", "max_steps",
    "non_finite", "solver_failure") when it does not converge (a flow that stalls at a saddle
    ends at the horizon), `ValueError` on bad input.
    """
    require_x64("lsa.deep_population.sparse_population_flow")
    A0_arr = np.asarray(A0, dtype=np.float64)
    if A0_arr.ndim != 3 or A0_arr.shape[1] != A0_arr.shape[2]:
        raise ValueError(f"`A0` must have shape (L, d, d); got {A0_arr.shape}.")
    L, d = A0_arr.shape[0], A0_arr.shape[1]
    if not 1 <= L <= MAX_POPULATION_LAYERS:
        raise ValueError(
            f"`A0` has L = {L} layers; the exact risk supports 1 <= L <= "
            f"{MAX_POPULATION_LAYERS} (mixed moments of order 2L <= 6). For deeper stacks use "
            "lsa.deep_empirical.sparse_empirical_flow."
        )
    if not np.all(np.isfinite(A0_arr)):
        raise ValueError("`A0` contains NaN or inf; pass finite steps.")
    if not isinstance(N, int | np.integer) or isinstance(N, bool) or N < 1:
        raise ValueError(f"`N` must be an integer >= 1; got {N!r}.")
    Sig = np.eye(d) if Sigma is None else np.asarray(Sigma, dtype=np.float64)
    Sw = np.eye(d) if Sigma_w is None else np.asarray(Sigma_w, dtype=np.float64)
    _check_spd("Sigma", Sig, d)
    _check_spd("Sigma_w", Sw, d)
    for name, v in (("gtol", gtol), ("rtol", rtol), ("atol", atol), ("t_max", t_max)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` must be a positive finite number; got {v!r}.")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer; got {max_steps!r}.")
    args = ((L, d, d), int(N), _f64(Sig), _f64(Sw))
    # Curvature scale: f is quadratic in each A_l with coefficient ~ tr(Sigma^2) tr(Sigma Sigma_w).
    scale = float(np.trace(Sig @ Sig) * np.trace(Sig @ Sw) / d)
    t_start = time.perf_counter()
    with _checks_without_callbacks():
        sol = _solve(
            _f64(A0_arr.ravel()),
            args,
            _f64(t_max),
            _f64(1e-3 / max(scale, 1e-300)),
            _f64(rtol),
            _f64(atol),
            _f64(gtol * scale),
            max_steps=max_steps,
        )
    jax.block_until_ready(sol.ys)
    stats, keep = finish_steady_state(sol, t_start, "matrix-step population flow")
    ts = np.asarray(sol.ts)[keep]
    ys = np.asarray(sol.ys["y"])[keep]
    risk = np.asarray(sol.ys["risk"])[keep]
    status = stats["status"]
    nd, lam_min = _newton_jit(jnp.asarray(ys[-1]), args)
    return MatrixFlowResult(
        ts=ts,
        A_traj=ys.reshape(-1, L, d, d),
        risk=risk,
        newton_distance=float(nd),
        hessian_min_eig=float(lam_min),
        status=status,
        stats=stats,
    )
