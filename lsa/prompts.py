"""Prompt distributions, covariance builders and the paper's initialisation.

Every random draw takes an explicit `jax.random` key: nothing here has hidden global state.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._validate import (
    as_float_array,
    check_covariance,
    check_length,
    check_nonnegative,
    check_positive,
    check_square,
    warn_sigma,
)
from .loss import gamma_matrix
from .model import from_reduced

__all__ = [
    "Init",
    "PromptDistribution",
    "Prompts",
    "paper_init",
    "random_orthogonal",
    "random_theta",
    "rotated_covariance",
    "sigma_bound",
    "spread_covariance",
]


def random_orthogonal(key: PRNGKeyArray, d: int) -> Float[Array, "d d"]:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian matrix with sign fix)."""
    Z = jax.random.normal(key, (d, d), dtype=jnp.float64)
    Q, R = jnp.linalg.qr(Z)
    return Q * jnp.sign(jnp.diag(R))[None, :]


def rotated_covariance(
    eigenvalues: Float[ArrayLike, " d"], key: PRNGKeyArray
) -> Float[Array, "d d"]:
    """`Q diag(eigenvalues) Q^T` with a Haar-random rotation `Q`: a non-diagonal covariance.

    Diagonal or isotropic test instances hide errors in the order of matrix products
    (theory.md §14), so the default settings of lsa-flow use this.
    """
    lam = as_float_array(eigenvalues, "eigenvalues")
    if lam.ndim != 1 or np.any(lam <= 0):
        raise ValueError("`eigenvalues` must be a 1-d array of strictly positive numbers.")
    Q = random_orthogonal(key, lam.shape[0])
    S = (Q * jnp.asarray(lam)[None, :]) @ Q.T
    return 0.5 * (S + S.T)


def spread_covariance(
    d: int, kappa: float, key: PRNGKeyArray | None, trace: float | None = None
) -> Float[Array, "d d"]:
    """A covariance with geometrically spread eigenvalues, condition number `kappa`.

    The eigenvalues are `kappa^(k/(d-1))`, k = 0..d-1, rescaled so that the trace is `trace`
    (default `d`). With `key` the eigenbasis is a Haar-random rotation; with `key=None` the
    matrix is diagonal.
    """
    d = check_length(d, "d")
    kappa = check_positive(kappa, "kappa")
    if kappa < 1:
        raise ValueError(f"`kappa` is a condition number and must be >= 1; got {kappa}.")
    lam = kappa ** (np.arange(d) / max(d - 1, 1))
    lam = lam * (float(d if trace is None else check_positive(trace, "trace")) / lam.sum())
    if key is None:
        return jnp.diag(jnp.asarray(lam))
    return rotated_covariance(lam, key)


class Prompts(NamedTuple):
    """A batch of prompts: `X (B, n, d)`, labels `y (B, n)`, query `x_q (B, d)`, target `y_q (B,)`
    and the task vectors `w (B, d)` that generated them."""

    X: Float[Array, "B n d"]
    y: Float[Array, "B n"]
    x_q: Float[Array, "B d"]
    y_q: Float[Array, " B"]
    w: Float[Array, "B d"]


@dataclasses.dataclass(frozen=True)
class PromptDistribution:
    """The ZFB training distribution and its Gaussian generalisations [ZFB §3.3].

    - inputs `x_i, x_q ~ N(0, Lambda)` iid;
    - task `w ~ N(0, Sigma_w)` (default `Sigma_w = I`), one per prompt;
    - labels `y_i = <w, x_i> + eps_i` with `eps_i ~ N(0, noise_std^2)` (default noiseless);
    - target `y_q = <w, x_q>`, plus noise if `noisy_target`.

    Validated on construction: `Lambda` and `Sigma_w` must be symmetric positive definite.
    """

    Lambda: np.ndarray
    Sigma_w: np.ndarray | None = None
    noise_std: float = 0.0
    noisy_target: bool = False

    def __post_init__(self) -> None:
        lam = check_covariance(self.Lambda, "Lambda")
        object.__setattr__(self, "Lambda", lam)
        if self.Sigma_w is not None:
            object.__setattr__(
                self, "Sigma_w", check_covariance(self.Sigma_w, "Sigma_w", d=lam.shape[0])
            )
        object.__setattr__(self, "noise_std", check_nonnegative(self.noise_std, "noise_std"))

    @property
    def d(self) -> int:
        return int(self.Lambda.shape[0])

    def sample(
        self, key: PRNGKeyArray, n_prompts: int, n: int, *, antithetic: bool = False
    ) -> Prompts:
        """Draw `n_prompts` prompts of length `n` (float64).

        With `antithetic=True` the second half repeats the first half's inputs with `-w`
        (and negated noise): then every odd function of `w` averages to exactly 0 over the
        batch, which makes exact symmetry statements (e.g. zero gradient in `a`, `b` at
        `a = b = 0`) testable on a finite set.
        """
        n = check_length(n, "n")
        n_prompts = check_length(n_prompts, "n_prompts")
        if antithetic and n_prompts % 2:
            raise ValueError("`n_prompts` must be even when `antithetic=True`.")
        d = self.d
        kx, kq, kw, ke, keq = jax.random.split(key, 5)
        B = n_prompts // 2 if antithetic else n_prompts
        L_x = jnp.linalg.cholesky(jnp.asarray(self.Lambda))
        X = jax.random.normal(kx, (B, n, d), jnp.float64) @ L_x.T
        x_q = jax.random.normal(kq, (B, d), jnp.float64) @ L_x.T
        w = jax.random.normal(kw, (B, d), jnp.float64)
        if self.Sigma_w is not None:
            w = w @ jnp.linalg.cholesky(jnp.asarray(self.Sigma_w)).T
        eps = self.noise_std * jax.random.normal(ke, (B, n), jnp.float64)
        eps_q = self.noise_std * jax.random.normal(keq, (B,), jnp.float64)
        if antithetic:
            X = jnp.concatenate([X, X])
            x_q = jnp.concatenate([x_q, x_q])
            w = jnp.concatenate([w, -w])
            eps = jnp.concatenate([eps, -eps])
            eps_q = jnp.concatenate([eps_q, -eps_q])
        y = jnp.einsum("bnd,bd->bn", X, w) + eps
        y_q = jnp.einsum("bd,bd->b", x_q, w)
        if self.noisy_target:
            y_q = y_q + eps_q
        return Prompts(X=X, y=y, x_q=x_q, y_q=y_q, w=w)


