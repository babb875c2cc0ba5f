"""The landscape of the exact population loss beyond Assumption 3.3 (a finding beyond ZFB).

ZFB's Theorem 4.1 covers starts on the manifold `a = b = 0`. From generic dense starts the
full-entry population flow (`lsa.full_flow.full_population_flow`) ends either at a global
minimiser (`a = b = 0`, `u U = Gamma^{-1}`) or at a **spurious local minimum** with `a, b != 0`.
This module finds the limit points, certifies them, describes the spurious one in closed form,
and measures the basins. See `docs/landscape.md`.

**The invariant family (DERIVED here, verified against `lsa.full_population_loss`).** Let
`Lambda = V diag(lam) V^T` and `e = V[:, k]` one eigenvector. On the set

    a = alpha e,   b = beta e,   U = V diag(mu) V^T,   u,                      (d + 3 numbers)

every moment of `lsa.full_loss` is diagonal in the eigenbasis and the loss depends only on the
scale-invariant combinations `p = u mu` (d), `q = alpha beta` and `r = alpha / u`:

    2 L = sum_i [lam_i^2 gam_i A_i^2 - 2 lam_i^2 A_i + lam_i]          (odd part, A = p + q e_k)
          + r^2 A(p) + 2 q B(p) + (q / r)^2 C                          (even part)

with `gam_i = (1 + 1/N) lam_i + tr(Lambda)/N`, `T = tr Lambda`, `T2 = tr Lambda^2`,
`m1 = sum p_i lam_i`, `m2 = sum p_i^2 lam_i^2`, `l = lam_k`, `P = p_k`:

    A(p) = (1 + 1/N) l^3 P^2 + l m2 / N + [l (m1^2 + 2 m2) + 4 m1 P l^2 + 8 P^2 l^3] / N^2
           + 2 l^2 P (m1 + 2 l P) / N         (E(P + R)^2 per r^2: a^T S U x_q and the query term)
    B(p) = P l^2 (T + 2 l / N) + T l (m1 + 2 l P) / N     (the cross terms with Q)
    C    = l (T^2 (1 + 2/N) + T2 (2 + 4/N))               (E Q^2 per (u beta)^2)

The gradient of the full loss is tangent to this family (the flow's limit points lie in it), so
the spurious point is a critical point of this explicit function of `d + 2` variables with
`q != 0`. Numerically it exists only for `k` = the top eigenvector of Lambda (no critical point
with `q != 0` on the other eigenvectors), `family_minimum` finds it, and the checks compare it
with the flow's limit points. Eliminating `r` (`r^4 = q^2 C / A`) gives
`2 L = odd + 2 |q| sqrt(A C) + 2 q B`, a function of `(p, q)` alone.

**Symmetries.** The prediction is invariant under `(a, u) -> c (a, u)`, `(U, b) -> (U, b) / c`
(one zero Hessian eigenvalue at every critical point with `(a, u) != 0`) and, when Lambda has
a repeated eigenvalue, under `(a, b, U) -> (Q a, Q b, Q U Q^T)` for orthogonal `Q` commuting with
Lambda. For `Lambda = lam I` the orbit of the spurious point is `(d - 1)`-dimensional (the
direction `e` is free), so its Hessian has `d` zero eigenvalues. `certify_point` checks that the
numerically zero eigenspace is exactly the span of these generators.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

import lsa
import theory
from lsa.full_flow import full_population_flow
from lsa.full_loss import full_loss_grad_theta, full_loss_hessian, full_loss_theta, pack_params
from lsa.full_loss import prediction_indices as _prediction_indices

__all__ = [
    "STRUCTURES",
    "Instance",
    "basin_table",
    "certify_point",
    "classify",
    "closed_form_distance",
    "family_loss",
    "family_minimum",
    "family_weights",
    "flow_end_point",
    "invariant_tensor",
    "make_start",
    "rank_one_point",
    "spurious_closed_form",
    "symmetry_generators",
    "tensor_distance",
]

#: Start structures of the basin study.
STRUCTURES = ("paper", "balanced", "unbalanced")


@dataclasses.dataclass(frozen=True)
class Instance:
    """One `(d, Lambda, N)` of the landscape study; `name` labels tables and figures."""

    name: str
    Lambda: np.ndarray
    N: int

    @property
    def d(self) -> int:
        return int(self.Lambda.shape[0])

    @property
    def sigma_max(self) -> float:
        return float(theory.sigma_max(self.Lambda, self.N))

    @property
    def min_loss(self) -> float:
        return float(theory.min_loss(self.Lambda, self.N))


# ----------------------------------------------------------------------------------------------
# the invariant family and its closed form


def _family_parts(p: Any, lam: Any, N: float, k: int) -> tuple[Any, Any, Any]:
    """`(A(p), B(p), C)` of the even part on the invariant family (module docstring)."""
    T, T2 = jnp.sum(lam), jnp.sum(lam**2)
    lk, pk = lam[k], p[k]
    m1, m2 = jnp.sum(p * lam), jnp.sum(p**2 * lam**2)
    A = (
        (1.0 + 1.0 / N) * lk**3 * pk**2
        + lk * m2 / N
        + (lk * (m1**2 + 2.0 * m2) + 4.0 * m1 * pk * lk**2 + 8.0 * pk**2 * lk**3) / N**2
        + 2.0 * lk**2 * pk * (m1 + 2.0 * lk * pk) / N
    )
    B = pk * lk**2 * (T + 2.0 * lk / N) + T * lk / N * (m1 + 2.0 * lk * pk)
    C = lk * (T**2 * (1.0 + 2.0 / N) + T2 * (2.0 + 4.0 / N))
    return A, B, C


def rank_one_point(Lambda: np.ndarray, N: int, k: int | None = None) -> dict[str, Any]:
    """The rank-one critical point `u = 0`, `U = 0`, `a b^T = v v^T / gamma_k` (`v` the
    eigenvector `k` of Lambda, default the top one; balanced: `a = b = v / sqrt(gamma_k)`),
    loss `(1/2)(tr Lambda - lam_k^2 / gamma_k)`: the best rank-one `A~` of the odd part, with the
    even part 0. It is a critical point for every `k`. Its stability ratio in the family
    directions `(u, diag U)` is

        S = (q b - l)^T A_mat^{-1} (q b - l) / (q^2 C),     q = 1 / gamma_k,

    with `A(mu) = mu^T A_mat mu`, `B(mu) = b^T mu`, `l_i = lam_i^2 (i != k)`, `l_k = 0`: the
    Hessian of the loss in `(u, mu)` is positive definite iff `S < 1` (then the flow can stop
    here; for `S > 1` the spurious minimum is the dressed point of `family_minimum`)."""
    lam, V = np.linalg.eigh(np.asarray(Lambda, dtype=np.float64))
    d = lam.size
    k = int(np.argmax(lam)) if k is None else int(k)
    gam = (1.0 + 1.0 / N) * lam + lam.sum() / N
    q = 1.0 / gam[k]
    lam_j = jnp.asarray(lam)
    A_mat = 0.5 * np.asarray(jax.hessian(lambda m: _family_parts(m, lam_j, float(N), k)[0])(
        jnp.zeros(d)))  # fmt: skip
    b_vec = np.asarray(jax.grad(lambda m: _family_parts(m, lam_j, float(N), k)[1])(jnp.zeros(d)))
    C = float(_family_parts(jnp.zeros(d), lam_j, float(N), k)[2])
    ell = lam**2
    ell[k] = 0.0
    g = q * b_vec - ell
    S = float(g @ np.linalg.solve(A_mat, g) / (q * q * C))
    W_PV = np.zeros((d + 1, d + 1))
    W_KQ = np.zeros((d + 1, d + 1))
    W_PV[-1, :-1] = math.sqrt(q) * V[:, k]
    W_KQ[-1, :-1] = math.sqrt(q) * V[:, k]
    return {
        "kind": "rank_one",
        "found": True,
        "k": k,
        "lam_k": float(lam[k]),
        "loss": 0.5 * float(lam.sum() - lam[k] ** 2 / gam[k]),
        "q": q,
        "stability_S": S,
        "W_PV": W_PV,
        "W_KQ": W_KQ,
    }


def family_loss(x: Any, lam: Any, N: float, k: int) -> Any:
    """The population loss on the invariant family (module docstring), as a function of
    `x = (p_1..p_d, q, log r)`; `lam` are Lambda's eigenvalues, `k` the eigenvector carrying
    `a` and `b`. jax-traceable; derived independently of `lsa.full_loss`."""
    lam = jnp.asarray(lam)
    x = jnp.asarray(x)
    d = lam.shape[0]
    p, q, r = x[:d], x[d], jnp.exp(x[d + 1])
    T = jnp.sum(lam)
    gam = (1.0 + 1.0 / N) * lam + T / N
    A, B, C = _family_parts(p, lam, N, k)
    At = p.at[k].add(q)
    odd = jnp.sum(lam**2 * gam * At**2 - 2.0 * lam**2 * At + lam)
    return 0.5 * (odd + r**2 * A + 2.0 * q * B + (q / r) ** 2 * C)


_fam = jax.jit(family_loss, static_argnums=(3,))
_fam_grad = jax.jit(jax.grad(family_loss), static_argnums=(3,))
_fam_hess = jax.jit(jax.hessian(family_loss), static_argnums=(3,))


def family_weights(x: np.ndarray, V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The balanced (`u^2 + |a|^2 = |U|_F^2 + |b|^2`) full matrices of the family point `x`
    (`u > 0`, `alpha > 0`); every entry outside the prediction's is 0."""
    d = V.shape[0]
    p, q, r = np.asarray(x[:d]), float(x[d]), math.exp(float(x[d + 1]))
    u = ((p @ p + q * q / (r * r)) / (1.0 + r * r)) ** 0.25
    mu, alpha = p / u, r * u
    beta = q / alpha
    W_PV = np.zeros((d + 1, d + 1))
    W_KQ = np.zeros((d + 1, d + 1))
    W_PV[-1, -1], W_PV[-1, :-1] = u, alpha * V[:, k]
    W_KQ[:-1, :-1], W_KQ[-1, :-1] = (V * mu) @ V.T, beta * V[:, k]
    return W_PV, W_KQ


