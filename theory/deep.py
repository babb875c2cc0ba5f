"""Exact risk of L steps of scalar gradient descent, as computed by a masked sparse LSA stack
(Ahn et al. 2023, Lemma 1; docs/deep.md), for isotropic data.

Setting [DERIVED]: x_i, x_q ~ N(0, I_d), w ~ N(0, I_d), y = <w, x> (noiseless), prompts of length N
at training and at test. The masked sparse stack with scalar steps A_l = a_l I computes L steps of
gradient descent w_{l+1} = w_l - a_l grad R(w_l), R(w) = (1/2N) ||X (w - w_*)||^2, w_0 = 0, and
predicts <w_L, x_q>. With S = X^T X / N,

    w_L - w = -prod_l (I - a_l S) w,        so   E (y_hat - <w, x_q>)^2 = E tr q(S)^2,
    q(s) = prod_l (1 - a_l s) = sum_j c_j s^j,   c_0 = 1,

and the risk is the quadratic form f(a) = sum_{i,j} c_i c_j m_{i+j} in the exact Wishart moments
m_k = E tr S^k (m_0 = d).

**Moments.** `wishart_moment_polynomial(k)` gives E tr (X^T X)^k as a polynomial in N and d with
integer coefficients, from the Schwinger-Dyson (Stein) loop equation of the real Gaussian matrix X
(N x d, iid N(0, 1) entries), for multi-trace moments T(k; p_1..p_r) = E[tr W^k prod tr W^{p_j}]:

    T(k; P) = (N + k - 1) T(k-1; P) + sum_{i=1}^{k-1} T(i, k-1-i; P)
              + sum_j 2 p_j T(k+p_j-1; P - p_j)

with tr W^0 = d. (Integrate by parts once in E[X_{ia} (X W^{k-1} ...)_{ia}]: the derivative hits X
itself (N), W^{k-1} ((k-1) tr W^{k-1} plus a split into two traces) or another trace.)

**Optimum.** f depends on a only through q, a polynomial of degree L with q(0) = 1, and
E tr q(S)^2 = int q^2 dmu for the expected spectral measure mu of S (mass d). Minimising over the
coefficients is a linear solve with the Hankel matrix H_{ij} = m_{i+j}, i, j = 1..L:
H c = -(m_1, ..., m_L). The minimiser is the degree-L orthogonal polynomial of the measure s mu(ds),
normalised to q(0) = 1 (the stationarity conditions are int q(s) s^{j+1} dmu = 0, j < L). Because
s mu(ds) is a positive measure with a density on (0, inf), its orthogonal polynomials have L real,
simple, positive roots, and the optimal step sizes are their reciprocals: real, distinct and
positive. Any order of the a_l gives the same q, so the optimum is unique up to a permutation of the
layers.

Plain numpy and `fractions`, no JAX; `theory` never imports `lsa` (docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from math import comb

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike

from theory._validate import check_int

__all__ = [
    "format_polynomial",
    "noisy_optimal_step_sizes",
    "optimal_looped_step",
    "optimal_polynomial",
    "optimal_risk",
    "optimal_step_sizes",
    "step_polynomial",
    "step_sizes_risk",
    "wishart_moment_polynomial",
    "wishart_moments",
]

#: A polynomial in (N, d): {(power of N, power of d): integer coefficient}.
Poly = dict[tuple[int, int], int]


# ----------------------------------------------------------------------------------------------
# Exact Wishart moments by the loop equation


def _padd(p: Poly, q: Poly, scale: int = 1) -> Poly:
    out = dict(p)
    for mono, c in q.items():
        out[mono] = out.get(mono, 0) + scale * c
        if out[mono] == 0:
            del out[mono]
    return out


def _pmul_linear(p: Poly, cN: int, cd: int, c0: int) -> Poly:
    """p * (cN N + cd d + c0)."""
    out: Poly = {}
    for (i, j), c in p.items():
        for mono, f in (((i + 1, j), cN), ((i, j + 1), cd), ((i, j), c0)):
            if f:
                out[mono] = out.get(mono, 0) + c * f
    return {m: c for m, c in out.items() if c}


@functools.cache
def _multi_trace(parts: tuple[int, ...]) -> tuple[tuple[tuple[int, int], int], ...]:
    """E prod_j tr W^{parts_j} for W = X^T X (X: N x d, iid N(0,1)), as sorted monomial items.

    `parts` is a non-increasing tuple of positive integers (a partition); the empty tuple is 1.
    """
    if not parts:
        return (((0, 0), 1),)
    k, rest = parts[0], parts[1:]
    out: Poly = {}

    def term(new_parts: list[int], cN: int, cd: int, c0: int) -> None:
        nonlocal out
        zeros = sum(1 for p in new_parts if p == 0)
        kept = tuple(sorted((p for p in new_parts if p > 0), reverse=True))
        poly: Poly = dict(_multi_trace(kept))
        for _ in range(zeros):  # each tr W^0 is a factor d
            poly = _pmul_linear(poly, 0, 1, 0)
        out = _padd(out, _pmul_linear(poly, cN, cd, c0))

    # The derivative hits the first X of tr(X^T X W^{k-1}) ... : N tr W^{k-1}.
    # It hits W^{k-1}: (k-1) tr W^{k-1} and sum_{i=1}^{k-1} tr W^i tr W^{k-1-i}.
    term([k - 1, *rest], 1, 0, k - 1)
    for i in range(1, k):
        term([i, k - 1 - i, *rest], 0, 0, 1)
    # It hits another trace tr W^p: 2 p tr W^{k+p-1}.
    for j, p in enumerate(rest):
        others = list(rest[:j] + rest[j + 1 :])
        term([k + p - 1, *others], 0, 0, 2 * p)
    return tuple(sorted(out.items()))


def wishart_moment_polynomial(k: int) -> Poly:
    """E tr (X^T X)^k as a polynomial in N and d, X an N x d matrix with iid N(0, 1) entries.

    Exact integer coefficients, from the loop equation in the module docstring; for example
    k = 2 gives N d (N + d + 1) = N^2 d + N d^2 + N d.

    **Arguments:**

    - `k`: the power, an integer >= 0 (k = 0 gives d).

    **Returns:** `{(i, j): c}` meaning sum c N^i d^j.
    """
    kk = check_int(k, "k", minimum=0)
    if kk == 0:
        return {(0, 1): 1}
    return dict(_multi_trace((kk,)))


def format_polynomial(poly: Poly) -> str:
    """A polynomial in (N, d) as text, highest total degree first (for docs and reports)."""
    terms = []
    for (i, j), c in sorted(poly.items(), key=lambda t: (-(t[0][0] + t[0][1]), -t[0][0])):
        mono = "*".join(
            [f"N^{i}" if i > 1 else "N"] * (i > 0) + [f"d^{j}" if j > 1 else "d"] * (j > 0)
        )
        coeff = "" if (c == 1 and mono) else str(c) + ("*" if mono else "")
        terms.append(coeff + mono)
    return " + ".join(terms) if terms else "0"


def _eval_poly(poly: Poly, N: int, d: int) -> int:
    return sum(c * N**i * d**j for (i, j), c in poly.items())


def wishart_moments(
    d: int, N: int, kmax: int, *, exact: bool = True
) -> list[Fraction] | Float[np.ndarray, " kmax+1"]:
    """The moments m_k = E tr S^k, k = 0..kmax, of S = X^T X / N (X: N x d, iid N(0, 1)).

    m_0 = d, m_1 = d, m_2 = d (N + d + 1) / N, m_3 = d (N^2 + 3 N d + d^2 + 3 N + 3 d + 4) / N^2
    (docs/deep.md lists k <= 4). Exact for every N >= 1 and d >= 1, including N < d.

    **Arguments:**

    - `d`: input dimension, an integer >= 1.
    - `N`: prompt length, an integer >= 1.
    - `kmax`: the largest power, an integer >= 0.
    - `exact`: return `fractions.Fraction`s (default) or a float64 array.

    **Returns:** a list of `kmax + 1` Fractions, or a float64 array of that length.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    km = check_int(kmax, "kmax", minimum=0)
    moms = [Fraction(_eval_poly(wishart_moment_polynomial(k), n, dd), n**k) for k in range(km + 1)]
    if exact:
        return moms
    return np.array([float(m) for m in moms])


