"""Gradient flow of the scalar step sizes of a masked sparse LSA stack on its exact risk
(docs/deep.md).

For isotropic x, x_q ~ N(0, I_d), w ~ N(0, I_d), noiseless labels and prompt length N (training =
test), the masked sparse stack with A_l = a_l I (`lsa.deep.sparse_weights`, convention "ahn")
computes L steps of gradient descent from 0, and its risk (no 1/2) is

    f(a) = E tr prod_l (I - a_l S)^2 = sum_{i,j} c_i c_j m_{i+j},      S = X^T X / N,

with q(s) = prod_l (1 - a_l s) = sum_j c_j s^j and m_k = E tr S^k.

**The moments, lsa's own route.** `wick_moments` counts Wick (Isserlis) pairings directly:

    E tr (X^T X)^k = sum over the (2k-1)!! perfect matchings pi of the 2k entries of the word
    X_{i_1 a_1} X_{i_1 a_2} X_{i_2 a_2} ... X_{i_k a_1}  of  N^{#i-classes(pi)} d^{#a-classes(pi)},

each class count being the number of components of pi joined with the fixed pairing of the
positions that share an index (half the number of cycles of their product). All matchings are
enumerated as integer arrays and the cycles counted vectorised, so this is a computation
independent of `theory.deep` (which uses the loop equation): the tests compare the two.
Enumeration costs (2k-1)!!, about 2e6 matchings for k = 8 (3 s on one core); it is limited to
k <= 8, so the flow supports L <= 4 layers (`MAX_LAYERS`).

**The flow** da/dt = -grad f(a) is solved with diffrax (Kvaerno5, float64, PID step-size
control, the floored chord iteration of `lsa._diffrax`) until the Newton estimate of the distance
to the fixed point, ||H^{-1} grad f||_inf (H the Hessian), falls below `eps` (and H is positive
definite there). Layers whose starting step sizes are equal stay equal for all time (swapping two
layers is a symmetry of f, so the set a_i = a_j is invariant): the flow is integrated on the
distinct starting values, each layer of a group moving with the common gradient component. This
is not only economy: the diagonal a_i = a_j is a saddle of f transversally (at L = 2,
f(a + e, a - e) = f(a, a) - 2 e^2 E tr S^2 (I - a S)^2 + O(e^4)), so integrating all L coordinates
would let round-off grow like e^{mu t} and leave the diagonal. Distinct starts reach the optimum
`theory.deep.optimal_step_sizes` (up to a permutation of the layers: f is symmetric); equal
starts reach the looped optimum. Failures raise `FlowError` with a status of `lsa._options.STATUS`.
"""

from __future__ import annotations

import dataclasses
import functools
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
from .precision import require_x64

__all__ = [
    "MAX_LAYERS",
    "ScalarFlowResult",
    "scalar_family_flow",
    "scalar_family_risk",
    "wick_moment_counts",
    "wick_moments",
]

#: Largest number of layers of the scalar-family flow: the Wick enumeration needs k <= 2L <= 8.
MAX_LAYERS = 4
_MAX_K = 2 * MAX_LAYERS


# ----------------------------------------------------------------------------------------------
# Wishart moments by enumerating Wick pairings


@functools.cache
def _matchings(m: int) -> np.ndarray:
    """All perfect matchings of m points as partner arrays, shape ((m-1)!!, m), int8."""
    if m == 0:
        return np.zeros((1, 0), np.int8)
    sub = _matchings(m - 2)
    blocks = []
    for j in range(1, m):
        rest = np.array([r for r in range(1, m) if r != j], dtype=np.int8)
        arr = np.empty((sub.shape[0], m), np.int8)
        arr[:, 0] = j
        arr[:, j] = 0
        arr[:, rest] = rest[sub]
        blocks.append(arr)
    return np.concatenate(blocks)