def family_minimum(
    Lambda: np.ndarray, N: int, *, k: int | None = None, seed: int = 0, restarts: int = 16
) -> dict[str, Any]:
    """The spurious critical point in closed form: the critical point with `q = alpha beta != 0`
    of `family_loss` on eigenvector `k` (default: the top one), found by BFGS from `restarts`
    seeded starts (`numpy` `default_rng(seed)`) and polished by Newton; the lowest such point.

    Returns `loss`, `x`, `k`, `grad_norm` (in the family), `q`, `W_PV`, `W_KQ` (balanced),
    `A_eig` (`u U + a b^T` in Lambda's eigenbasis, diagonal), `n_distinct` (distinct critical
    values with `q != 0` among the restarts) and `found` (False if no restart gave one)."""
    lam, V = np.linalg.eigh(np.asarray(Lambda, dtype=np.float64))
    d = lam.size
    k = int(np.argmax(lam)) if k is None else int(k)
    lam_j = jnp.asarray(lam)
    rng = np.random.default_rng(seed)
    found: dict[float, np.ndarray] = {}
    q1 = 1.0 / ((1.0 + 1.0 / N) * lam[k] + lam.sum() / N)
    for j in range(restarts):
        if j % 2:  # near the rank-one point (p = 0, q = 1/gamma_k, r = infinity)
            x0 = np.concatenate([rng.normal(size=d) * 0.05, [q1], [math.log(10.0)]])
        else:
            x0 = np.concatenate(
                [
                    rng.normal(size=d) * 0.5,
                    [rng.uniform(0.1, 1.5) * rng.choice([-1.0, 1.0])],
                    [rng.normal()],
                ]
            )
        res = minimize(
            lambda x: float(_fam(x, lam_j, float(N), k)),
            x0,
            jac=lambda x: np.asarray(_fam_grad(x, lam_j, float(N), k)),
            method="BFGS",
            options={"gtol": 1e-12, "maxiter": 5000},
        )
        x = res.x
        for _ in range(8):
            H = np.asarray(_fam_hess(x, lam_j, float(N), k))
            x = x - np.linalg.pinv(H, rcond=1e-12, hermitian=True) @ np.asarray(
                _fam_grad(x, lam_j, float(N), k)
            )
        g = float(np.linalg.norm(_fam_grad(x, lam_j, float(N), k)))
        # q != 0, converged, and not drifting to the rank-one point (r -> infinity)
        ok = abs(x[d]) > 1e-6 and g <= 1e-9 and bool(np.all(np.isfinite(x)))
        if ok and x[d + 1] < math.log(1e4):
            found.setdefault(round(float(_fam(x, lam_j, float(N), k)), 9), x)
    if not found:
        return {"kind": "dressed", "found": False, "k": k, "loss": float("nan"), "n_distinct": 0}
    loss_key = min(found)
    x = found[loss_key]
    W_PV, W_KQ = family_weights(x, V, k)
    At = x[:d].copy()
    At[k] += x[d]
    return {
        "kind": "dressed",
        "found": True,
        "k": k,
        "lam_k": float(lam[k]),
        "loss": float(_fam(x, lam_j, float(N), k)),
        "x": x,
        "q": float(x[d]),
        "r": math.exp(float(x[d + 1])),
        "grad_norm": float(np.linalg.norm(_fam_grad(x, lam_j, float(N), k))),
        "W_PV": W_PV,
        "W_KQ": W_KQ,
        "A_eig": At,
        "n_distinct": len(found),
        "critical_values": sorted(found),
    }


