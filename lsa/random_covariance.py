"""Training on random covariances [ZFB Def. 4.4, Theorem 4.5, Lemma C.1, Cor. C.2].

Each training prompt draws its own covariance `Lambda_tau = diag(lambda_1 .. lambda_d)` with iid
strictly positive entries from a `CovarianceLaw`; given it, the inputs and the query are iid
`N(0, Lambda_tau)` and `w ~ N(0, I)` (theory.md §9.1).

- **Laws** (`ExponentialLaw`, `GammaLaw`, `UniformLaw`, `LogNormalLaw`, `TwoPointLaw`,
  `ScaledLaw`): a keyed JAX sampler `law.sample(key, shape)` (float64, reproducible from the key)
  and the first three moments `law.moments()`, which the exact loss needs.
- **Exact loss** (`random_covariance_loss`): the population loss (4.10) on the manifold
  `a = b = 0`, `L = E_Lambda[(1/2)(u^2 tr(Gamma Lambda U Lambda U^T) - 2u tr(Lambda^2 U^T) +
  tr Lambda)]`. Computed here elementwise: for diagonal `Lambda`,
  `tr(Gamma Lambda U Lambda U^T) = sum_ij Gamma_ii lambda_i lambda_j U_ij^2`, so
  `L = (1/2) u^2 sum_ij K_ij U_ij^2 - u sum_i E[lambda_i^2] U_ii + (1/2) E tr Lambda` with
  `K_ij = E[Gamma_ii lambda_i lambda_j]`, contracted from the tensor of third moments
  `E[lambda_i lambda_j lambda_k]` (built from the law's moments by index coincidence).
- **Flow** (`random_covariance_flow`): gradient flow of that loss (Lemma C.1; Cor. C.2, eq. C.4)
  over `(u, U)` (`d^2 + 1` states, the gradient by `jax.grad`), diffrax Kvaerno5 in float64,
  in units where `E[tr Lambda_tau]/d = 1`, with the steady-state stopping rule, status codes and
  `FlowError` of the other flows.
- **Theorem 4.5's sigma condition** (UNCERTAIN form, theory.md §15): `theorem45_sigma_bounds`
  computes both candidate bounds and the flow warns (`TheoremCoverageWarning`) by the smaller.
- **Empirical version**: `sample_random_covariance_prompts` draws prompts with a fresh
  `Lambda_tau` each; `random_covariance_quadratic_loss` folds them into the exact
  `QuadraticLoss` for `lsa.flow.empirical_flow` (all `2 (d+1)^2` entries).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import time
import warnings
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._diffrax import (
    BorderedDiagonal,
    FlooredChord,
    _checks_without_callbacks,
    _controller,
    _f64,
    _progress_meter,
    failure_status,
)
from ._options import FlowError
from ._validate import TheoremCoverageWarning, check_length, check_positive, check_square
from .loss import QuadraticLoss, prompt_stats, quadratic_loss
from .model import from_reduced
from .precision import require_x64
from .prompts import Init, Prompts, random_theta

__all__ = [
    "CovarianceLaw",
    "ExponentialLaw",
    "GammaLaw",
    "LogNormalLaw",
    "RandomCovarianceFlowResult",
    "ScaledLaw",
    "TwoPointLaw",
    "UniformLaw",
    "random_covariance_flow",
    "random_covariance_init",
    "random_covariance_loss",
    "random_covariance_loss_grad",
    "random_covariance_quadratic_loss",
    "sample_random_covariance_prompts",
    "second_order_coefficients",
    "theorem45_sigma_bounds",
]

_F64 = jnp.float64

# ----------------------------------------------------------------------------------------
# Laws of the covariance entries
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CovarianceLaw(abc.ABC):
    """The law of one diagonal entry `lambda_i` of `Lambda_tau` (iid over `i` and prompts).

    Subclasses are frozen (hashable) dataclasses validated on construction; they implement
    `sample(key, shape)` (float64, strictly positive a.s.) and `moments()`
    `(E lambda, E lambda^2, E lambda^3)`.
    """

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        """Draw iid entries of the given shape (float64) from `key`."""

    @abc.abstractmethod
    def moments(self) -> tuple[float, float, float]:
        """`(m1, m2, m3) = (E lambda, E lambda^2, E lambda^3)`."""

    @property
    def mean(self) -> float:
        return self.moments()[0]

    def scaled(self, c: float) -> CovarianceLaw:
        """The law of `c lambda`."""
        return ScaledLaw(self, c)


def _pos(x: Any, name: str, law: str) -> float:
    try:
        return check_positive(x, name)
    except ValueError as exc:
        raise ValueError(f"{law}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ExponentialLaw(CovarianceLaw):
    """`lambda ~ Exp` with mean `mean` (ZFB's Figure 1: `mean = 1`). Moments `mean^k k!`."""

    mean_: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean_", _pos(self.mean_, "mean_", "ExponentialLaw"))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        return self.mean_ * jax.random.exponential(key, shape, _F64)

    def moments(self) -> tuple[float, float, float]:
        m = self.mean_
        return m, 2.0 * m**2, 6.0 * m**3


@dataclasses.dataclass(frozen=True)
class GammaLaw(CovarianceLaw):
    """`lambda ~ Gamma(shape k, scale theta)`; moments `theta^j k (k+1) .. (k+j-1)`."""

    k: float
    theta: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _pos(self.k, "k", "GammaLaw"))
        object.__setattr__(self, "theta", _pos(self.theta, "theta", "GammaLaw"))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        return self.theta * jax.random.gamma(key, self.k, shape, _F64)

    def moments(self) -> tuple[float, float, float]:
        k, t = self.k, self.theta
        return k * t, k * (k + 1) * t**2, k * (k + 1) * (k + 2) * t**3