# ----------------------------------------------------------------------------------------------
# Risk of given step sizes


def _check_steps(a: ArrayLike, name: str = "a") -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-d array of step sizes, one per layer; got shape "
            f"{arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or inf; pass finite step sizes.")
    return arr


def step_polynomial(a: Float[ArrayLike, " L"]) -> Float[np.ndarray, " L+1"]:
    """Coefficients c_0..c_L (c_0 = 1) of q(s) = prod_l (1 - a_l s), lowest power first."""
    arr = _check_steps(a)
    c = np.array([1.0])
    for al in arr:
        c = np.concatenate([c, [0.0]]) - al * np.concatenate([[0.0], c])
    return c


def _exact_step_polynomial(a: np.ndarray) -> list[Fraction]:
    c = [Fraction(1)]
    for al in a:
        fa = Fraction(float(al))  # the float's exact value
        c = [x - fa * y for x, y in zip([*c, Fraction(0)], [Fraction(0), *c], strict=True)]
    return c


def _quadratic_risk(c: Sequence[Fraction], m: Sequence[Fraction]) -> float:
    """sum_{i,j} c_i c_j m_{i+j} in exact arithmetic (no cancellation), then rounded once."""
    L = len(c) - 1
    return float(sum(c[i] * c[j] * m[i + j] for i in range(L + 1) for j in range(L + 1)))