def spurious_closed_form(
    Lambda: np.ndarray, N: int, *, k: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """The spurious minimum in closed form on eigenvector `k` (default: Lambda's top one): the
    rank-one point (`rank_one_point`, fully explicit) when its stability ratio `S < 1`, else the
    dressed point (`family_minimum`, the `q != 0`, `u U != 0` critical point of the explicit
    family loss). Returns the chosen point's record with `rank_one_S` and `rank_one_loss`."""
    r1 = rank_one_point(Lambda, N, k)
    out = r1 if r1["stability_S"] < 1.0 else family_minimum(Lambda, N, k=r1["k"], seed=seed)
    return {**out, "rank_one_S": r1["stability_S"], "rank_one_loss": r1["loss"]}


# ----------------------------------------------------------------------------------------------
# invariants, symmetries, certificates


def _z(W_PV: np.ndarray, W_KQ: np.ndarray) -> np.ndarray:
    """The prediction's entries `(a, u, U row by row, b)` in `prediction_indices` order."""
    return np.asarray(pack_params(W_PV, W_KQ))[_prediction_indices(W_PV.shape[0] - 1)]


def invariant_tensor(W_PV: np.ndarray, W_KQ: np.ndarray) -> np.ndarray:
    """`r (x) K` with `r = W_PV[d, :]`, `K = W_KQ[:, :d]`: what the prediction
    `r^T (E E^T / rho) K x_q` depends on, invariant under the scaling symmetry."""
    return np.einsum("i,jk->ijk", np.asarray(W_PV)[-1], np.asarray(W_KQ)[:, :-1])


def tensor_distance(P: np.ndarray, Q: np.ndarray) -> float:
    """`min_s ||P - s(Q)||_F / ||Q||_F` over the discrete symmetry `(a, b) -> (-a, -b)`
    (`s` flips the components odd in `(a, b)`: `a (x) U` and `u (x) b`)."""
    d = P.shape[-1]
    flip = np.ones_like(Q)
    flip[:d, :d, :] = -1.0  # a (x) U
    flip[d, d, :] = -1.0  # u (x) b
    flip[:d, d, :] = 1.0  # a (x) b
    flip[d, :d, :] = 1.0  # u (x) U
    nq = float(np.linalg.norm(Q))
    return min(float(np.linalg.norm(P - Q)), float(np.linalg.norm(P - flip * Q))) / nq


def symmetry_generators(W_PV: np.ndarray, W_KQ: np.ndarray, Lambda: np.ndarray) -> np.ndarray:
    """Tangent vectors (rows, in `prediction_indices` order) of the continuous symmetries at the
    point: the scaling `(a, u, -U, -b)` and, for each skew `S` commuting with Lambda (from its
    repeated eigenvalues, relative gap 1e-9), `(S a, 0, S U - U S, S b)`."""
    d = Lambda.shape[0]
    a, u = W_PV[-1, :-1], W_PV[-1, -1]
    U, b = W_KQ[:-1, :-1], W_KQ[-1, :-1]
    gens = [np.concatenate([a, [u], -U.ravel(), -b])]
    lam, V = np.linalg.eigh(Lambda)
    tol = 1e-9 * float(np.max(np.abs(lam)))
    for i in range(d):
        for j in range(i + 1, d):
            if abs(lam[i] - lam[j]) <= tol:
                S = np.outer(V[:, i], V[:, j]) - np.outer(V[:, j], V[:, i])
                gens.append(np.concatenate([S @ a, [0.0], (S @ U - U @ S).ravel(), S @ b]))
    return np.asarray(gens)


def certify_point(
    W_PV: np.ndarray,
    W_KQ: np.ndarray,
    Lambda: np.ndarray,
    N: int,
    *,
    entries: str = "prediction",
    newton_steps: int = 10,
) -> dict[str, Any]:
    """Certificate of an end point of the full-entry flow for the exact population loss.

    The point is first moved to its balanced representative along the scaling symmetry
    (`||(a, u)|| = ||(U, b)||_F`; same loss, and the Hessian's inertia is unchanged by the
    congruence). Damped Newton steps (pseudo-inverse of the Hessian, so the symmetry directions
    are left alone) polish it to the nearby critical point (it must move by <= 1e-2 of its
    norm); then
    gradient norm (<= 1e-10 after polishing), the Hessian spectrum on `entries`
    (`"prediction"`: the `(d+1)^2` entries that enter the prediction; `"all"`: every entry, where
    the ignored entries add trivial zeros), its zero eigenvalues (`|ev| <= 1e-8 max|ev|`), the
    negative ones (`ev < -1e-8 max|ev|`), the rank of the symmetry generators and the sine of
    the largest principal angle between the zero eigenspace and their span. A **minimum**:
    no negative eigenvalue and zero eigenspace = symmetry span (sine <= 1e-6)."""
    d = Lambda.shape[0]
    D2 = (d + 1) ** 2
    # the balanced representative (a symmetry: same loss; the Hessian changes by a congruence,
    # so its inertia does not): unbalanced end points have badly conditioned Hessians
    pi = _prediction_indices(d)
    theta0 = np.array(pack_params(W_PV, W_KQ))
    nr, nk = float(np.linalg.norm(theta0[pi[: d + 1]])), float(np.linalg.norm(theta0[pi[d + 1 :]]))
    c = math.sqrt(nk / nr) if nr > 0 and nk > 0 else 1.0
    theta0[pi[: d + 1]] *= c
    theta0[pi[d + 1 :]] /= c
    idx = _prediction_indices(d) if entries == "prediction" else np.arange(2 * D2)
    theta = theta0.copy()
    g0 = float(np.linalg.norm(full_loss_grad_theta(theta, Lambda, N)))
    for _ in range(newton_steps):
        g = np.asarray(full_loss_grad_theta(theta, Lambda, N))
        gn = float(np.linalg.norm(g))
        if gn <= 1e-14:
            break
        H = np.asarray(full_loss_hessian(theta, Lambda, N))[np.ix_(idx, idx)]
        step = np.linalg.pinv(H, rcond=1e-10, hermitian=True) @ g[idx]
        for _ in range(30):  # damped: halve until the gradient norm falls
            trial = theta.copy()
            trial[idx] -= step
            if float(np.linalg.norm(full_loss_grad_theta(trial, Lambda, N))) < gn:
                theta = trial
                break
            step = 0.5 * step
    g = np.asarray(full_loss_grad_theta(theta, Lambda, N))
    H = np.asarray(full_loss_hessian(theta, Lambda, N))[np.ix_(idx, idx)]
    ev, vecs = np.linalg.eigh(H)
    h = float(np.max(np.abs(ev)))
    zero = np.abs(ev) <= 1e-8 * h
    n_neg = int(np.sum(ev < -1e-8 * h))
    Wp = theta[:D2].reshape(d + 1, d + 1)
    Wk = theta[D2:].reshape(d + 1, d + 1)
    gens = symmetry_generators(Wp, Wk, Lambda)
    if entries != "prediction":  # embed the generators into all entries
        full = np.zeros((gens.shape[0], 2 * D2))
        full[:, _prediction_indices(d)] = gens
        gens = full
    sv = np.linalg.svd(gens, compute_uv=False)
    sym_rank = int(np.sum(sv > 1e-9 * sv[0]))
    Qs = np.linalg.svd(gens, full_matrices=False)[2][:sym_rank].T
    Z = vecs[:, zero]
    if Z.shape[1] == sym_rank and sym_rank:
        angle = float(np.linalg.norm(Z - Qs @ (Qs.T @ Z), 2))
    else:
        angle = float("inf")
    moved = float(np.linalg.norm(theta - theta0)) / max(float(np.linalg.norm(theta0)), 1e-300)
    grad = float(np.linalg.norm(g))
    pos = ev[~zero]
    is_min = bool(
        grad <= 1e-10
        and moved <= 1e-2
        and n_neg == 0
        and int(zero.sum()) == sym_rank
        and angle <= 1e-6
    )
    return {
        "is_minimum": is_min,
        "entries": entries,
        "loss": float(full_loss_theta(theta, Lambda, N)),
        "grad_norm_end_point": g0,
        "grad_norm": grad,
        "newton_moved_rel": moved,
        "rebalance_factor": c,
        "hessian_norm": h,
        "n_zero": int(zero.sum()),
        "n_negative": n_neg,
        "symmetry_rank": sym_rank,
        "zero_space_vs_symmetry_sin": angle,
        "smallest_positive_rel": float(pos[pos > 0].min() / h) if np.any(pos > 0) else 0.0,
        "W_PV": Wp,
        "W_KQ": Wk,
        "a_norm": float(np.linalg.norm(Wp[-1, :-1])),
        "b_norm": float(np.linalg.norm(Wk[-1, :-1])),
    }


# ----------------------------------------------------------------------------------------------
# starts, flows, classification


def make_start(
    structure: str, scale: float, inst: Instance, key: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """One start of `structure` at `scale` (absolute):

    - `"paper"`: Assumption 3.3 (`lsa.paper_init`, sigma = scale, a random Theta from `key`);
    - `"balanced"`: iid Gaussian `W_PV`, `W_KQ` (every entry), `||W_PV||_F = ||W_KQ||_F = scale`;
    - `"unbalanced"`: the same directions with `||W_PV||_F = 2 scale`, `||W_KQ||_F = scale / 2`
      (ratio 4, same product of norms)."""
    d = inst.d
    if structure == "paper":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lsa.TheoremCoverageWarning)
            init = lsa.paper_init(inst.Lambda, inst.N, sigma=float(scale), key=key)
        P0, K0 = init.weights()
        return np.asarray(P0), np.asarray(K0)
    k1, k2 = jax.random.split(key)
    Wp = np.asarray(jax.random.normal(k1, (d + 1, d + 1), jnp.float64))
    Wk = np.asarray(jax.random.normal(k2, (d + 1, d + 1), jnp.float64))
    ratio = {"balanced": 1.0, "unbalanced": 2.0}[structure]
    return Wp * (ratio * scale / np.linalg.norm(Wp)), Wk * (scale / ratio / np.linalg.norm(Wk))


def flow_end_point(
    inst: Instance,
    Wp0: np.ndarray,
    Wk0: np.ndarray,
    *,
    rtol: float = 1e-8,
    n_save: int = 20,
    continuations: int = 3,
) -> dict[str, Any]:
    """Run `lsa.full_population_flow` to its stopping rule. A run that reaches its horizon first
    (slow convergence into the spurious minimum, whose slowest rate is ~1e-5 of the Hessian's
    norm at d = 3) is continued from its last state with `t_end` 10 times the time reached, then
    10 times longer each time, up to `continuations` times; if the stopping rule still has not
    fired, the last state is returned with the last status (`"horizon"` or `"t_end"`). Other
    failures are recorded (`status` of the `FlowError`), not raised."""
    t0 = time.perf_counter()
    Wp, Wk = np.asarray(Wp0, np.float64), np.asarray(Wk0, np.float64)
    steps, t_final, status = 0, 0.0, "horizon"
    t_end: float | None = None
    for _ in range(1 + continuations):  # a run that reaches its horizon is continued
        try:
            res = full_population_flow(
                inst.Lambda, inst.N, Wp, Wk, rtol=rtol, n_save=n_save, t_end=t_end
            )
            Wp, Wk, status = res.W_PV, res.W_KQ, res.stop_reason
            steps, t_final = steps + res.stats["num_steps"], t_final + res.t_final
            if status == "converged":
                break
            t_end = 10.0 * (t_end or 1.0)
            continue
        except lsa.FlowError as exc:
            diag = exc.diagnostics
            status = str(diag.get("status", "failed"))
            last = diag.get("last_state")
            if status != "horizon" or last is None:
                return {"status": status, "seconds": time.perf_counter() - t0}
            D2 = (inst.d + 1) ** 2
            theta = np.array(pack_params(Wp, Wk))
            last = np.asarray(last, dtype=np.float64).ravel()
            if last.size == theta.size:
                theta = last
            else:  # the prediction's entries only; the others never move
                theta[_prediction_indices(inst.d)] = last
            Wp, Wk = theta[:D2].reshape(inst.d + 1, -1), theta[D2:].reshape(inst.d + 1, -1)
            steps += int(diag.get("num_steps", 0))
            t_final += float(diag.get("t_final", np.nan))
            t_end = 10.0 * float(diag.get("t_final", 1.0))
    return {
        "status": status,
        "W_PV": Wp,
        "W_KQ": Wk,
        "loss": float(full_loss_theta(pack_params(Wp, Wk), inst.Lambda, inst.N)),
        "num_steps": int(steps),
        "t_final": float(t_final),
        "seconds": time.perf_counter() - t0,
    }


def classify(
    end: dict[str, Any],
    cert: dict[str, Any] | None,
    min_loss: float,
    spurious_loss: float,
    tol: float = 1e-9,
) -> str:
    """The limit point's class by its loss: the loss of the critical point found by
    `certify_point` when its Newton polish converged (gradient <= 1e-10, moved <= 1e-2), else
    the end point's. `"global"` / `"spurious"` within relative `tol` of `min_loss` /
    `spurious_loss`; `"other"` for anything else; `"failed"` if the flow failed."""
    if "loss" not in end:
        return "failed"
    L = end["loss"]
    if cert is not None and cert["grad_norm"] <= 1e-10 and cert["newton_moved_rel"] <= 1e-2:
        L = cert["loss"]
    if abs(L - min_loss) <= tol * min_loss:
        return "global"
    if abs(L - spurious_loss) <= tol * spurious_loss:
        return "spurious"
    return "other"


def closed_form_distance(
    cert: dict[str, Any], closed: dict[str, Any], Lambda: np.ndarray
) -> dict[str, float]:
    """Distance of a certified spurious point from the closed form `closed` (`family_minimum`):
    the invariant tensors (`tensor_distance`) after mapping the closed form's direction `e` onto
    the point's `a` direction by the reflection that fixes the rest of Lambda's eigenspace of
    `e` (identity for a simple top eigenvalue; it commutes with Lambda, a symmetry), the
    loss difference, and how far `a`, `b` are from Lambda's top eigenspace and `U` from
    commuting with Lambda."""
    Wp, Wk = cert["W_PV"], cert["W_KQ"]
    lam, V = np.linalg.eigh(Lambda)
    top = V[:, np.abs(lam - lam.max()) <= 1e-9 * lam.max()]
    a, b, U = Wp[-1, :-1], Wk[-1, :-1], Wk[:-1, :-1]
    e_cf = V[:, closed["k"]]
    e_pt = top @ (top.T @ a)
    e_pt = e_pt / np.linalg.norm(e_pt)
    if e_pt @ e_cf < 0:
        e_pt = -e_pt
    v = e_cf - e_pt
    R = np.eye(lam.size) - (2.0 * np.outer(v, v) / (v @ v) if v @ v > 1e-24 else 0.0)
    Wp_c, Wk_c = closed["W_PV"].copy(), closed["W_KQ"].copy()
    Wp_c[-1, :-1] = R @ Wp_c[-1, :-1]
    Wk_c[-1, :-1] = R @ Wk_c[-1, :-1]
    Wk_c[:-1, :-1] = R @ Wk_c[:-1, :-1] @ R.T
    off = lambda x: float(np.linalg.norm(x - top @ (top.T @ x)) / np.linalg.norm(x))  # noqa: E731
    return {
        "tensor_rel": tensor_distance(invariant_tensor(Wp, Wk), invariant_tensor(Wp_c, Wk_c)),
        "loss_abs": abs(cert["loss"] - closed["loss"]),
        "a_off_top_eigenspace": off(a),
        "b_off_top_eigenspace": off(b),
        # relative to ||(U, b)||_F: U = 0 at the rank-one point
        "U_commutator_rel": float(
            np.linalg.norm(U @ Lambda - Lambda @ U)
            / (np.linalg.norm(Wk[:, :-1]) * np.linalg.norm(Lambda))
        ),
    }


def _binomial(k: int, n: int) -> tuple[float, float]:
    p = k / n if n else float("nan")
    return p, math.sqrt(p * (1.0 - p) / n) if n else float("nan")


def basin_table(
    instances: Sequence[Instance],
    spurious: dict[str, dict[str, Any]],
    scales: Sequence[float],
    n_starts: int,
    key: jax.Array,
    *,
    structures: Sequence[str] = STRUCTURES,
    log: Callable[[str], None] = print,
    n_save: int = 20,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Basin fractions: for each instance, structure and scale (a fraction of sigma_max),
    `n_starts` starts (start `j` of cell `(i, s, c)` from `fold_in(fold_in(fold_in(key, i), s),
    c)` then `fold_in(., j)`), each run by the full-entry flow and classified. Returns one row per
    cell (counts, fractions, binomial standard errors `sqrt(p (1 - p) / n)`) and one record per
    end point (class, loss, status, the certificate of every limit point and, for spurious ones,
    the distance from the closed form)."""
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    for i, inst in enumerate(instances):
        L_sp = spurious[inst.name]["loss"]
        for s, structure in enumerate(structures):
            for c, frac in enumerate(scales):
                cell_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), s), c)
                t0 = time.perf_counter()
                counts = dict.fromkeys(("global", "spurious", "other", "failed"), 0)
                n_cert = 0
                for j in range(n_starts):
                    Wp0, Wk0 = make_start(
                        structure, frac * inst.sigma_max, inst, jax.random.fold_in(cell_key, j)
                    )
                    end = flow_end_point(inst, Wp0, Wk0, n_save=n_save)
                    cert = (
                        certify_point(end["W_PV"], end["W_KQ"], inst.Lambda, inst.N)
                        if "W_PV" in end
                        else None
                    )
                    cls = classify(end, cert, inst.min_loss, L_sp)
                    counts[cls] += 1
                    rec = {
                        "instance": inst.name,
                        "structure": structure,
                        "scale": frac,
                        "start": j,
                        "class": cls,
                        "status": end["status"],
                        "end_loss": end.get("loss", float("nan")),
                        "seconds": end["seconds"],
                    }
                    if cert is not None:
                        n_cert += cert["is_minimum"]
                        rec |= {k: v for k, v in cert.items() if k not in ("W_PV", "W_KQ")}
                        if cls == "spurious":
                            rec |= closed_form_distance(cert, spurious[inst.name], inst.Lambda)
                    points.append(rec)
                row: dict[str, Any] = {
                    "instance": inst.name,
                    "d": inst.d,
                    "structure": structure,
                    "scale_over_sigma_max": frac,
                    "n_starts": n_starts,
                    **{f"n_{k}": v for k, v in counts.items()},
                    "n_certified_minima": n_cert,
                    "seconds": time.perf_counter() - t0,
                }
                for cls in ("global", "spurious"):
                    p, se = _binomial(counts[cls], n_starts)
                    row[f"frac_{cls}"], row[f"frac_{cls}_se"] = p, se
                rows.append(row)
                log(
                    f"    basins {inst.name} {structure:>10} {frac:7.3g} sigma_max: "
                    f"global {counts['global']}, spurious {counts['spurious']}, other "
                    f"{counts['other']}, failed {counts['failed']} ({row['seconds']:.1f} s)"
                )
    return rows, points