@dataclasses.dataclass(frozen=True)
class UniformLaw(CovarianceLaw):
    """`lambda ~ U(low, high)`, `0 <= low < high`; moments `(high^{j+1} - low^{j+1}) /
    ((j+1)(high - low))`."""

    low: float
    high: float

    def __post_init__(self) -> None:
        lo, hi = float(self.low), float(self.high)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
            raise ValueError(
                f"UniformLaw: need finite 0 <= low < high (entries must be positive); got "
                f"low = {self.low!r}, high = {self.high!r}."
            )
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        u = jax.random.uniform(key, shape, _F64)
        return self.high - (self.high - self.low) * u  # in (low, high]: never 0

    def moments(self) -> tuple[float, float, float]:
        a, b = self.low, self.high
        m = [(b ** (j + 1) - a ** (j + 1)) / ((j + 1) * (b - a)) for j in (1, 2, 3)]
        return m[0], m[1], m[2]


@dataclasses.dataclass(frozen=True)
class LogNormalLaw(CovarianceLaw):
    """`lambda = exp(mu + s z)`, `z ~ N(0, 1)`; moments `exp(j mu + j^2 s^2 / 2)`."""

    mu: float = 0.0
    s: float = 0.5

    def __post_init__(self) -> None:
        mu = float(self.mu)
        if not math.isfinite(mu):
            raise ValueError(f"LogNormalLaw: `mu` must be finite; got {self.mu!r}.")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "s", _pos(self.s, "s", "LogNormalLaw"))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        return jnp.exp(self.mu + self.s * jax.random.normal(key, shape, _F64))

    def moments(self) -> tuple[float, float, float]:
        m = [math.exp(j * self.mu + 0.5 * j * j * self.s**2) for j in (1, 2, 3)]
        return m[0], m[1], m[2]


@dataclasses.dataclass(frozen=True)
class TwoPointLaw(CovarianceLaw):
    """`lambda = high` with probability `p`, else `low` (`0 < low`, `0 <= p <= 1`)."""

    low: float
    high: float
    p: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", _pos(self.low, "low", "TwoPointLaw"))
        object.__setattr__(self, "high", _pos(self.high, "high", "TwoPointLaw"))
        p = float(self.p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"TwoPointLaw: `p` is a probability in [0, 1]; got {self.p!r}.")
        object.__setattr__(self, "p", p)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        hit = jax.random.bernoulli(key, self.p, shape)
        return jnp.where(hit, self.high, self.low).astype(_F64)

    def moments(self) -> tuple[float, float, float]:
        m = [self.p * self.high**j + (1.0 - self.p) * self.low**j for j in (1, 2, 3)]
        return m[0], m[1], m[2]


@dataclasses.dataclass(frozen=True)
class ScaledLaw(CovarianceLaw):
    """The law of `c lambda`, `lambda ~ base` (`c > 0` multiplies the covariance)."""

    base: CovarianceLaw
    c: float

    def __post_init__(self) -> None:
        if not isinstance(self.base, CovarianceLaw):
            raise TypeError(f"ScaledLaw: `base` must be a CovarianceLaw; got {self.base!r}.")
        object.__setattr__(self, "c", _pos(self.c, "c", "ScaledLaw"))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        return self.c * self.base.sample(key, shape)

    def moments(self) -> tuple[float, float, float]:
        m1, m2, m3 = self.base.moments()
        return self.c * m1, self.c**2 * m2, self.c**3 * m3