def _count_cycles(perm: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """Number of cycles of each row of `perm` (shape (B, m)) by pointer doubling: after T
    doublings the label of p is the least label among f^0(p), ..., f^(2^T - 1)(p), the least
    label of its cycle once 2^T >= m; a cycle is counted at its least element. Flat indices in
    cache-sized chunks (measured: 1.4 s for the 2e6 matchings of k = 8, against 8 s with
    `take_along_axis` on the whole array)."""
    B, m = perm.shape
    doublings = max(1, math.ceil(math.log2(max(m, 2))))
    ident = np.arange(m, dtype=np.int8)
    out = np.empty(B, dtype=np.int64)
    for s in range(0, B, chunk):
        block = perm[s : s + chunk]
        b = block.shape[0]
        f = (block.astype(np.int32) + (np.arange(b, dtype=np.int32) * m)[:, None]).ravel()
        lab = np.broadcast_to(ident, (b, m)).ravel()
        for _ in range(doublings):
            lab = np.minimum(lab, lab[f])
            f = f[f]
        out[s : s + b] = np.sum(lab.reshape(b, m) == ident, axis=1)
    return out


@functools.cache
def wick_moment_counts(k: int) -> np.ndarray:
    """`C[p, q]`: the number of Wick pairings of tr (X^T X)^k with p row- and q column-classes,
    so that E tr (X^T X)^k = sum_{p,q} C[p, q] N^p d^q (module docstring). Shape (k+1, k+1)."""
    if not isinstance(k, int | np.integer) or k < 1 or k > _MAX_K:
        raise ValueError(
            f"`k` must be an integer in [1, {_MAX_K}] (Wick enumeration costs (2k-1)!! "
            f"pairings); got {k!r}."
        )
    m = 2 * int(k)
    pi = _matchings(m)
    pos = np.arange(m)
    # Positions 2t and 2t+1 share the row index i_t; positions 2t+1 and 2t+2 (mod 2k) share the
    # column index a_{t+1}.
    alpha_i = pos ^ 1
    alpha_a = np.where(pos % 2 == 1, (pos + 1) % m, (pos - 1) % m)
    # pi o alpha as arrays: row r maps position p to pi_r[alpha(p)].
    n_i = _count_cycles(pi[:, alpha_i]) // 2
    n_a = _count_cycles(pi[:, alpha_a]) // 2
    counts = np.zeros((k + 1, k + 1), np.int64)
    np.add.at(counts, (n_i, n_a), 1)
    return counts


def wick_moments(d: int, N: int, kmax: int) -> Float[np.ndarray, " kmax+1"]:
    """m_k = E tr S^k, k = 0..kmax, for S = X^T X / N (X: N x d, iid N(0, 1)), by Wick counting.

    Exact integers summed in Python and divided once (float64 to the last bit). m_0 = d.

    **Arguments:** `d`, `N` (integers >= 1), `kmax` (0 <= kmax <= 8).
    """
    for name, v in (("d", d), ("N", N)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
            raise ValueError(f"`{name}` must be an integer >= 1; got {v!r}.")
    if not isinstance(kmax, int | np.integer) or not 0 <= kmax <= _MAX_K:
        raise ValueError(f"`kmax` must be an integer in [0, {_MAX_K}]; got {kmax!r}.")
    out = [float(d)]
    for k in range(1, int(kmax) + 1):
        C = wick_moment_counts(k)
        total = sum(
            int(C[p, q]) * int(N) ** p * int(d) ** q
            for p in range(k + 1)
            for q in range(k + 1)
            if C[p, q]
        )
        out.append(total / int(N) ** k)  # exact int / int -> correctly rounded float
    return np.array(out, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# The risk


def scalar_family_risk(
    a: Float[ArrayLike, " L"], moments: Float[ArrayLike, " K"]
) -> Float[Array, ""]:
    """f(a) = E tr prod_l (I - a_l S)^2 = sum_{i,j} c_i c_j m_{i+j} (no 1/2), JAX-differentiable.

    **Arguments:**

    - `a`: step sizes, shape (L,).
    - `moments`: m_0, m_1, ... (`wick_moments`), at least 2L + 1 of them.
    """
    a = jnp.asarray(a)
    m = jnp.asarray(moments)
    L = a.shape[0]
    if m.shape[0] < 2 * L + 1:
        raise ValueError(f"`moments` needs at least 2L + 1 = {2 * L + 1} entries; got {m.shape}.")
    c = _step_poly(a)
    idx = jnp.arange(L + 1)
    H = m[idx[:, None] + idx[None, :]]
    return c @ H @ c


def _step_poly(a: Array) -> Array:
    """Coefficients of prod_l (1 - a_l s), lowest power first, length L+1 (multiplied in layer
    order, so equal a_l give bit-identical partial products)."""
    L = a.shape[0]
    c = jnp.zeros(L + 1, a.dtype).at[0].set(1.0)
    for ell in range(L):
        c = c - a[ell] * jnp.concatenate([jnp.zeros(1, a.dtype), c[:-1]])
    return c


# ----------------------------------------------------------------------------------------------
# The flow


@dataclasses.dataclass(frozen=True)
class ScalarFlowResult:
    """A solved scalar-family flow.

    - `ts (T,)`, `a_traj (T, L)`, `risk (T,)`: accepted steps (with t = 0);
    - `a (L,)`: the final step sizes, in the layers' order;
    - `groups (L,)`: the group of each layer (layers with equal starts share one);
    - `newton_distance`: ||H^{-1} grad f||_inf at the end;
    - `status`: "converged"; `stats`: solver statistics.
    """

    ts: np.ndarray
    a_traj: np.ndarray
    risk: np.ndarray
    groups: np.ndarray
    newton_distance: float
    status: str
    stats: dict[str, Any]

    @property
    def a(self) -> np.ndarray:
        return self.a_traj[-1]


def _expand(v: Array, args: tuple[Array, ...]) -> Array:
    idx, active, _mult, _moms = args
    return v[idx] * active


def _group_risk(v: Array, args: tuple[Array, ...]) -> Array:
    _idx, _active, _mult, moms = args
    return scalar_family_risk(_expand(v, args), moms)


def _vf(t, v, args):
    _idx, _active, mult, _moms = args
    g = jax.grad(_group_risk)(v, args)
    # d a_l/dt = -df/da_l for every layer l of group g; dF/dv_g = sum over its layers = mult * that.
    return -g / mult


def _newton_distance(v, args):
    _idx, _active, mult, _moms = args
    g = jax.grad(_group_risk)(v, args)
    H = jax.hessian(_group_risk)(v, args)
    unused = (mult == jnp.inf).astype(v.dtype)  # padding groups: identity rows
    H = H + jnp.diag(unused)
    step = jnp.linalg.solve(H, g)
    pd = jnp.linalg.eigvalsh(0.5 * (H + H.T))[0] > 0
    return jnp.where(pd, jnp.max(jnp.abs(step)), jnp.inf)


_newton_distance_jit = jax.jit(_newton_distance)


def _risk_numpy(a_traj: np.ndarray, moms: np.ndarray) -> np.ndarray:
    """f along a trajectory (T, L), in numpy (no compilation for each new length T)."""
    T, L = a_traj.shape
    c = np.zeros((T, L + 1))
    c[:, 0] = 1.0
    for ell in range(L):
        c[:, 1:] = c[:, 1:] - a_traj[:, ell : ell + 1] * c[:, :-1]
    idx = np.arange(L + 1)
    H = moms[idx[:, None] + idx[None, :]]
    return np.einsum("ti,ij,tj->t", c, H, c)


def _event(t, v, args, eps, **kwargs):
    return _newton_distance(v, args) <= eps * jnp.maximum(1.0, jnp.max(jnp.abs(v)))


@eqx.filter_jit
def _solve(v0, args, t1, dt0, rtol, atol, eps, *, max_steps):
    solver = diffrax.Kvaerno5(root_finder=FlooredChord(rtol=1e-6, atol=1e-10, norm=optx.max_norm))
    event = diffrax.Event(lambda t, y, a, **kw: _event(t, y, a, eps))
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=v0,
        args=args,
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=_controller(rtol, atol, 0.2, 0.4),
        event=event,
        max_steps=max_steps,
        throw=False,
    )


def scalar_family_flow(
    a0: Float[ArrayLike, " L"],
    d: int,
    N: int,
    *,
    eps: float = 1e-12,
    rtol: float = 1e-11,
    atol: float = 1e-13,
    t_max: float = 1e9,
    max_steps: int = 20_000,
) -> ScalarFlowResult:
    """Gradient flow da/dt = -grad f(a) of the step sizes of a masked sparse scalar stack on its
    exact risk f (module docstring), from `a0`, until the estimated distance to the fixed point
    is below `eps * max(1, ||a||_inf)`.

    **Arguments:**

    - `a0`: starting step sizes, shape (L,), 1 <= L <= `MAX_LAYERS`; exactly equal entries form a
      group that moves together (they stay equal).
    - `d`, `N`: input dimension and prompt length (training = test).
    - `eps`: stopping threshold on the Newton distance estimate.
    - `rtol`, `atol`: step-size controller tolerances; `t_max`: horizon; `max_steps`: budget.

    **Returns:** a `ScalarFlowResult`. Raises `FlowError` (status "horizon", "max_steps",
    "non_finite" or "solver_failure") when the flow does not converge, `ValueError` on bad input.
    """
    require_x64("lsa.deep_flow.scalar_family_flow")
    a0_arr = np.asarray(a0, dtype=np.float64)
    if a0_arr.ndim != 1 or not 1 <= a0_arr.size <= MAX_LAYERS:
        raise ValueError(
            f"`a0` must be a 1-d array of L step sizes with 1 <= L <= {MAX_LAYERS}; got shape "
            f"{a0_arr.shape}. (The exact moments are enumerated up to k = 2L = {_MAX_K}.)"
        )
    if not np.all(np.isfinite(a0_arr)):
        raise ValueError("`a0` contains NaN or inf; pass finite step sizes.")
    for name, v in (("eps", eps), ("rtol", rtol), ("atol", atol), ("t_max", t_max)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` must be a positive finite number; got {v!r}.")
    L = a0_arr.size
    P = MAX_LAYERS  # one padded shape: one compilation serves every L <= MAX_LAYERS
    values, groups = np.unique(a0_arr, return_inverse=True)
    G = values.size
    v0 = np.zeros(P)
    v0[:G] = values
    idx = np.zeros(P, dtype=np.int32)
    idx[:L] = groups
    active = np.zeros(P)
    active[:L] = 1.0
    mult = np.full(P, np.inf)
    mult[:G] = np.bincount(groups, minlength=G)
    moms = np.zeros(2 * P + 1)
    moms[: 2 * L + 1] = wick_moments(d, N, 2 * L)
    args = (jnp.asarray(idx), _f64(active), _f64(mult), _f64(moms))
    scale = float(moms[2])  # curvature scale of f: dt0 well inside the fastest time scale
    t_start = time.perf_counter()
    with _checks_without_callbacks():
        sol = _solve(
            _f64(v0),
            args,
            _f64(t_max),
            _f64(1e-3 / scale),
            _f64(rtol),
            _f64(atol),
            _f64(eps),
            max_steps=max_steps,
        )
    jax.block_until_ready(sol.ys)
    stats, keep = finish_steady_state(sol, t_start, "scalar-family flow")
    ts, ys = np.asarray(sol.ts)[keep], np.asarray(sol.ys)[keep]
    a_traj = ys[:, :G][:, groups]
    risk = _risk_numpy(a_traj, moms[: 2 * L + 1])
    nd = float(_newton_distance_jit(jnp.asarray(ys[-1]), args))
    return ScalarFlowResult(
        ts=ts,
        a_traj=a_traj,
        risk=risk,
        groups=np.asarray(groups),
        newton_distance=nd,
        status=stats["status"],
        stats=stats,
    )