def step_sizes_risk(a: Float[ArrayLike, " L"], d: int, N: int) -> float:
    """E (y_hat - <w, x_q>)^2 of L steps of GD with step sizes `a` (no 1/2, as in `theory.risk`).

    The masked sparse LSA stack with A_l = a_l I (Ahn et al. Lemma 1) on prompts of length N, with
    x, x_q ~ N(0, I_d), w ~ N(0, I_d), noiseless: f(a) = E tr prod_l (I - a_l S)^2 with
    S = X^T X / N, a quadratic form in the exact moments (`wishart_moments`). a = () would be d.

    **Arguments:**

    - `a`: the step sizes a_1..a_L, a non-empty 1-d array (the order does not matter).
    - `d`: input dimension, an integer >= 1.
    - `N`: prompt length (training = test), an integer >= 1.

    **Returns:** the risk as a float.
    """
    arr = _check_steps(a)
    dd = check_int(d, "d")
    n = check_int(N, "N")
    m = wishart_moments(dd, n, 2 * arr.size)
    assert isinstance(m, list)
    return _quadratic_risk(_exact_step_polynomial(arr), m)


# ----------------------------------------------------------------------------------------------
# The optimum: an orthogonal polynomial


def _solve_fraction(A: list[list[Fraction]], b: list[Fraction]) -> list[Fraction]:
    """Exact Gaussian elimination (the Hankel matrix is positive definite: no pivoting needed)."""
    n = len(b)
    M = [[*row, bi] for row, bi in zip(A, b, strict=True)]
    for i in range(n):
        piv = M[i][i]
        if piv == 0:
            raise ZeroDivisionError("singular moment matrix")
        for r in range(i + 1, n):
            f = M[r][i] / piv
            if f:
                M[r] = [x - f * y for x, y in zip(M[r], M[i], strict=True)]
    x = [Fraction(0)] * n
    for i in reversed(range(n)):
        x[i] = (M[i][n] - sum(M[i][j] * x[j] for j in range(i + 1, n))) / M[i][i]
    return x