def _check_law(law: Any) -> CovarianceLaw:
    if not isinstance(law, CovarianceLaw):
        raise ValueError(
            f"`law` must be a CovarianceLaw (e.g. lsa.random_covariance.ExponentialLaw()); got "
            f"{type(law).__name__}."
        )
    return law


# ----------------------------------------------------------------------------------------
# The exact loss
# ----------------------------------------------------------------------------------------


def _third_moment_tensor(d: int, moments: tuple[float, float, float]) -> np.ndarray:
    """`T_ijk = E[lambda_i lambda_j lambda_k]` for iid entries: `m3` when `i = j = k`, `m2 m1`
    when exactly two indices coincide, `m1^3` when all differ."""
    m1, m2, m3 = moments
    i, j, k = np.meshgrid(np.arange(d), np.arange(d), np.arange(d), indexing="ij")
    n_eq = (i == j).astype(int) + (j == k) + (i == k)  # 3: all equal, 1: one pair, 0: none
    return np.where(n_eq == 3, m3, np.where(n_eq == 1, m2 * m1, m1**3))


def second_order_coefficients(
    d: int, N: int, law: CovarianceLaw
) -> tuple[Float[np.ndarray, "d d"], Float[np.ndarray, " d"], float]:
    """`(K, b, e)` of the exact loss: `K_ij = E[(Gamma_tau)_ii lambda_i lambda_j]`,
    `b_i = E[lambda_i^2]`, `e = E[tr Lambda_tau]` [ZFB Lemma C.1, Cor. C.2].

    `K_ij = (1 + 1/N) E[lambda_i^2 lambda_j] + (1/N) sum_k E[lambda_i lambda_j lambda_k]`,
    contracted from the third-moment tensor.
    """
    d = check_length(d, "d")
    N = check_length(N, "N")
    mom = _check_law(law).moments()
    T = _third_moment_tensor(d, mom)
    idx = np.arange(d)
    K = (1.0 + 1.0 / N) * T[idx, idx, :] + T.sum(axis=2) / N
    return K, np.full(d, mom[1]), d * mom[0]


def _loss_from(u: Array, U: Array, K: Array, b: Array, e: Array) -> Array:
    return 0.5 * u**2 * jnp.sum(K * U**2) - u * jnp.sum(b * jnp.diagonal(U)) + 0.5 * e


def random_covariance_loss(
    u: Float[ArrayLike, ""], U: Float[ArrayLike, "d d"], N: int, law: CovarianceLaw
) -> Float[Array, ""]:
    """The population loss (4.10) on `a = b = 0` for iid diagonal random covariances [ZFB eq.
    4.10, Lemma C.1]: `E_Lambda[(1/2)(u^2 tr(Gamma_tau Lambda U Lambda U^T) - 2u tr(Lambda^2 U^T)
    + tr Lambda)]`, with the factor 1/2 of eq. 3.8. Differentiable in `(u, U)` (jax)."""
    U = jnp.asarray(U)
    K, b, e = second_order_coefficients(U.shape[0], N, law)
    return _loss_from(jnp.asarray(u), U, jnp.asarray(K), jnp.asarray(b), _f64(e))


random_covariance_loss_grad = jax.grad(random_covariance_loss, argnums=(0, 1))
"""`(dL/du, dL/dU)` of `random_covariance_loss` by automatic differentiation."""


# ----------------------------------------------------------------------------------------
# Theorem 4.5's sigma condition
# ----------------------------------------------------------------------------------------

#: The fixed key and size of the Monte Carlo part of `E[||Gamma||_op ||Lambda||_F^2]`.
SIGMA_MC_SEED = 45
SIGMA_MC_DRAWS = 20_000


