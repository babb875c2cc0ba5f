"""Test prompts with a random covariance per prompt (ZFB Def. 4.4, theory.md §9.1, §9.6).

`RandomCovarianceCovariates(law, d, c)`: each prompt draws `Lambda_tau = c diag(lambda)` with
`lambda_i` iid from an `lsa.random_covariance.CovarianceLaw`, then its in-context inputs are iid
`N(0, Lambda_tau)`. With the default query law `SameAsCovariates` the query is drawn from the
**same** `Lambda_tau` (`sample_prompt`): the query and the prompt are dependent through it,
which is what ZFB's law means and what `theory.random_covariance` assumes. A `sample_fresh` draw
(a probe point, or the query law's fresh draw elsewhere) is a draw of the marginal law (a fresh
`Lambda`).

The inputs are a Gaussian *mixture*, not iid Gaussian: `gaussian_factor()` is `None`, so
`TestDistribution.stats_sampler_issue` (and with it `mc_risk`'s `auto_sampler`) refuses the
sufficient-statistics samplers and `mc_risk` draws every prompt (`sampler="prompts"`), and
`shift_risk_args` refuses the closed forms of theory.md §8.3.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from lsa._validate import check_length, check_positive
from lsa.random_covariance import CovarianceLaw

from .laws import CovariateLaw, GaussianTask, QueryLaw, SameAsCovariates
from .prompt_law import TestDistribution

__all__ = ["RandomCovarianceCovariates", "random_covariance_distribution"]

_F64 = jnp.float64


class RandomCovarianceCovariates(CovariateLaw):
    """In-context inputs with a fresh diagonal covariance `c diag(lambda)` per prompt.

    **Arguments:**

    - `law`: the `CovarianceLaw` of the entries `lambda_i` (iid);
    - `d`: the dimension;
    - `c`: multiplies the covariance (`> 0`; `x -> sqrt(c) x`);
    - `query_shares_covariance`: `True` (default, ZFB's law): with `SameAsCovariates` the query
      is drawn from the prompt's own covariance. `False` draws it from an independent fresh
      covariance: the convention error that check rc3 records as a mutant.
    """

    law: CovarianceLaw = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    c: Float[Array, ""]
    query_shares_covariance: bool = eqx.field(static=True)

    def __init__(
        self, law: CovarianceLaw, d: int, c: float = 1.0, query_shares_covariance: bool = True
    ):
        if not isinstance(law, CovarianceLaw):
            raise TypeError(
                f"`law` must be an lsa.random_covariance.CovarianceLaw; got {type(law).__name__}."
            )
        self.law = law
        self.dim = check_length(d, "d")
        self.c = jnp.asarray(check_positive(c, "c"), _F64)
        if not isinstance(query_shares_covariance, bool):
            raise TypeError("`query_shares_covariance` must be a bool.")
        self.query_shares_covariance = query_shares_covariance

    @property
    def d(self) -> int:
        return self.dim

    def _scales(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """Standard deviations `sqrt(c lambda)` of `n` prompts' covariances."""
        return jnp.sqrt(self.c * self.law.sample(key, (n, self.dim)))

    def _draw(self, key: PRNGKeyArray, n: int, M: int) -> tuple[Array, Array]:
        kl, kz = jax.random.split(key)
        sd = self._scales(kl, n)
        return jax.random.normal(kz, (n, M, self.dim), _F64) * sd[:, None, :], sd

    def sample(self, key: PRNGKeyArray, n: int, M: int) -> Float[Array, "n M d"]:
        return self._draw(key, n, M)[0]

    def sample_prompt(
        self, kx: PRNGKeyArray, kq: PRNGKeyArray, n: int, M: int, query: QueryLaw
    ) -> tuple[Float[Array, "n M d"], Float[Array, "n d"]]:
        """The inputs from `kx`; with `SameAsCovariates` (and `query_shares_covariance`) the
        query is `N(0, Lambda_tau)` with the prompt's own `Lambda_tau` (from `kq`); any other
        query law draws as usual."""
        X, sd = self._draw(kx, n, M)
        if type(query) is SameAsCovariates and self.query_shares_covariance:
            return X, jax.random.normal(kq, (n, self.dim), _F64) * sd
        return X, query.sample(kq, X, self)

    def second_moment(self) -> Float[np.ndarray, "d d"]:
        """`E[x x^T] = c E[lambda] I` (the marginal law)."""
        return float(self.c) * self.law.moments()[0] * np.eye(self.dim)


def random_covariance_distribution(
    law: CovarianceLaw, d: int, c: float = 1.0, *, query_shares_covariance: bool = True
) -> TestDistribution:
    """ZFB's random-covariance prompt law (Def. 4.4) as a `TestDistribution`: `w ~ N(0, I)`,
    inputs and query `N(0, c Lambda_tau)` given a fresh `Lambda_tau = diag(lambda)` per prompt,
    noiseless labels, clean target."""
    return TestDistribution(
        task=GaussianTask(np.eye(check_length(d, "d"))),
        covariates=RandomCovarianceCovariates(law, d, c, query_shares_covariance),
        query=SameAsCovariates(),
    )
