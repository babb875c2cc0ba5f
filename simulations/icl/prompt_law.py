"""`TestDistribution`: a law of prompts made of a task, a covariate and a query law plus label
noise (theory.md §8.1), with an exact sampler of the prompts and one of their sufficient
statistics.

**The training law is `lsa.PromptDistribution`.** ZFB's training law (and its Gaussian
generalisations: `w ~ N(0, Sigma_w)`, label noise, noisy target) is defined once, in
`lsa.PromptDistribution`; `TestDistribution.from_prompt_distribution(pd)` turns it into a
`TestDistribution` made of `GaussianTask`, `GaussianCovariates` and `SameAsCovariates`, whose
`_sample(key, n, M)` draws the same random numbers as `pd.sample(key, n, M)` (the same key
layout and factors): the same prompts, to round-off. `to_prompt_distribution()` goes back.
`named_shift` and `garg_catalogue` start from it and change one piece.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import lsa
from lsa._validate import check_length, check_nonnegative

from .laws import (
    PROMPT_FREE_QUERIES,
    CovariateLaw,
    GaussianCovariates,
    GaussianTask,
    QueryLaw,
    SameAsCovariates,
    TaskLaw,
)
from .predictors import PromptStats
from .prng import rbg_key
from .wishart import bartlett_index, gamma_mt, orthonormal_rows

__all__ = ["TestDistribution"]

_F64 = jnp.float64


def _noise_std(x: Any) -> Array:
    return jnp.asarray(check_nonnegative(x, "noise_std"), _F64)


class TestDistribution(eqx.Module):
    """A test distribution of prompts: task, covariate and query laws plus label noise (§8.1).

    `y_i = <w, x_i> + eps_i` with `eps_i ~ N(0, noise_std^2)`; the target is `y_q = <w, x_q>`,
    plus an independent `N(0, noise_std^2)` draw if `noisy_target`.

    **Arguments:**

    - `task`: a `TaskLaw`; `covariates`: a `CovariateLaw`; `query`: a `QueryLaw` (default
      `SameAsCovariates()`).
    - `noise_std`: label-noise standard deviation `>= 0` (default 0).
    - `noisy_target`: whether the target carries noise too (default False: clean target, as in
      ZFB's risk; Garg's `noisyLR` uses a noisy target).
    """

    __test__ = False  # not a pytest test class

    task: TaskLaw
    covariates: CovariateLaw
    query: QueryLaw = SameAsCovariates()
    noise_std: Float[ArrayLike, ""] = eqx.field(default=0.0, converter=_noise_std)
    noisy_target: bool = eqx.field(default=False, static=True)

    def __check_init__(self) -> None:
        if not isinstance(self.task, TaskLaw):
            raise TypeError(f"`task` must be a TaskLaw; got {type(self.task).__name__}.")
        if not isinstance(self.covariates, CovariateLaw):
            raise TypeError(
                f"`covariates` must be a CovariateLaw; got {type(self.covariates).__name__}."
            )
        if not isinstance(self.query, QueryLaw):
            raise TypeError(f"`query` must be a QueryLaw; got {type(self.query).__name__}.")
        d = self.covariates.d
        if self.task.d != d:
            raise ValueError(f"the task law has d = {self.task.d} but the covariates d = {d}.")
        if self.query.d is not None and self.query.d != d:
            raise ValueError(f"the query law has d = {self.query.d} but the covariates d = {d}.")
        if not isinstance(self.noisy_target, bool):
            raise TypeError(f"`noisy_target` must be a bool; got {self.noisy_target!r}.")

    @property
    def d(self) -> int:
        """The input dimension."""
        return self.covariates.d

    def validate(self, M: int) -> int:
        """Check that prompts of length `M` can be drawn; returns `M` as an int."""
        M = check_length(M, "M")
        self.query.validate(M, self.covariates)
        return M

    def sample(self, key: PRNGKeyArray, n_prompts: int, M: int) -> lsa.Prompts:
        """Draw `n_prompts` prompts of length `M` (float64), jit-compiled once per shape.

        The draws use an `rbg` key (XLA's RngBitGenerator) seeded by 128 bits of `key`
        (`rbg_key`): on CPU it compiles several times faster than threefry. The result is a
        deterministic function of `key` on a given backend.

        **Returns:** `lsa.Prompts(X (n, M, d), y (n, M), x_q (n, d), y_q (n,), w (n, d))`.
        """
        n = check_length(n_prompts, "n_prompts")
        M = self.validate(M)
        return _sample_jit(self, rbg_key(key), n, M)

    @classmethod
    def from_prompt_distribution(cls, prompts: lsa.PromptDistribution) -> TestDistribution:
        """The training law `prompts` (an `lsa.PromptDistribution`) as a `TestDistribution`:
        `GaussianTask(Sigma_w or I)`, `GaussianCovariates(Lambda)`, `SameAsCovariates()` and
        its label noise. For the same key, `_sample` draws the same prompts as
        `prompts.sample` (to round-off; `antithetic` draws have no counterpart here)."""
        if not isinstance(prompts, lsa.PromptDistribution):
            raise TypeError(
                f"`prompts` must be an lsa.PromptDistribution; got {type(prompts).__name__}."
            )
        Sigma_w = np.eye(prompts.d) if prompts.Sigma_w is None else prompts.Sigma_w
        return cls(
            task=GaussianTask(Sigma_w),
            covariates=GaussianCovariates(prompts.Lambda),
            query=SameAsCovariates(),
            noise_std=prompts.noise_std,
            noisy_target=prompts.noisy_target,
        )

    def to_prompt_distribution(self) -> lsa.PromptDistribution:
        """This law as an `lsa.PromptDistribution`; `ValueError` unless it is one (a
        `GaussianTask`, `GaussianCovariates` and `SameAsCovariates`)."""
        ok = (
            type(self.task) is GaussianTask
            and type(self.covariates) is GaussianCovariates
            and type(self.query) is SameAsCovariates
        )
        if not ok:
            raise ValueError(
                "only GaussianTask + GaussianCovariates + SameAsCovariates is an "
                f"lsa.PromptDistribution; got {type(self.task).__name__} + "
                f"{type(self.covariates).__name__} + {type(self.query).__name__}."
            )
        assert isinstance(self.task, GaussianTask)
        assert isinstance(self.covariates, GaussianCovariates)
        Sigma_w = np.asarray(self.task.Sigma_w)
        return lsa.PromptDistribution(
            Lambda=np.asarray(self.covariates.Lambda_x),
            Sigma_w=None if np.array_equal(Sigma_w, np.eye(self.d)) else Sigma_w,
            noise_std=float(np.asarray(self.noise_std)),
            noisy_target=self.noisy_target,
        )

    def _sample(self, key: PRNGKeyArray, n: int, M: int) -> lsa.Prompts:
        """The sampler itself: pure JAX, any key, `n` and `M` static (validated by the caller).

        The key layout is that of `lsa.PromptDistribution.sample` (`kx, kq, kw, ke, keq`), so the
        training law draws the same prompts here and there. The inputs and the query come from
        `covariates.sample_prompt` (the query from `kq`; a covariate law with a per-prompt
        random covariance draws the query from the prompt's own covariance there)."""
        kx, kq, kw, ke, keq = jax.random.split(key, 5)
        X, x_q = self.covariates.sample_prompt(kx, kq, n, M, self.query)
        w = self.task.sample(kw, n)
        eps = self.noise_std * jax.random.normal(ke, (n, M), _F64)
        y = jnp.einsum("nmd,nd->nm", X, w) + eps
        y_q = jnp.einsum("nd,nd->n", x_q, w)
        if self.noisy_target:
            y_q = y_q + self.noise_std * jax.random.normal(keq, (n,), _F64)
        return lsa.Prompts(X=X, y=y, x_q=x_q, y_q=y_q, w=w)

    def stats_sampler_issue(self, M: int, k: int | None = None) -> str | None:
        """Why `_sample_stats` cannot draw the statistics of prompts of length `M` exactly (in a
        subspace of dimension `k`, default `d`), or `None` if it can: it needs in-context inputs
        `x_i = F z_i` with `z_i ~ N(0, I)` iid (`CovariateLaw.gaussian_factor`), a query drawn
        without looking at the prompt (`SameAsCovariates`, `GaussianQuery`, `RademacherQuery`)
        and `M >= k`."""
        cov = type(self.covariates).__name__
        if self.covariates.gaussian_factor() is None:
            return f"the in-context inputs ({cov}) are not iid Gaussian"
        if type(self.query) not in PROMPT_FREE_QUERIES:
            return f"the query law {type(self.query).__name__} may depend on the prompt"
        k = self.d if k is None else k
        if k > M:
            return f"M = {M} < {k} (the Bartlett decomposition needs M >= the dimension)"
        return None

    def _sample_stats(
        self,
        key: PRNGKeyArray,
        n: int,
        M: int,
        noisy: bool,
        directions: Callable[[Array], Array] | None = None,
    ) -> tuple[PromptStats, Float[Array, "n d"], Float[Array, " n"]]:
        """Draw the sufficient statistics of `n` prompts of length `M` exactly, without the prompts.

        With `x_i = F z_i` and the QR decomposition `Z = Q T` of the `(M, d)` matrix of the
        `z_i` (`M >= d`), the prompt is equivalent to the `d` pseudo-examples `X' = T F^T` with
        labels `Q^T y = X' w + Q^T eps` and the residual sum of squares `||(I - Q Q^T) eps||^2`.
        Bartlett: `T` is upper triangular with `T_ii^2 ~ chi2_{M-i}` (0-based `i`) and
        `T_ij ~ N(0, 1)` above the diagonal, all independent; `Q^T eps ~ N(0, s^2 I_d)` and
        `||(I - Q Q^T) eps||^2 ~ s^2 chi2_{M-d}` are independent of `T` and of each other. So
        `S = X'^T X'`, `g`, `c` and `x_q` have exactly the law of the prompt's statistics, for
        `d (d-1) / 2` normals and `d` chi-squares per prompt instead of `M d` normals.

        **Subspace.** `directions(x_q) -> (n, j, d)` (optional) gives directions `p` such that the
        predictions need `S` and `g` only through `p^T S p'` and `p^T g`. Let `V` (`d x k`,
        orthonormal or zero columns, Gram–Schmidt) span `F^T w` and the `F^T p`, a function of
        `(w, x_q)` only, hence independent of `Z` and `eps`. Then `Z V` is an `(M, k)` standard
        Gaussian matrix (up to zero columns) and the same construction in dimension `k` gives
        pseudo-examples `X' = T_k V^T F^T` (`k` rows) whose `S' = X'^T X'`, `g'` and `c` have,
        jointly with `(w, x_q)`, exactly the law of `p^T S p'`, `p^T g` and `c` (`S'` itself is
        not `S`: it is zero off the subspace; a zero column of `V`, for a dependent direction,
        only adds a dimension that no prediction sees). Cost: `k (k-1) / 2` normals and `k`
        chi-squares; `M >= k`.

        `noisy` (static) must be True if `noise_std > 0` (with False the noise is left out).
        Needs `stats_sampler_issue(M, k) is None` (checked by the caller).

        **Returns:** `(stats, w, y_q)`: a `PromptStats` batch, the tasks and the targets.
        """
        F = self.covariates.gaussian_factor()
        assert F is not None
        kw, kq, kz, ku, kc = jax.random.split(key, 5)
        w = self.task.sample(kw, n)
        x_q = self.query.sample(kq, jnp.zeros((n, 0, self.d), _F64), self.covariates)
        if directions is None:
            G = F.T  # rows of V^T F^T with V = I
        else:
            C = jnp.concatenate([(w @ F)[:, None, :], directions(x_q) @ F], axis=1)
            G = orthonormal_rows(C) @ F.T  # (n, k, d)
        k = G.shape[-2]
        assert M >= k
        noisy_q = noisy and self.noisy_target
        T, z_eps, z_q, chi2_rest = _bartlett_draw(kz, ku, kc, n, M, k, noisy, noisy_q)
        if directions is None:
            Xc = T @ G  # pseudo-examples (rows): T F^T, one GEMM
        else:
            Xc = jnp.sum(T[:, :, :, None] * G[:, None, :, :], axis=2)  # T_k V^T F^T
        y = jnp.sum(Xc * w[:, None, :], axis=-1)
        y_q = jnp.sum(x_q * w, axis=-1)
        rss = jnp.zeros((n,), _F64)
        if noisy:
            s = jnp.asarray(self.noise_std, _F64)
            y = y + s * z_eps
            if M > k:
                rss = s * s * chi2_rest
            if noisy_q:
                y_q = y_q + s * z_q
        return PromptStats(X=Xc, y=y, rss=rss, x_q=x_q, M=M), w, y_q

    def shift_risk_args(self) -> dict[str, Any]:
        """Keyword arguments for `theory.shift_risk(G, **args, M=M)` (theory.md §8.3).

        **Returns:** `{"Lambda_x", "Omega", "Sigma_w", "s2", "noisy_target"}`. Raises
        `ValueError` if the closed form does not apply: non-Gaussian or dependent in-context
        inputs, or a query that depends on the prompt.
        """
        if not self.covariates.gaussian:
            raise ValueError(
                f"theory.shift_risk needs iid Gaussian in-context inputs; "
                f"{type(self.covariates).__name__} is not."
            )
        Omega = self.query.second_moment(self.covariates)
        if Omega is None or not self.query.independent:
            raise ValueError(
                f"theory.shift_risk needs a query independent of the prompt; "
                f"{type(self.query).__name__} is not."
            )
        return {
            "Lambda_x": self.covariates.second_moment(),
            "Omega": Omega,
            "Sigma_w": self.task.second_moment(),
            "s2": float(np.asarray(self.noise_std)) ** 2,
            "noisy_target": self.noisy_target,
        }


def _bartlett_draw(
    kz: PRNGKeyArray,
    ku: PRNGKeyArray,
    kc: PRNGKeyArray,
    n: int,
    M: int,
    k: int,
    noisy: bool,
    noisy_q: bool,
) -> tuple[Array, Array, Array, Array]:
    """The random part of `_sample_stats` for `n` prompts in dimension `k` (all static).

    **Returns:** `(T, z_eps, z_q, chi2_rest)`: the upper triangular Bartlett factors `(n, k, k)`
    (`T_ii^2 ~ chi2_{M-i}`, `T_ij ~ N(0, 1)` above the diagonal), the standard normals of
    `Q^T eps / s` `(n, k)`, of the target noise `(n,)`, and a `chi2_{M-k}` draw `(n,)` (the
    residual sum of squares / s^2); the last three are meaningful only with `noisy`,
    `noisy_q` and `noisy and M > k` respectively.
    """
    n_off = k * (k - 1) // 2
    dof = (M - np.arange(k)).astype(np.float64)
    if noisy and M > k:
        dof = np.append(dof, M - k)
    # one draw of normals: T above the diagonal, Q^T eps / s, the target noise, and the
    # first Marsaglia–Tsang candidate of each chi-square
    n_z = n_off + (k if noisy else 0) + int(noisy_q)
    z = jax.random.normal(kz, (n, n_z + dof.shape[0]), _F64)
    u = jax.random.uniform(ku, (n, dof.shape[0]), _F64)
    chi2 = 2.0 * gamma_mt(kc, dof / 2.0, z[:, n_z:], u)
    src = jnp.concatenate([z[:, :n_off], jnp.sqrt(chi2[:, :k]), jnp.zeros((n, 1), _F64)], 1)
    T = src[:, bartlett_index(k)]  # (n, k, k), upper triangular
    chi2_rest = chi2[:, k] if chi2.shape[1] > k else jnp.zeros((n,), _F64)
    return T, z[:, n_off : n_off + k], z[:, n_z - 1], chi2_rest


@eqx.filter_jit
def _sample_jit(dist: TestDistribution, key: PRNGKeyArray, n: int, M: int) -> lsa.Prompts:
    return dist._sample(key, n, M)