def theorem45_sigma_bounds(
    d: int,
    N: int,
    law: CovarianceLaw,
    Theta_T: Float[ArrayLike, "d d"] | None = None,
    *,
    n_mc: int = SIGMA_MC_DRAWS,
) -> dict[str, float]:
    """Both candidate forms of Theorem 4.5's condition (4.11), which is UNCERTAIN (theory.md
    §9.2, §15 item 2): `sigma^2 < 2 num / (sqrt(d) E[||Gamma_tau||_op ||Lambda_tau||_F^2])` with
    `num = ||E[Lambda_tau] Theta||_F^2` (`"mean"`) or `tr(E[Lambda_tau^2] Theta Theta^T)`
    (`"second"`).

    `Theta_T = Theta Theta^T` (normalised here to `||Theta Theta^T||_F = 1`; default `I/sqrt(d)`).
    For diagonal Lambda, `||Gamma||_op = (1 + 1/N) max_i lambda_i + sum_i lambda_i / N`; the part
    `E[sum lambda sum lambda^2] = d m3 + d(d-1) m1 m2` is exact, the part
    `E[max lambda sum lambda^2]` is a Monte Carlo mean over `n_mc` draws from the law's sampler
    with the fixed key `PRNGKey(SIGMA_MC_SEED)` (about 1% relative accuracy: a warning threshold,
    not a theorem).

    **Returns:** `{"mean", "second", "conservative" (the smaller), "denominator"}`.
    """
    d = check_length(d, "d")
    N = check_length(N, "N")
    law = _check_law(law)
    T = np.eye(d) / math.sqrt(d) if Theta_T is None else check_square(Theta_T, "Theta_T", d)
    nrm = float(np.linalg.norm(T))
    if nrm == 0.0:
        raise ValueError("`Theta_T` must be non-zero (Assumption 3.3).")
    T = T / nrm
    m1, m2, m3 = law.moments()
    lam = np.asarray(law.sample(jax.random.PRNGKey(SIGMA_MC_SEED), (check_length(n_mc, "n_mc"), d)))
    e_max = float(np.mean(lam.max(axis=1) * np.sum(lam**2, axis=1)))
    e_sum = d * m3 + d * (d - 1) * m1 * m2
    den = (1.0 + 1.0 / N) * e_max + e_sum / N
    tr_T = float(np.trace(T))
    mean_num = m1 * m1 * tr_T  # ||E[Lambda] Theta||_F^2 = tr(E[Lambda] T E[Lambda])
    second_num = m2 * tr_T  # tr(E[Lambda^2] T)
    s_mean = math.sqrt(2.0 * mean_num / (math.sqrt(d) * den))
    s_second = math.sqrt(2.0 * second_num / (math.sqrt(d) * den))
    return {
        "mean": s_mean,
        "second": s_second,
        "conservative": min(s_mean, s_second),
        "denominator": den,
    }


def _warn_sigma_rc(sigma: float, bounds: dict[str, float]) -> None:
    if sigma >= bounds["conservative"]:
        warnings.warn(
            f"sigma = {sigma:.6g} >= {bounds['conservative']:.6g}, the smaller of the two "
            f"candidate readings of Theorem 4.5's condition (4.11) (||E[Lambda] Theta||_F^2: "
            f"{bounds['mean']:.6g}; tr(E[Lambda^2] Theta Theta^T): {bounds['second']:.6g}); the "
            "condition's exact form is uncertain (theory.md §15). The run goes ahead, but "
            "Theorem 4.5 may not cover it.",
            TheoremCoverageWarning,
            stacklevel=3,
        )


def random_covariance_init(
    d: int,
    N: int,
    law: CovarianceLaw,
    *,
    sigma: float | None = None,
    sigma_fraction: float | None = None,
    Theta: Float[ArrayLike, "d d"] | None = None,
    key: PRNGKeyArray | None = None,
) -> Init:
    """Assumption 3.3 for random covariances: `u(0) = sigma`, `U(0) = sigma Theta Theta^T`
    (`||Theta Theta^T||_F = 1`), with `sigma` given or as `sigma_fraction` of the conservative
    candidate bound of Theorem 4.5 (`theorem45_sigma_bounds`). Give `Theta` or a `key`
    (`lsa.random_theta`). A `sigma` at or above the conservative bound warns."""
    d = check_length(d, "d")
    N = check_length(N, "N")
    law = _check_law(law)
    if (sigma is None) == (sigma_fraction is None):
        raise ValueError("give exactly one of `sigma` or `sigma_fraction`.")
    if Theta is None:
        if key is None:
            raise ValueError("give `Theta` or a `key` to draw a random Theta.")
        Th = np.asarray(random_theta(key, d))
    else:
        Th = check_square(Theta, "Theta", d)
    TT = Th @ Th.T
    nrm = float(np.linalg.norm(TT))
    if nrm == 0.0:
        raise ValueError("`Theta` must be non-zero (Theorem 4.5 needs E[Lambda] Theta != 0).")
    TT = TT / nrm
    bounds = theorem45_sigma_bounds(d, N, law, TT)
    if sigma is None:
        sigma = check_positive(sigma_fraction, "sigma_fraction") * bounds["conservative"]
    sigma = check_positive(sigma, "sigma")
    _warn_sigma_rc(sigma, bounds)
    return Init(u=jnp.asarray(sigma, _F64), U=jnp.asarray(sigma * TT))