def random_theta(key: PRNGKeyArray, d: int) -> Float[Array, "d d"]:
    """A random initial direction Theta with `||Theta Theta^T||_F = 1` [ZFB Assumption 3.3].

    Draws `Z` with iid N(0, 1) entries and returns `Theta = Z / ||Z Z^T||_F^{1/2}`, so that
    `Theta Theta^T = Z Z^T / ||Z Z^T||_F` (theory.md §2.7).
    """
    d = check_length(d, "d")
    Z = jax.random.normal(key, (d, d), jnp.float64)
    return Z / jnp.sqrt(jnp.linalg.norm(Z @ Z.T))


def sigma_bound(Lambda: Float[ArrayLike, "d d"], N: int) -> float:
    """`sigma_max = sqrt(2 / (sqrt(d) ||Gamma||_op))`, the bound of Theorem 4.1 [ZFB Thm 4.1].

    Computed here (not imported from `theory`) because `lsa` validates its own inputs.
    """
    lam = check_covariance(Lambda)
    G = np.asarray(gamma_matrix(jnp.asarray(lam), check_length(N, "N")))
    return float(np.sqrt(2.0 / (np.sqrt(lam.shape[0]) * np.linalg.eigvalsh(G)[-1])))


class Init(NamedTuple):
    """A start of the reduced flow on the manifold `a = b = 0`: scalar `u` and `(d, d)` `U`."""

    u: Float[Array, ""]
    U: Float[Array, "d d"]

    def weights(self) -> tuple[Float[Array, "d+1 d+1"], Float[Array, "d+1 d+1"]]:
        """The full `(W_PV, W_KQ)` of this start, every other entry zero."""
        return from_reduced(self.u, self.U)


def paper_init(
    Lambda: Float[ArrayLike, "d d"],
    N: int,
    *,
    sigma: float | None = None,
    sigma_fraction: float | None = None,
    Theta: Float[ArrayLike, "d d"] | None = None,
    key: PRNGKeyArray | None = None,
) -> Init:
    """The initialisation of Assumption 3.3 [ZFB]: `u(0) = sigma`, `U(0) = sigma Theta Theta^T`.

    Give exactly one of `sigma` (a number) or `sigma_fraction` (sigma as a fraction of
    `sigma_max`), and either an explicit `Theta` (rescaled so that `||Theta Theta^T||_F = 1`)
    or a `key` for `random_theta`. `sigma >= sigma_max` is allowed with a
    `TheoremCoverageWarning`. The start is balanced: `u(0)^2 = ||U(0)||_F^2`.
    """
    lam = check_covariance(Lambda)
    d = lam.shape[0]
    N = check_length(N, "N")
    if (sigma is None) == (sigma_fraction is None):
        raise ValueError("give exactly one of `sigma` or `sigma_fraction`.")
    smax = sigma_bound(lam, N)
    if sigma is None:
        sigma = check_positive(sigma_fraction, "sigma_fraction") * smax
    sigma = check_positive(sigma, "sigma")
    warn_sigma(sigma, smax)
    if Theta is None:
        if key is None:
            raise ValueError("give `Theta` or a `key` to draw a random Theta.")
        Th = random_theta(key, d)
    else:
        Th = jnp.asarray(check_square(Theta, "Theta", d))
    TT = Th @ Th.T
    nrm = float(jnp.linalg.norm(TT))
    if nrm == 0.0:
        raise ValueError("`Theta` must be non-zero (Assumption 3.3 needs Lambda Theta != 0).")
    TT = TT / nrm
    return Init(u=jnp.asarray(sigma, jnp.float64), U=sigma * TT)
