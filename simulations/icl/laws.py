"""The pieces of a test distribution: task, covariate and query laws (theory.md §8.1, §8.5, §12).

- **task laws** for `w` (`GaussianTask`, `SphereTask`, `RademacherTask`, `CustomTask`,
  `ScaledTask`), with second moment `Sigma_w = E[w w^T]`;
- **covariate laws** for the in-context inputs `x_1 .. x_M` (`GaussianCovariates`,
  `ScaledCovariates`, `SkewedCovariates`, `HalfSubspaceCovariates`, `OrthantCovariates`), with
  second moment `Lambda_x`;
- **query laws** for `x_q` (`SameAsCovariates`, `GaussianQuery`, `RademacherQuery`,
  `OrthogonalQuery`, `OverlappingQuery`), with second moment `Omega` when independent of the
  prompt.

`simulations.icl.prompt_law.TestDistribution` combines one of each with label noise. The
Gaussian pieces (`GaussianTask`, `GaussianCovariates`, `SameAsCovariates`) draw exactly as
`lsa.PromptDistribution` does (same factors, same random numbers for the same key), so the ZFB
training law built from them (`TestDistribution.from_prompt_distribution`) gives the same prompts
as `lsa.PromptDistribution.sample`.

Every matrix is validated on construction (symmetric positive definite, right shape), every
scale must be `> 0`, and every error names the offending parameter.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import lsa
from lsa._validate import check_covariance, check_length, check_positive

__all__ = [
    "PROMPT_FREE_QUERIES",
    "CovariateLaw",
    "CustomTask",
    "GaussianCovariates",
    "GaussianQuery",
    "GaussianTask",
    "HalfSubspaceCovariates",
    "OrthantCovariates",
    "OrthogonalQuery",
    "OverlappingQuery",
    "QueryLaw",
    "RademacherQuery",
    "RademacherTask",
    "SameAsCovariates",
    "ScaledCovariates",
    "ScaledTask",
    "SkewedCovariates",
    "SphereTask",
    "TaskLaw",
]

_F64 = jnp.float64


def _sym_sqrt(S: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    lam, V = np.linalg.eigh(S)
    out = (V * np.sqrt(np.clip(lam, 0.0, None))) @ V.T
    return 0.5 * (out + out.T)


def _garg_transformation(eigenvalues: np.ndarray, key: PRNGKeyArray) -> np.ndarray:
    """`T = U diag(e) U^T sqrt(d / sum e^2)` with a Haar-random `U` [GARG code,
    `samplers.sample_transformation(..., normalize=True)`]; inputs are `x = z T`, so
    `Cov(x) = T^T T = U diag(e^2) U^T d / sum(e^2)` has trace `d`."""
    d = eigenvalues.shape[0]
    U = np.asarray(lsa.random_orthogonal(key, d))
    T = (U * eigenvalues) @ U.T
    T = T * np.sqrt(d / np.sum(eigenvalues**2))
    return 0.5 * (T + T.T)


# ----------------------------------------------------------------------------------------------
# task laws


class TaskLaw(eqx.Module):
    """Abstract law of the task vector `w` (theory.md §8.1: `D_H^test`)."""

    @property
    @abc.abstractmethod
    def d(self) -> int: ...

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """Draw `n` task vectors."""

    @abc.abstractmethod
    def second_moment(self) -> Float[np.ndarray, "d d"]:
        """`Sigma_w = E[w w^T]`, the only property of the task law that the risk of a
        predictor linear in h depends on (theory.md §8.5)."""


class _WhitenedTask(TaskLaw):
    """`w = Sigma_w^{1/2} xi` with `E[xi xi^T] = I` (symmetric square root)."""

    Sigma_w: Float[Array, "d d"]
    root: Float[Array, "d d"]

    def __init__(self, Sigma_w: Float[ArrayLike, "d d"]):
        sw = check_covariance(Sigma_w, "Sigma_w")
        self.Sigma_w = jnp.asarray(sw)
        self.root = jnp.asarray(_sym_sqrt(sw))

    @property
    def d(self) -> int:
        return int(self.Sigma_w.shape[0])

    def second_moment(self) -> Float[np.ndarray, "d d"]:
        return np.asarray(self.Sigma_w)

    @abc.abstractmethod
    def _standard(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]: ...

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return self._standard(key, n) @ self.root.T


class GaussianTask(_WhitenedTask):
    """`w ~ N(0, Sigma_w)` (ZFB training law with `Sigma_w = I`; task shift otherwise).

    Drawn as `lsa.PromptDistribution` draws `w`: standard normals times the Cholesky factor of
    `Sigma_w` (any square root gives the same law; this one gives the same numbers).
    """

    def __init__(self, Sigma_w: Float[ArrayLike, "d d"]):
        super().__init__(Sigma_w)
        self.root = jnp.linalg.cholesky(self.Sigma_w)

    def _standard(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return jax.random.normal(key, (n, self.d), _F64)


class SphereTask(_WhitenedTask):
    """`w = Sigma_w^{1/2} sqrt(d) u`, `u` uniform on the unit sphere: `E[w w^T] = Sigma_w`.

    `Sigma_w^{-1/2} w` is uniform on the sphere of radius `sqrt(d)`. With `Sigma_w = I` this is
    the non-Gaussian task law of theory.md §8.5 (same second moment as `N(0, I)`, hence the same
    risk for predictors linear in h). `SphereTask.with_radius(d, r)` is uniform on the sphere of
    radius `r` (`Sigma_w = (r^2/d) I`).
    """

    def __init__(self, Sigma_w: Float[ArrayLike, "d d"]):
        super().__init__(Sigma_w)

    @classmethod
    def with_radius(cls, d: int, radius: float) -> SphereTask:
        """Uniform on the sphere of radius `radius` in dimension `d`."""
        d = check_length(d, "d")
        r = check_positive(radius, "radius")
        return cls((r * r / d) * np.eye(d))

    def _standard(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        z = jax.random.normal(key, (n, self.d), _F64)
        return np.sqrt(self.d) * z / jnp.linalg.norm(z, axis=-1, keepdims=True)


class RademacherTask(_WhitenedTask):
    """`w = Sigma_w^{1/2} r`, `r` with iid uniform signs: `E[w w^T] = Sigma_w` exactly."""

    def __init__(self, Sigma_w: Float[ArrayLike, "d d"]):
        super().__init__(Sigma_w)

    def _standard(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return jax.random.rademacher(key, (n, self.d), _F64)


class CustomTask(_WhitenedTask):
    """Any task law with a given second moment: `w = Sigma_w^{1/2} xi`.

    `standard(key, (n, d))` must return float64 draws of a vector `xi` with `E[xi xi^T] = I`
    (the caller's responsibility; `second_moment()` returns `Sigma_w`). It must be a pure JAX
    function (it is traced under `jit`) and hashable (a module-level function).
    """

    standard: Callable[[PRNGKeyArray, tuple[int, int]], Array] = eqx.field(static=True)

    def __init__(
        self,
        Sigma_w: Float[ArrayLike, "d d"],
        standard: Callable[[PRNGKeyArray, tuple[int, int]], Array],
    ):
        super().__init__(Sigma_w)
        if not callable(standard):
            raise TypeError("`standard` must be a callable (key, shape) -> array.")
        self.standard = standard

    def _standard(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return jnp.asarray(self.standard(key, (n, self.d)), _F64)


class ScaledTask(TaskLaw):
    """`w = c w_base`: Garg et al.'s `scale-y=c` (labels scaled by `c`) [GARG code].

    **Arguments:** `base` (a `TaskLaw`) and `c > 0`.
    """

    base: TaskLaw
    c: Float[Array, ""]

    def __init__(self, base: TaskLaw, c: float):
        if not isinstance(base, TaskLaw):
            raise TypeError(f"`base` must be a TaskLaw; got {type(base).__name__}.")
        self.base = base
        self.c = jnp.asarray(check_positive(c, "c"), _F64)

    @property
    def d(self) -> int:
        return self.base.d

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return self.c * self.base.sample(key, n)

    def second_moment(self) -> Float[np.ndarray, "d d"]:
        return float(self.c) ** 2 * self.base.second_moment()


# ----------------------------------------------------------------------------------------------
# covariate laws


class CovariateLaw(eqx.Module):
    """Abstract law of the in-context inputs `x_1 .. x_M` (theory.md §8.1: `D_x^test`)."""

    @property
    @abc.abstractmethod
    def d(self) -> int: ...

    @property
    def gaussian(self) -> bool:
        """True if the `x_i` are iid `N(0, second_moment())`, as the closed forms of §8.3 need."""
        return False

    def gaussian_factor(self) -> Float[Array, "d d"] | None:
        """A matrix `F` such that the in-context inputs are `x_i = F z_i` with `z_i ~ N(0, I_d)`
        iid, or `None` if they are not of that form. The sufficient-statistics sampler of
        `TestDistribution` needs it."""
        return None

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, n: int, M: int) -> Float[Array, "n M d"]:
        """Draw the in-context inputs of `n` prompts of length `M`."""

    def sample_fresh(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """Draw `n` fresh inputs, not tied to any prompt: the query of `SameAsCovariates`,
        the draw projected by `OrthogonalQuery`, and the ILWD probe points."""
        return self.sample(key, n, 1)[:, 0, :]

    def sample_prompt(
        self, kx: PRNGKeyArray, kq: PRNGKeyArray, n: int, M: int, query: QueryLaw
    ) -> tuple[Float[Array, "n M d"], Float[Array, "n d"]]:
        """The in-context inputs (from `kx`) and the query (from `kq`) of `n` prompts of length
        `M`, as `TestDistribution` draws them: by default `sample(kx, n, M)`, then
        `query.sample(kq, X, self)`. A law whose prompts carry a random parameter that the
        query must share (a covariance drawn per prompt,
        `simulations.icl.random_covariance.RandomCovarianceCovariates`) overrides it."""
        X = self.sample(kx, n, M)
        return X, query.sample(kq, X, self)

    @abc.abstractmethod
    def second_moment(self) -> Float[np.ndarray, "d d"]:
        """`Lambda_x = E[x_i x_i^T]` of one in-context input."""

    def fresh_second_moment(self) -> Float[np.ndarray, "d d"]:
        """`E[x x^T]` of a `sample_fresh` draw (the same as `second_moment()` unless stated)."""
        return self.second_moment()


class _FactorGaussian(CovariateLaw):
    """`x = F z`, `z ~ N(0, I_d)`: Gaussian with covariance `F F^T` (possibly singular)."""

    Lambda_x: Float[Array, "d d"]
    factor: Float[Array, "d d"]

    @property
    def d(self) -> int:
        return int(self.Lambda_x.shape[0])

    @property
    def gaussian(self) -> bool:
        return True

    def gaussian_factor(self) -> Float[Array, "d d"]:
        return self.factor

    def sample(self, key: PRNGKeyArray, n: int, M: int) -> Float[Array, "n M d"]:
        return jax.random.normal(key, (n, M, self.d), _F64) @ self.factor.T

    def second_moment(self) -> Float[np.ndarray, "d d"]:
        return np.asarray(self.Lambda_x)


class GaussianCovariates(_FactorGaussian):
    """`x_i ~ N(0, Lambda_x)` iid (ZFB: `Lambda_x = Lambda` in training, §2.5).

    **Arguments:** `Lambda_x`, symmetric positive definite `(d, d)`.
    """

    def __init__(self, Lambda_x: Float[ArrayLike, "d d"]):
        lx = check_covariance(Lambda_x, "Lambda_x")
        self.Lambda_x = jnp.asarray(lx)
        self.factor = jnp.linalg.cholesky(self.Lambda_x)  # as lsa.PromptDistribution


class SkewedCovariates(_FactorGaussian):
    """Garg et al.'s `skewed` inputs [GARG code] (theory.md §12).

    `x = z T` with `T = U diag(1/i) U^T` (Haar-random `U` drawn from `key`), rescaled so that
    `tr Cov(x) = d`: the covariance eigenvalues are proportional to `1/i^2`, `i = 1..d`.
    """

    def __init__(self, d: int, key: PRNGKeyArray):
        d = check_length(d, "d")
        T = _garg_transformation(1.0 / np.arange(1, d + 1), key)
        self.factor = jnp.asarray(T)
        self.Lambda_x = jnp.asarray(0.5 * (T @ T + (T @ T).T))


class HalfSubspaceCovariates(_FactorGaussian):
    """Garg et al.'s `half_subspace` inputs [GARG code] (theory.md §12).

    `x` lies in a random `d//2`-dimensional subspace (drawn from `key`); the covariance has
    eigenvalue `d / (d//2)` there (2 for even `d`) and 0 elsewhere, so its trace is `d`. The
    covariance is singular: `theory.shift_risk` does not apply. Needs `d >= 2`.
    """

    def __init__(self, d: int, key: PRNGKeyArray):
        d = check_length(d, "d")
        if d < 2:
            raise ValueError(f"`d` must be >= 2 for a half subspace; got {d}.")
        e = np.zeros(d)
        e[: d // 2] = 1.0
        T = _garg_transformation(e, key)
        self.factor = jnp.asarray(T)
        self.Lambda_x = jnp.asarray(0.5 * (T @ T + (T @ T).T))


class ScaledCovariates(CovariateLaw):
    """`x = c x_base` for every input (Garg et al.'s `scale-x=c`; covariate scaling, §8.5).

    **Arguments:** `base` (a `CovariateLaw`) and `c > 0`.
    """

    base: CovariateLaw
    c: Float[Array, ""]

    def __init__(self, base: CovariateLaw, c: float):
        if not isinstance(base, CovariateLaw):
            raise TypeError(f"`base` must be a CovariateLaw; got {type(base).__name__}.")
        self.base = base
        self.c = jnp.asarray(check_positive(c, "c"), _F64)

    @property
    def d(self) -> int:
        return self.base.d

    @property
    def gaussian(self) -> bool:
        return self.base.gaussian

    def gaussian_factor(self) -> Float[Array, "d d"] | None:
        F = self.base.gaussian_factor()
        return None if F is None else self.c * F

    def sample(self, key: PRNGKeyArray, n: int, M: int) -> Float[Array, "n M d"]:
        return self.c * self.base.sample(key, n, M)

    def sample_fresh(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return self.c * self.base.sample_fresh(key, n)

    def second_moment(self) -> Float[np.ndarray, "d d"]:
        return float(self.c) ** 2 * self.base.second_moment()

    def fresh_second_moment(self) -> Float[np.ndarray, "d d"]:
        return float(self.c) ** 2 * self.base.fresh_second_moment()


class OrthantCovariates(CovariateLaw):
    """Garg et al.'s `random_quadrants` inputs [GARG code] (theory.md §12).

    Each prompt draws one sign pattern `s` (iid uniform signs) and its in-context inputs are
    `x_i = s * |z_i|` with `z_i` from `base`: all of them lie in one random orthant. A fresh draw
    (the query of `SameAsCovariates`) is an unrestricted draw of `base`.

    The in-context inputs are neither Gaussian nor independent within a prompt; the second moment
    of one input is `diag(diag(Lambda_base))` (the signs kill the off-diagonal entries).
    """

    base: CovariateLaw

    def __init__(self, base: CovariateLaw):
        if not isinstance(base, CovariateLaw):
            raise TypeError(f"`base` must be a CovariateLaw; got {type(base).__name__}.")
        self.base = base

    @property
    def d(self) -> int:
        return self.base.d

    def sample(self, key: PRNGKeyArray, n: int, M: int) -> Float[Array, "n M d"]:
        ks, kz = jax.random.split(key)
        s = jax.random.rademacher(ks, (n, 1, self.d), _F64)
        return s * jnp.abs(self.base.sample(kz, n, M))

    def sample_fresh(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        return self.base.sample_fresh(key, n)

    def second_moment(self) -> Float[np.ndarray, "d d"]:
        return np.diag(np.diag(self.base.second_moment()))

    def fresh_second_moment(self) -> Float[np.ndarray, "d d"]:
        return self.base.fresh_second_moment()


# ----------------------------------------------------------------------------------------------
# query laws


class QueryLaw(eqx.Module):
    """Abstract law of the query `x_q` (theory.md §8.1: `D_query^test`)."""

    @property
    def d(self) -> int | None:
        """The dimension, or `None` if the law adapts to the covariates."""
        return None

    @property
    def independent(self) -> bool:
        """True if `x_q` is independent of the prompt (needed by the closed forms of §8.3)."""
        return True

    def validate(self, M: int, covariates: CovariateLaw) -> None:
        """Raise `ValueError` if this query law cannot be used with prompts of length `M`."""

    @abc.abstractmethod
    def sample(
        self, key: PRNGKeyArray, X: Float[Array, "n M d"], covariates: CovariateLaw
    ) -> Float[Array, "n d"]:
        """Draw one query per prompt, given the prompts' inputs `X`."""

    @abc.abstractmethod
    def second_moment(
        self, covariates: CovariateLaw | None = None
    ) -> Float[np.ndarray, "d d"] | None:
        """`Omega = E[x_q x_q^T]` for a query independent of the prompt; `None` otherwise.

        `covariates` is needed only by `SameAsCovariates` (whose `Omega` is theirs)."""


class SameAsCovariates(QueryLaw):
    """The query is a fresh draw of the covariate law (no query shift; Garg's `standard`)."""

    def sample(self, key, X, covariates):  # type: ignore[no-untyped-def]
        return covariates.sample_fresh(key, X.shape[0])

    def second_moment(self, covariates: CovariateLaw | None = None) -> Float[np.ndarray, "d d"]:
        if covariates is None:
            raise ValueError("SameAsCovariates.second_moment needs the covariate law.")
        return covariates.fresh_second_moment()


class _OmegaQuery(QueryLaw):
    Omega: Float[Array, "d d"]
    root: Float[Array, "d d"]

    def __init__(self, Omega: Float[ArrayLike, "d d"]):
        om = check_covariance(Omega, "Omega")
        self.Omega = jnp.asarray(om)
        self.root = jnp.asarray(_sym_sqrt(om))

    @property
    def d(self) -> int:
        return int(self.Omega.shape[0])

    def second_moment(self, covariates: CovariateLaw | None = None) -> Float[np.ndarray, "d d"]:
        return np.asarray(self.Omega)


class GaussianQuery(_OmegaQuery):
    """`x_q ~ N(0, Omega)` independent of the prompt (query shift, theory.md §8.5)."""

    def __init__(self, Omega: Float[ArrayLike, "d d"]):
        super().__init__(Omega)

    def sample(self, key, X, covariates):  # type: ignore[no-untyped-def]
        return jax.random.normal(key, (X.shape[0], self.d), _F64) @ self.root.T


class RademacherQuery(_OmegaQuery):
    """`x_q = Omega^{1/2} r`, `r` with iid uniform signs: non-Gaussian, `E[x_q x_q^T] = Omega`
    exactly (`E[r r^T] = I`); theory.md §8.5 says the risk is the same as for `GaussianQuery`."""

    def __init__(self, Omega: Float[ArrayLike, "d d"]):
        super().__init__(Omega)

    def sample(self, key, X, covariates):  # type: ignore[no-untyped-def]
        return jax.random.rademacher(key, (X.shape[0], self.d), _F64) @ self.root.T


class OrthogonalQuery(QueryLaw):
    """Garg et al.'s `orthogonal_train_test` query [GARG code] (theory.md §12).

    A fresh draw `z` of the covariate law, projected onto the orthogonal complement of
    `span{x_1 .. x_M}` and rescaled to the norm of `z`. Needs `M < d` (otherwise the complement
    is empty; Garg's code then leaves the query at 0) and, for a degenerate covariate law, `M`
    below its rank.
    """

    @property
    def independent(self) -> bool:
        return False

    def validate(self, M: int, covariates: CovariateLaw) -> None:
        if M >= covariates.d:
            raise ValueError(
                f"OrthogonalQuery needs M < d (the orthogonal complement of the span of M "
                f"in-context inputs is empty otherwise); got M = {M}, d = {covariates.d}."
            )
        rank = int(np.linalg.matrix_rank(covariates.fresh_second_moment()))
        if M >= rank:
            raise ValueError(
                f"OrthogonalQuery needs M below the rank {rank} of the covariate law (a fresh "
                f"draw lies in the span of M in-context inputs otherwise); got M = {M}."
            )

    def sample(self, key, X, covariates):  # type: ignore[no-untyped-def]
        z = covariates.sample_fresh(key, X.shape[0])
        _, s, Vt = jnp.linalg.svd(X, full_matrices=False)  # rows of Vt span the x_i
        tol = 10.0 * max(X.shape[1], X.shape[2]) * jnp.finfo(_F64).eps * s[..., :1]
        Vt = jnp.where((s > tol)[..., None], Vt, 0.0)
        proj = jnp.einsum("nkd,nk->nd", Vt, jnp.einsum("nkd,nd->nk", Vt, z))
        q = z - proj
        scale = jnp.linalg.norm(z, axis=-1, keepdims=True) / jnp.linalg.norm(
            q, axis=-1, keepdims=True
        )
        return q * scale

    def second_moment(self, covariates: CovariateLaw | None = None) -> None:
        return None


class OverlappingQuery(QueryLaw):
    """Garg et al.'s `overlapping_train_test` query [GARG code] (theory.md §12): the query
    repeats one of the prompt's inputs, chosen uniformly at random."""

    @property
    def independent(self) -> bool:
        return False

    def sample(self, key, X, covariates):  # type: ignore[no-untyped-def]
        n, M, _ = X.shape
        idx = jax.random.randint(key, (n,), 0, M)
        return jnp.take_along_axis(X, idx[:, None, None], axis=1)[:, 0, :]

    def second_moment(self, covariates: CovariateLaw | None = None) -> None:
        return None


#: Query laws drawn without looking at the prompt (the sufficient-statistics sampler needs one).
PROMPT_FREE_QUERIES = (SameAsCovariates, GaussianQuery, RademacherQuery)