# ----------------------------------------------------------------------------------------
# The flow
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomCovarianceFlowResult:
    """A solved random-covariance gradient flow (caller's units, numpy float64).

    - `ts (T,)`, `u (T,)`, `U (T, d, d)`, `loss (T,)` (population loss (4.10) with the 1/2),
      `balance (T,)` (`u^2 - ||U||_F^2`, conserved: eq. C.9);
    - `u_final`, `U_final`, `t_final`, `stop_reason` (`"converged"` or `"t_end"`), `stats`;
    - `product` (`u U` at the end: `g I` at the minimum), `W_PV`, `W_KQ`.
    """

    ts: np.ndarray
    u: np.ndarray
    U: np.ndarray
    loss: np.ndarray
    balance: np.ndarray
    u_final: float
    U_final: np.ndarray
    t_final: float
    stop_reason: str
    stats: dict[str, Any]

    @property
    def product(self) -> np.ndarray:
        return self.u_final * self.U_final

    @property
    def W_PV(self) -> np.ndarray:
        return np.asarray(from_reduced(self.u_final, self.U_final)[0])

    @property
    def W_KQ(self) -> np.ndarray:
        return np.asarray(from_reduced(self.u_final, self.U_final)[1])


def _state_parts(y: Array, d: int) -> tuple[Array, Array]:
    return y[-1], y[:-1].reshape(d, d)


def _rc_loss(y: Array, args: tuple) -> Array:
    K, b, e = args[0], args[1], args[2]
    u, U = _state_parts(y, K.shape[0])
    return _loss_from(u, U, K, b, e)


def _rc_vf(t: Any, y: Array, args: tuple) -> Array:
    return -jax.grad(_rc_loss)(y, args)


def _rc_metrics(t: Any, y: Array, args: tuple) -> dict[str, Array]:
    u, U = _state_parts(y, args[0].shape[0])
    return {"y": y, "loss": _rc_loss(y, args), "balance": u**2 - jnp.sum(U**2)}


def _rc_stop(t: Any, y: Array, args: tuple, **kwargs: Any) -> Array:
    """`||f(y)||_max <= eps u^2 min K ||y||_max`: the estimated relative distance to the fixed
    point (the slowest linear rate at the minimum is `u^2 min K`) is below `eps`."""
    del kwargs
    f = _rc_vf(t, y, args)
    rate = y[-1] ** 2 * args[4]
    return jnp.max(jnp.abs(f)) <= args[3] * rate * jnp.max(jnp.abs(y))


@eqx.filter_jit
def _solve_rc(y0, args, ts, t1, dt0, rtol, atol, newton_atol, *, max_steps, progress):  # type: ignore[no-untyped-def]
    # The Jacobian of (vec U, u) is diagonal on vec U (dU_ij/dt = -u^2 K_ij U_ij + u b_i
    # [i = j]) plus a border of width 1 (u): O(d^2) Newton solves by a Schur complement.
    solver = diffrax.Kvaerno5(
        root_finder=FlooredChord(
            rtol=1e-6,
            atol=newton_atol,
            norm=optx.max_norm,
            linear_solver=BorderedDiagonal(border=1),
        )
    )
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_rc_vf),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts, t1=True, fn=_rc_metrics),
        stepsize_controller=_controller(rtol, atol, 0.2, 0.4),
        event=diffrax.Event(_rc_stop),
        max_steps=max_steps,
        throw=False,
        progress_meter=_progress_meter(progress),
    )


#: The smallest matrix size of the solve: every d up to it shares one compiled solve (a step
#: costs O(size^2) thanks to the bordered-diagonal Newton solve, so padding is cheap).
MIN_PADDED = 32


def _padded(d: int) -> int:
    """The solve's matrix size: the next power of two >= d, at least `MIN_PADDED`."""
    return max(MIN_PADDED, 1 << (d - 1).bit_length())