def optimal_polynomial(d: int, N: int, L: int) -> list[Fraction]:
    """Exact coefficients c_0 = 1, c_1..c_L of the optimal step polynomial q(s) = sum c_j s^j.

    Solves H c = -(m_1, ..., m_L) with H_{ij} = m_{i+j} (i, j = 1..L) in exact rationals: q is the
    degree-L orthogonal polynomial of s mu(ds) with q(0) = 1 (module docstring).

    **Returns:** `L + 1` Fractions, lowest power first.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    LL = check_int(L, "L")
    m = wishart_moments(dd, n, 2 * LL)
    assert isinstance(m, list)
    H = [[m[i + j] for j in range(1, LL + 1)] for i in range(1, LL + 1)]
    rhs = [-m[i] for i in range(1, LL + 1)]
    return [Fraction(1), *_solve_fraction(H, rhs)]


def _horner(c: Sequence[Fraction], x: float) -> tuple[float, float]:
    """Value and derivative of sum c_j x^j at float x."""
    p, dp = 0.0, 0.0
    for cj in reversed(c):
        dp = dp * x + p
        p = p * x + float(cj)
    return p, dp


def optimal_step_sizes(d: int, N: int, L: int) -> Float[np.ndarray, " L"]:
    """The optimal step sizes a_1 < ... < a_L of L scalar GD steps (masked sparse LSA stack).

    The reciprocals of the roots of `optimal_polynomial(d, N, L)`: the roots of the reversed
    polynomial p(a) = sum_j c_j a^{L-j}, found by `numpy.roots` and polished by Newton steps on
    the exact coefficients. They are real, simple and positive (orthogonal-polynomial roots,
    module docstring); a `RuntimeError` says so if round-off ever contradicts that.

    L = 1 gives a* = m_1/m_2 = N / (N + d + 1), the isotropic Gamma^{-1} of [ZFB Thm 4.1] and
    Akyuerek's GD(alpha) with alpha = 1 / (2 (N + d + 1)) (w = 2 alpha X^T Y = a* X^T Y / N).

    **Arguments:**

    - `d`: input dimension, an integer >= 1.
    - `N`: prompt length, an integer >= 1.
    - `L`: number of layers (steps), an integer >= 1.

    **Returns:** the step sizes, sorted increasingly, shape (L,).
    """
    c = optimal_polynomial(d, N, L)
    # p(a) = a^L q(1/a) = sum_j c_j a^{L-j}: c itself lists p's coefficients highest power first.
    roots = np.roots([float(x) for x in c])
    scale = max(1.0, float(np.max(np.abs(roots))))
    if np.max(np.abs(roots.imag)) > 1e-6 * scale:
        raise RuntimeError(f"optimal step polynomial has complex roots {roots}: not expected.")
    a = np.sort(roots.real)
    crev = list(reversed(c))  # p's coefficients lowest power first, for `_horner`
    for i in range(a.size):
        x = float(a[i])
        for _ in range(3):
            p, dp = _horner(crev, x)
            if dp == 0.0:
                break
            x -= p / dp
        a[i] = x
    a = np.sort(a)
    if a.size > 1 and np.min(np.diff(a)) <= 1e-9 * scale:
        raise RuntimeError(f"optimal step sizes {a} are not distinct: not expected.")
    return a


def optimal_risk(d: int, N: int, L: int) -> float:
    """The minimal risk min_a E tr q(S)^2 = sum_j c_j m_j (the normal equations), exact -> float.

    L = 1 gives d (d + 1) / (N + d + 1) = 2 min L of ZFB (`theory.global_min.min_loss_isotropic`).
    """
    c = optimal_polynomial(d, N, L)
    m = wishart_moments(d, N, len(c) - 1)
    assert isinstance(m, list)
    return float(sum(cj * mj for cj, mj in zip(c, m, strict=True)))


def optimal_looped_step(d: int, N: int, L: int) -> float:
    """The optimal shared step a of a weight-shared (looped) stack of L layers.

    g(a) = E tr (I - a S)^{2L} = sum_k binom(2L, k) (-a)^k m_k is strictly convex in a (each
    eigenvalue's (1 - a lambda)^{2L} is), so g' has exactly one real root: found by `numpy.roots`
    on the exact coefficients of g' and polished by Newton steps. L = 1 gives N / (N + d + 1).

    **Arguments:** as `optimal_step_sizes`.

    **Returns:** the step size as a float.
    """
    dd = check_int(d, "d")
    n = check_int(N, "N")
    LL = check_int(L, "L")
    m = wishart_moments(dd, n, 2 * LL)
    assert isinstance(m, list)
    K = 2 * LL
    g = [Fraction(comb(K, k)) * (-1) ** k * m[k] for k in range(K + 1)]  # lowest first
    dg = [k * g[k] for k in range(1, K + 1)]  # g'(a) = sum_k dg_k a^k, lowest first
    roots = np.roots([float(x) for x in reversed(dg)])
    real = roots[np.argmin(np.abs(roots.imag))].real
    x = float(real)
    for _ in range(5):
        p, dp = _horner(dg, x)
        if dp == 0.0:
            break
        x -= p / dp
    return x


def noisy_optimal_step_sizes(d: int, N: int, L: int, noise: float) -> np.ndarray:
    """The optimal scalar steps of the masked sparse stack for isotropic x, w ~ N(0, I), label
    noise variance `noise` (= (sigma/tau)^2 for w ~ N(0, tau^2 I)), clean target [DERIVED; L = 1
    gives N / (N + d + 1 + noise), the noisy-training minimiser of theory.md §8.6]: the minimiser of
    `sum_{i,j>=0} c_i c_j m_{i+j} + (noise/N) sum_{i,j>=1} c_i c_j m_{i+j-1}` over c_1..c_L, then
    the reciprocal roots of q, sorted. Raises ValueError if a root is not real and positive."""
    d = check_int(d, "d")
    N = check_int(N, "N")
    L = check_int(L, "L")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"`noise` must be a finite number >= 0; got {noise}.")
    m = [float(x) for x in wishart_moments(d, N, 2 * L)]
    idx = np.arange(1, L + 1)
    H = np.array([[m[i + j] + noise / N * m[i + j - 1] for j in idx] for i in idx])
    rhs = -np.array([m[i] for i in idx])  # the c_0 = 1 cross terms (the noise term has none)
    c = np.concatenate([[1.0], np.linalg.solve(H, rhs)])
    roots = np.roots(c[::-1])
    if np.max(np.abs(roots.imag)) > 1e-9 * np.max(np.abs(roots)) or np.min(roots.real) <= 0:
        raise ValueError(f"the optimal polynomial has non-real or non-positive roots: {roots}.")
    return np.sort(1.0 / roots.real)