def _status(sol: Any, final: np.ndarray, u0: float, fixed_end: bool) -> str:
    R = diffrax.RESULTS
    res = sol.result
    if not np.all(np.isfinite(final)):
        return "non_finite"
    if res == R.event_occurred:
        return "converged"
    if res == R.successful:
        return "t_end" if fixed_end else "horizon"
    if final[-1] * math.copysign(1.0, u0) <= 0:
        return "u_nonpositive"
    return failure_status(res)


_MESSAGES = {
    "max_steps": "random-covariance flow hit max_steps before the stopping rule fired; raise "
    "`max_steps` or loosen `eps`",
    "horizon": "random-covariance flow reached its horizon without meeting the stopping rule "
    "(eps={eps}); raise `margin` or pass `t_end`",
    "non_finite": "random-covariance flow produced NaN or inf",
    "u_nonpositive": "random-covariance flow ended with u crossed to the other sign of u(0)",
    "newton_failure": "random-covariance flow stopped: the Newton iteration failed",
    "step_size_underflow": "random-covariance flow stopped: the step size underflowed",
    "solver_failure": "random-covariance flow: solver failed ({result})",
}


def random_covariance_flow(
    d: int,
    N: int,
    law: CovarianceLaw,
    init: Init,
    *,
    t_end: float | None = None,
    rtol: float = 1e-10,
    eps: float = 1e-10,
    margin: float = 20.0,
    n_save: int = 200,
    max_steps: int = 100_000,
    progress: bool = False,
    warn: bool = True,
) -> RandomCovarianceFlowResult:
    """Gradient flow of the population loss (4.10) for iid diagonal random covariances from
    `init` [ZFB Lemma C.1; Cor. C.2, eq. C.4]; Theorem 4.5 predicts `u U -> g I` (eq. 4.12) with
    `g = E[lambda^2] / E[Gamma_ii lambda_i^2]`.

    The state is `(U, u)` (`d^2 + 1` numbers), the vector field `-grad L` by `jax.grad` of
    `random_covariance_loss`, integrated by diffrax's Kvaerno5 (L-stable, dense Newton) in
    float64, in units where `E[tr Lambda_tau]/d = 1` (`lambda -> lambda / m1`,
    `u, U -> m1^{1/2} (u, U)`, `t -> m1^2 t`, loss `-> loss / m1`: an exact reparametrisation),
    so tolerances and step counts do not depend on the law's scale.

    **Arguments:**

    - `d`, `N`: dimension and training prompt length (>= 1);
    - `law`: the `CovarianceLaw` of the entries of `Lambda_tau`;
    - `init`: the start (`random_covariance_init`, `lsa.paper_init`, or any `Init`);
    - `t_end`: integrate to this time (the stopping rule may still end it earlier); default:
      until the stopping rule fires, within the horizon `margin * (t_escape + t_convergence)`;
    - `rtol` (absolute tolerance `rtol * 1e-2 * min(sigma, 1)` in solver units), `eps` (stop
      when `||f||_max <= eps u^2 min K ||y||_max`), `n_save` (log-spaced save times),
      `max_steps`, `progress`;
    - `warn`: warn (`TheoremCoverageWarning`) when a balanced start has `sigma` at or above the
      smaller candidate bound of Theorem 4.5 (`theorem45_sigma_bounds`).

    **Returns:** a `RandomCovarianceFlowResult`. Raises `FlowError` (with `status` and the last
    state) on `max_steps`, `horizon`, NaN, `u <= 0`, Newton failure or step-size underflow.
    """
    require_x64("lsa.random_covariance_flow")
    d = check_length(d, "d")
    N = check_length(N, "N")
    law = _check_law(law)
    U0 = check_square(init.U, "init.U", d)
    u0 = float(init.u)
    if not math.isfinite(u0) or u0 == 0.0:
        raise ValueError(f"`init.u` must be finite and non-zero; got {u0}.")
    if t_end is not None and not (math.isfinite(t_end) and t_end > 0):
        raise ValueError(f"`t_end` must be a finite number > 0; got {t_end!r}.")
    if not 0.0 < rtol < 1e-2:
        raise ValueError(f"`rtol` must lie in (0, 1e-2); got {rtol!r}.")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"`eps` must lie in (0, 1); got {eps!r}.")
    check_positive(margin, "margin")
    if n_save < 2 or max_steps < 1:
        raise ValueError(f"need `n_save` >= 2 and `max_steps` >= 1; got {n_save}, {max_steps}.")
    sig0 = max(abs(u0), float(np.linalg.norm(U0)))
    if warn and abs(u0**2 - float(np.sum(U0**2))) <= 1e-10 * u0**2 and np.trace(U0) != 0.0:
        _warn_sigma_rc(abs(u0), theorem45_sigma_bounds(d, N, law, U0 / np.linalg.norm(U0)))

    # solver units: E[lambda] = 1
    a = law.mean
    law_s = ScaledLaw(law, 1.0 / a)
    K, b, e = second_order_coefficients(d, N, law_s)
    sq = math.sqrt(a)
    # Padding (to `_padded(d)`): one compiled solve serves every d up to that size.
    # Padded entries have b = 0 and start at 0, so they stay exactly 0 (dU_ij = -u^2 K_ij U_ij).
    D = _padded(d)
    K_p = np.full((D, D), float(K.max()))
    K_p[:d, :d] = K
    b_p = np.zeros(D)
    b_p[:d] = b
    U0_p = np.zeros((D, D))
    U0_p[:d, :d] = U0 * sq
    y0 = np.concatenate([U0_p.reshape(-1), [u0 * sq]])
    sigma = sig0 * sq
    beta = float(b[0])
    u_star2 = math.sqrt(d) * beta / float(K[0, 0])  # u*^2 = ||g I||_F at the limit (C.15)
    t_esc = math.log(max(math.sqrt(u_star2) / sigma, math.e)) / (beta * math.sqrt(d))
    t_conv = math.log(1e4 / eps) / (u_star2 * float(K.min()))
    t1 = t_end * a**2 if t_end is not None else margin * (t_esc + t_conv)
    t_first = min(t_esc, 1.0 / float(K.max())) * 1e-3
    ts = np.concatenate([[0.0], np.geomspace(min(t_first, t1 / 10), t1, n_save - 1)])
    ts = np.minimum(ts, t1)
    atol = rtol * 1e-2 * min(sigma, 1.0)
    newton_atol = 1e-8 * min(max(sigma, 1e-4), 1.0)
    args = (jnp.asarray(K_p), jnp.asarray(b_p), _f64(e), _f64(eps), _f64(K.min()))
    t0 = time.perf_counter()
    with _checks_without_callbacks():
        sol = _solve_rc(
            jnp.asarray(y0), args, jnp.asarray(ts), _f64(t1), _f64(t_first), _f64(rtol),
            _f64(atol), _f64(newton_atol), max_steps=max_steps, progress=progress,
        )  # fmt: skip
        jax.block_until_ready(sol.ys)
    wall = time.perf_counter() - t0
    ts_out = np.asarray(sol.ts)
    ys = np.asarray(sol.ys["y"])
    loss = np.asarray(sol.ys["loss"])
    bal = np.asarray(sol.ys["balance"])
    # after an event diffrax writes the end state into the first unreached slot and fills the
    # rest with inf; without an event the t1 slot holds it (a duplicate of the last save time)
    finite = np.nonzero(np.isfinite(ts_out))[0]
    idx = finite[np.concatenate([np.diff(ts_out[finite]) > 0, [True]])]
    ts_out, ys, loss, bal = ts_out[idx], ys[idx], loss[idx], bal[idx]
    ys = np.concatenate([ys[:, :-1].reshape(-1, D, D)[:, :d, :d].reshape(-1, d * d), ys[:, -1:]], 1)
    final = ys[-1] if len(ys) else np.full(d * d + 1, np.nan)
    stats = {
        "num_steps": int(sol.stats["num_steps"]),
        "num_accepted_steps": int(sol.stats["num_accepted_steps"]),
        "num_rejected_steps": int(sol.stats["num_rejected_steps"]),
        "max_steps": max_steps,
        "wall_seconds": wall,
        "t_horizon": t1 / a**2,
        "rtol": rtol,
        "unit_scale": a,
        "result": str(sol.result),
    }
    status = _status(sol, final, u0, t_end is not None)
    if status not in ("converged", "t_end"):
        diag = {
            "status": status,
            "d": d,
            "N": N,
            "t_final": float(ts_out[-1]) / a**2 if len(ts_out) else float("nan"),
            "u_final": float(final[-1]) / sq,
            **{k: stats[k] for k in ("num_steps", "num_rejected_steps", "t_horizon", "result")},
            "last_state": final / sq,
        }
        raise FlowError(_MESSAGES[status].format(eps=eps, result=sol.result), diag)
    ts_t = ts_out / a**2
    if t_end is not None and status == "t_end":
        ts_t[-1] = t_end
    u = ys[:, -1] / sq
    U = ys[:, :-1].reshape(-1, d, d) / sq
    return RandomCovarianceFlowResult(
        ts=ts_t,
        u=u,
        U=U,
        loss=loss * a,
        balance=bal / a,
        u_final=float(u[-1]),
        U_final=U[-1],
        t_final=float(ts_t[-1]),
        stop_reason=status,
        stats=stats,
    )


# ----------------------------------------------------------------------------------------
# Empirical version: prompts with a fresh Lambda_tau each
# ----------------------------------------------------------------------------------------


def sample_random_covariance_prompts(
    key: PRNGKeyArray,
    law: CovarianceLaw,
    d: int,
    n_prompts: int,
    n: int,
    *,
    antithetic: bool = False,
) -> tuple[Prompts, Float[Array, "B d"]]:
    """Draw `n_prompts` prompts of length `n` with a fresh `Lambda_tau = diag(lambda_tau)` each
    [ZFB Def. 4.4]: `lambda_tau` iid from `law`, then `x_i, x_q ~ N(0, Lambda_tau)` iid (the
    query shares the prompt's covariance), `w ~ N(0, I)`, `y_i = <w, x_i>`, `y_q = <w, x_q>`.

    Keys: `k_lambda, k_x, k_q, k_w = split(key, 4)`. With `antithetic=True` the second half
    repeats the first half's covariances and inputs with `-w` (odd functions of `w` then average
    to exactly 0 over the batch, so `a = b = 0` is kept exactly by the empirical flow).

    **Returns:** `(lsa.Prompts, eigenvalues (n_prompts, d))`.
    """
    law = _check_law(law)
    d = check_length(d, "d")
    n = check_length(n, "n")
    n_prompts = check_length(n_prompts, "n_prompts")
    if antithetic and n_prompts % 2:
        raise ValueError("`n_prompts` must be even when `antithetic=True`.")
    B = n_prompts // 2 if antithetic else n_prompts
    kl, kx, kq, kw = jax.random.split(key, 4)
    lam = law.sample(kl, (B, d))
    sd = jnp.sqrt(lam)
    X = jax.random.normal(kx, (B, n, d), _F64) * sd[:, None, :]
    x_q = jax.random.normal(kq, (B, d), _F64) * sd
    w = jax.random.normal(kw, (B, d), _F64)
    if antithetic:
        lam, X, x_q = (jnp.concatenate([v, v]) for v in (lam, X, x_q))
        w = jnp.concatenate([w, -w])
    y = jnp.einsum("bnd,bd->bn", X, w)
    y_q = jnp.einsum("bd,bd->b", x_q, w)
    return Prompts(X=X, y=y, x_q=x_q, y_q=y_q, w=w), lam


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _chunk_loss(
    key: PRNGKeyArray, law: CovarianceLaw, d: int, N: int, chunk: int, antithetic: bool
) -> QuadraticLoss:
    """One chunk's `QuadraticLoss` (compiled once per law, sizes and `antithetic`)."""
    p, _ = sample_random_covariance_prompts(key, law, d, chunk, N, antithetic=antithetic)
    return quadratic_loss(prompt_stats(p.X, p.y, p.x_q, p.y_q), chunk=chunk)


def random_covariance_quadratic_loss(
    key: PRNGKeyArray,
    law: CovarianceLaw,
    d: int,
    N: int,
    B: int,
    *,
    chunk: int = 1_000,
    antithetic: bool = True,
) -> QuadraticLoss:
    """The exact `QuadraticLoss` (empirical loss 3.7) of `B` training prompts of length `N` with
    a fresh covariance each (`sample_random_covariance_prompts`), drawn in chunks of `chunk`
    prompts (chunk `c` from `fold_in(key, c)`), for `lsa.flow.empirical_flow`."""
    law = _check_law(law)
    d = check_length(d, "d")
    N = check_length(N, "N")
    chunk = check_length(chunk, "chunk")
    B = check_length(B, "B")
    if B % chunk or (antithetic and chunk % 2):
        raise ValueError(
            f"`B` = {B} must be a multiple of `chunk` = {chunk} (even when antithetic)."
        )

    parts = [
        _chunk_loss(jax.random.fold_in(key, c), law, d, N, chunk, antithetic)
        for c in range(B // chunk)
    ]
    return jax.tree_util.tree_map(lambda *xs: sum(xs) / len(xs), *parts)
