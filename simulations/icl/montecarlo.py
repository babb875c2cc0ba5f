"""Monte Carlo risk, SPD and ILWD with standard errors, batched and seeded (theory.md §11.3, §14).

- `mc_risk(predictors, dist, M, n_prompts, key)`: `E (y_hat - target)^2` for every predictor,
  all evaluated on the **same** prompts;
- `mc_spd(pred1, pred2, ...)`: squared prediction difference at the query [AKY eq. 15];
- `mc_ilwd(pred1, pred2, ...)`: implicit linear weight difference by probe fitting
  [AKY eqs. 16–17].

- `mc_mean(values, key, n, *args)` / `mc_means(...)`: the mean of **any** per-prompt quantity
  (`values(key, B, *args) -> (B,)` or `(B, K)`), for the checks that draw their own prompts
  (Theorem 4.2's nonlinear labels, Garg's prefix errors, the core checks);
- `two_sample_z(a, b)`: the z-score of the difference of two independent estimates.

**One estimator.** Every function here returns `MCEstimate(mean, se, n)`: the sample mean and
`se` = sample standard deviation (ddof 1) / `sqrt(n)`, from the same float64 accumulator, so
`estimate.z(closed_form) = (mean - closed_form) / se` is the z-score of theory.md §14. Nothing
else in lsa-flow computes a Monte Carlo mean or standard error. Every entry point needs float64
(`lsa.set_precision("float64")`) and raises otherwise.

**Batching and seeds.** Prompts are drawn in batches of `batch_size` (memory is bounded by one
batch); batch `b` is drawn from `jax.random.fold_in(key, b)`, and the last batch is drawn at full
size and masked, so every batch has the same shape and the per-batch work compiles once. The
result is reproducible for the same `key`, `n_prompts` and effective batch size
`min(batch_size, n_prompts)` on the same backend; a different batch size draws different prompts
(a different stream), so results agree only statistically. Inside a batch the prompts are drawn
with an `rbg` key (XLA's RngBitGenerator) seeded by 128 bits of `fold_in(key, b)`: on CPU it
compiles about 4x faster and runs faster than threefry; its stream may differ between CPU and
GPU. The statistics samplers below re-seed from it an RngBitGenerator key running XLA's
THREE_FRY algorithm (`rbg_threefry_key`), whose normals are about 2.5x faster on CPU. Sums are
accumulated in float64 with the parallel (Chan et al.) combination of per-batch means and centred
sums of squares.

**Samplers (`mc_risk`).** `sampler="prompts"` draws every prompt (`M d` normals each) and calls
the predictors on it. `sampler="stats"` draws only the sufficient statistics `(S, g, c, x_q)` of
each prompt, exactly in law (`TestDistribution._sample_stats`: Bartlett decomposition of the
Wishart matrix `S = X^T X` plus the label noise split into its projection on the span of the
inputs and a chi-square remainder; `d (d-1)/2` normals and `d` chi-squares per prompt), and calls
`Predictor.from_stats`. It applies when the in-context inputs are iid `N(0, F F^T)`, the query
law does not look at the prompt, `M >= d`, and every predictor supports statistics (LSA, OLS,
ridge, Bayes ridge, GD, averaging). `sampler="subspace"` goes further when every predictor needs
`S` only along a few directions (`Predictor._stats_directions`: LSA two, averaging and one GD
step one): by the rotation invariance of the Wishart law it draws `S` restricted to the span of
those directions and `w` (`k` dimensions, `k < d`, `M >= k`), exactly in law for the predictions,
at `O(k^2)` random numbers per prompt. `stats_sampler_issue` says why a sampler does not apply;
the default `sampler="auto"` takes the first of subspace, stats, prompts that is exact. The
samplers draw different random streams, so their estimates agree statistically, not bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm.auto import tqdm

import lsa
from lsa._validate import check_length

from .predictors import Predictor, _min_norm_solve
from .prng import rbg_key, rbg_threefry_key
from .prompt_law import TestDistribution

__all__ = [
    "MCEstimate",
    "auto_sampler",
    "mc_ilwd",
    "mc_mean",
    "mc_means",
    "mc_risk",
    "mc_spd",
    "one_at_a_time",
    "stats_sampler_issue",
    "two_sample_z",
]

_F64 = jnp.float64
_TARGETS = ("y_q", "clean")
_SAMPLERS = ("auto", "prompts", "stats", "subspace")


@dataclasses.dataclass(frozen=True)
class MCEstimate:
    """A Monte Carlo mean with its standard error.

    - `mean`: the sample mean;
    - `se`: the standard error, sample standard deviation (ddof 1) / `sqrt(n)`;
    - `n`: the number of samples (prompts).
    """

    mean: float
    se: float
    n: int

    @property
    def sd(self) -> float:
        """The sample standard deviation."""
        return self.se * math.sqrt(self.n)

    @classmethod
    def from_samples(cls, values: Any) -> MCEstimate:
        """The estimate from independent samples already in hand (e.g. one number per flow
        run): the same estimator as the engine's (mean, ddof-1 standard deviation / sqrt(n))."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size < 2:
            raise ValueError(f"an estimate needs at least 2 samples; got {v.size}.")
        return cls(mean=float(v.mean()), se=float(v.std(ddof=1) / math.sqrt(v.size)), n=v.size)

    def z(self, closed_form: float) -> float:
        """The z-score `(mean - closed_form) / se` (theory.md §14)."""
        return (self.mean - float(closed_form)) / self.se

    def __str__(self) -> str:
        return f"{self.mean:.6g} ± {self.se:.2g} (n={self.n})"


class _Accumulator:
    """Parallel combination of (count, mean, centred sum of squares) in float64."""

    def __init__(self, k: int | None = None):
        self.n = 0
        self.mean = np.zeros(k or 0)
        self.m2 = np.zeros(k or 0)

    def add(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if n_b == 0:
            return
        if self.n == 0:  # the number of quantities comes with the first batch
            self.mean = np.zeros(np.shape(mean_b))
            self.m2 = np.zeros(np.shape(mean_b))
        n_new = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n_new)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n_new)
        self.n = n_new

    def estimates(self) -> list[MCEstimate]:
        if self.n < 2:
            raise ValueError("a standard error needs at least 2 samples (n_prompts >= 2).")
        se = np.sqrt(self.m2 / (self.n - 1) / self.n)
        return [MCEstimate(float(m), float(s), self.n) for m, s in zip(self.mean, se, strict=True)]


def _masked_moments(v: Float[Array, "K B"], n_valid: Array) -> tuple[Array, Array]:
    """Per-row mean and centred sum of squares over the first `n_valid` columns."""
    mask = jnp.arange(v.shape[1]) < n_valid
    cnt = jnp.sum(mask)
    mean = jnp.sum(jnp.where(mask, v, 0.0), axis=1) / cnt
    m2 = jnp.sum(jnp.where(mask, (v - mean[:, None]) ** 2, 0.0), axis=1)
    return mean, m2


@jax.jit
def _batch_key(key: PRNGKeyArray, b: Array) -> PRNGKeyArray:
    """The key of batch `b`: an `rbg` key seeded from `fold_in(key, b)`."""
    return rbg_key(jax.random.fold_in(key, b))


def _run(
    batch_fn: Callable[[PRNGKeyArray, Array], tuple[Array, Array]],
    n: int,
    B: int,
    key: PRNGKeyArray,
    progress: bool,
    desc: str,
) -> list[MCEstimate]:
    """The one Monte Carlo loop: batch `b` gets the key `_batch_key(key, b)` and the number of
    valid prompts `n_valid` (the last batch is drawn at full size and masked); `batch_fn`
    returns the per-quantity mean and centred sum of squares of its valid prompts, which are
    combined in float64 (`_Accumulator`)."""
    acc = _Accumulator()
    n_batches = -(-n // B)
    pending: tuple[int, tuple[Array, Array]] | None = None
    for b in tqdm(range(n_batches), disable=not progress, desc=desc, unit="batch"):
        n_b = min(B, n - b * B)
        out = batch_fn(_batch_key(key, jnp.asarray(b)), jnp.asarray(n_b))
        if pending is not None:  # fetch the previous batch while this one runs
            acc.add(pending[0], *(np.asarray(a, np.float64) for a in pending[1]))
        pending = (n_b, out)
    assert pending is not None
    acc.add(pending[0], *(np.asarray(a, np.float64) for a in pending[1]))
    return acc.estimates()


def _check_size(n_prompts: int, batch_size: int) -> tuple[int, int]:
    n = check_length(n_prompts, "n_prompts")
    if n < 2:
        raise ValueError(f"`n_prompts` must be >= 2 for a standard error; got {n}.")
    return n, min(check_length(batch_size, "batch_size"), n)


def _check_common(
    dist: TestDistribution, M: int, n_prompts: int, batch_size: int
) -> tuple[int, int, int]:
    lsa.require_x64("Monte Carlo estimation (simulations.icl.montecarlo)")
    if not isinstance(dist, TestDistribution):
        raise TypeError(f"`dist` must be a TestDistribution; got {type(dist).__name__}.")
    M = dist.validate(M)
    n, B = _check_size(n_prompts, batch_size)
    return M, n, B


def _check_predictor(p: object, M: int, d: int, what: str) -> Predictor:
    if not isinstance(p, Predictor):
        raise TypeError(f"{what} must be a Predictor; got {type(p).__name__}.")
    p.check_dims(M, d)
    return p


# ----------------------------------------------------------------------------------------------
# risk


def one_at_a_time(fns: Sequence[Callable[..., Array]], *args: Any) -> Float[Array, "K B"]:
    """`stack([f(*args) for f in fns])`, evaluated one function after the other.

    The functions (each returning an array of one shape) become the branches of a `lax.switch`
    inside a `lax.map` over their index, so the compiled program runs one branch at a time. Side
    by side as independent branches of one program, four or more batched LAPACK calls (the SVD
    of OLS and ridge, QR) were seen to deadlock XLA's CPU runtime on a 2-core machine (jax 0.10.2:
    every thread idle in a futex wait, for good); in a loop they never did. Each branch is itself
    a batched computation, so nothing measurable is lost.
    """
    if len(fns) == 1:
        return fns[0](*args)[None]
    branches = [lambda a, f=f: f(*a) for f in fns]
    return jax.lax.map(lambda i: jax.lax.switch(i, branches, args), jnp.arange(len(fns)))


@eqx.filter_jit
def _risk_batch(
    preds: tuple[Predictor, ...],
    dist: TestDistribution,
    key: PRNGKeyArray,
    n_valid: Array,
    B: int,
    M: int,
    target: str,
) -> tuple[Array, Array]:
    P = dist._sample(key, B, M)
    tgt = P.y_q if target == "y_q" else jnp.einsum("bd,bd->b", P.x_q, P.w)
    err = one_at_a_time(
        [lambda X, y, x_q, t, p=p: (p._predict(X, y, x_q) - t) ** 2 for p in preds],
        P.X, P.y, P.x_q, tgt,
    )  # fmt: skip
    return _masked_moments(err, n_valid)


@eqx.filter_jit
def _risk_stats_batch(
    preds: tuple[Predictor, ...],
    dist: TestDistribution,
    key: PRNGKeyArray,
    n_valid: Array,
    B: int,
    M: int,
    target: str,
    noisy: bool,
    subspace: bool,
) -> tuple[Array, Array]:
    def directions(x_q: Array) -> Array:
        dirs = [p._stats_dirs(x_q) for p in preds]
        return jnp.concatenate([v for v in dirs if v is not None], axis=1)  # none is None here

    key = rbg_threefry_key(key)
    st, w, y_q = dist._sample_stats(key, B, M, noisy, directions if subspace else None)
    tgt = y_q if target == "y_q" else jnp.einsum("bd,bd->b", st.x_q, w)
    err = one_at_a_time([lambda st, t, p=p: (p._from_stats(st) - t) ** 2 for p in preds], st, tgt)
    return _masked_moments(err, n_valid)


def _subspace_dim(preds: Sequence[Predictor], d: int) -> int | None:
    """`1 + ` the number of directions the predictors need (`w` and theirs), or `None` if one of
    them needs the whole of `S`."""
    k = 1
    q = jax.ShapeDtypeStruct((1, d), _F64)
    for p in preds:
        if not p.supports_stats:
            return None
        shape = jax.eval_shape(p._stats_dirs, q)
        if shape is None:
            return None
        k += int(shape.shape[1])
    return k


def stats_sampler_issue(
    predictors: Mapping[str, Predictor] | Sequence[Predictor],
    dist: TestDistribution,
    M: int,
    sampler: str = "stats",
) -> str | None:
    """Why `mc_risk(..., sampler=sampler)` (`"stats"` or `"subspace"`) would not be exact for
    these predictors, this distribution and prompt length `M`, or `None` if it is."""
    if sampler not in ("stats", "subspace"):
        raise ValueError(f"`sampler` must be 'stats' or 'subspace'; got {sampler!r}.")
    preds = list(predictors.values()) if isinstance(predictors, Mapping) else list(predictors)
    for p in preds:
        if not p.supports_stats:
            return f"{p.name} needs the prompt itself, not only (S, g, c, x_q)"
    if sampler == "stats":
        return dist.stats_sampler_issue(M)
    k = _subspace_dim(preds, dist.d)
    if k is None:
        return "a predictor needs the whole of S (no directions)"
    if k >= dist.d:
        return f"the predictors need {k} >= d = {dist.d} directions (use 'stats')"
    return dist.stats_sampler_issue(M, k)


def auto_sampler(
    predictors: Mapping[str, Predictor] | Sequence[Predictor], dist: TestDistribution, M: int
) -> str:
    """The sampler `mc_risk(..., sampler="auto")` uses: `"subspace"` if it is exact, else
    `"stats"` if it is exact, else `"prompts"`."""
    for name in ("subspace", "stats"):
        if stats_sampler_issue(predictors, dist, M, name) is None:
            return name
    return "prompts"


def mc_risk(
    predictors: Mapping[str, Predictor] | Sequence[Predictor],
    dist: TestDistribution,
    M: int,
    n_prompts: int,
    key: PRNGKeyArray,
    *,
    batch_size: int = 50_000,
    target: str = "y_q",
    sampler: str = "auto",
    progress: bool = False,
) -> dict[str, MCEstimate]:
    """Monte Carlo test risk `E (y_hat - target)^2` of each predictor (theory.md §7–§8, §14).

    All predictors see the same prompts (drawn once per batch), so differences between them are
    not sampling noise. No factor 1/2 (the test risk `R` of theory.md).

    **Arguments:**

    - `predictors`: a mapping name -> `Predictor`, or a sequence of predictors (named by their
      `name`, which must then be distinct).
    - `dist`: the `TestDistribution` of the prompts.
    - `M`: the prompt length (number of in-context examples).
    - `n_prompts`: the number of prompts, `>= 2`.
    - `key`: a JAX PRNG key (legacy `PRNGKey` or typed `jax.random.key`, any implementation).
    - `batch_size`: prompts per batch (memory ~ `batch_size * M * d` floats); see the module
      docstring for reproducibility.
    - `target`: `"y_q"` (the prompt's target, noisy iff `dist.noisy_target`) or `"clean"`
      (`<w, x_q>`).
    - `sampler`: `"prompts"` (draw every prompt), `"stats"` (draw the sufficient statistics
      `(S, g, c, x_q)`), `"subspace"` (draw them restricted to the directions the predictors
      need) or `"auto"` (default: the first of subspace, stats, prompts that is exact, see
      `auto_sampler`). `"stats"` and `"subspace"` raise `ValueError` where they are not exact
      (`stats_sampler_issue` says why). See the module docstring.
    - `progress`: show a tqdm progress bar over batches.

    **Returns:** a dict name -> `MCEstimate`, in the order given.
    """
    if isinstance(predictors, Mapping):
        names = [str(k) for k in predictors]
        preds = list(predictors.values())
    else:
        preds = list(predictors)
        names = [p.name if isinstance(p, Predictor) else repr(p) for p in preds]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"predictor names must be distinct; {', '.join(dup)} repeat. Pass a mapping "
                "name -> predictor instead."
            )
    if not preds:
        raise ValueError("`predictors` is empty; pass at least one predictor.")
    if target not in _TARGETS:
        raise ValueError(f"`target` must be one of {', '.join(_TARGETS)}; got {target!r}.")
    if sampler not in _SAMPLERS:
        raise ValueError(f"`sampler` must be one of {', '.join(_SAMPLERS)}; got {sampler!r}.")
    M, n, B = _check_common(dist, M, n_prompts, batch_size)
    for name, p in zip(names, preds, strict=True):
        _check_predictor(p, M, dist.d, f"predictor {name!r}")
    tup = tuple(preds)
    if sampler == "auto":
        sampler = auto_sampler(preds, dist, M)
    elif sampler != "prompts":
        issue = stats_sampler_issue(preds, dist, M, sampler)
        if issue is not None:
            raise ValueError(f"sampler={sampler!r} is not exact here: {issue}.")
    noisy = float(np.asarray(dist.noise_std)) > 0.0
    subspace = sampler == "subspace"

    def batch_fn(k: PRNGKeyArray, n_valid: Array) -> tuple[Array, Array]:
        if sampler == "prompts":
            return _risk_batch(tup, dist, k, n_valid, B, M, target)
        return _risk_stats_batch(tup, dist, k, n_valid, B, M, target, noisy, subspace)

    est = _run(batch_fn, n, B, key, progress, "mc_risk")
    return dict(zip(names, est, strict=True))


# ----------------------------------------------------------------------------------------------
# SPD and ILWD


@eqx.filter_jit
def _spd_batch(
    p1: Predictor,
    p2: Predictor,
    dist: TestDistribution,
    key: PRNGKeyArray,
    n_valid: Array,
    B: int,
    M: int,
) -> tuple[Array, Array]:
    P = dist._sample(key, B, M)
    diff = p1._predict(P.X, P.y, P.x_q) - p2._predict(P.X, P.y, P.x_q)
    return _masked_moments((diff**2)[None, :], n_valid)


def mc_spd(
    pred1: Predictor,
    pred2: Predictor,
    dist: TestDistribution,
    M: int,
    n_prompts: int,
    key: PRNGKeyArray,
    *,
    batch_size: int = 50_000,
    progress: bool = False,
) -> MCEstimate:
    """Squared prediction difference `E (A_1(D)(x_q) - A_2(D)(x_q))^2` [AKY eq. 15] (§11.3).

    The context `D` and the query come from `dist` (the query law plays `p(x)`). Not normalised
    by `d`. For predictors linear in h with `x_q ~ N(0, Lambda)` independent of the prompt the
    closed form is `theory.spd_linear`.

    **Arguments:** as `mc_risk`, with the two predictors. **Returns:** an `MCEstimate`.
    """
    M, n, B = _check_common(dist, M, n_prompts, batch_size)
    p1 = _check_predictor(pred1, M, dist.d, "`pred1`")
    p2 = _check_predictor(pred2, M, dist.d, "`pred2`")

    def batch_fn(k: PRNGKeyArray, n_valid: Array) -> tuple[Array, Array]:
        return _spd_batch(p1, p2, dist, k, n_valid, B, M)

    return _run(batch_fn, n, B, key, progress, "mc_spd")[0]


@eqx.filter_jit
def _ilwd_batch(
    p1: Predictor,
    p2: Predictor,
    dist: TestDistribution,
    key: PRNGKeyArray,
    n_valid: Array,
    B: int,
    M: int,
    n_probe: int,
) -> tuple[Array, Array]:
    k_prompt, k_probe = jax.random.split(key)
    P = dist._sample(k_prompt, B, M)
    probes = dist.covariates.sample_fresh(k_probe, B * n_probe).reshape(B, n_probe, dist.d)

    def diff_at(x: Array) -> Array:  # x: (B, d), one probe per prompt
        return p1._predict(P.X, P.y, x) - p2._predict(P.X, P.y, x)

    diffs = jax.lax.map(diff_at, jnp.swapaxes(probes, 0, 1)).T  # (B, n_probe)
    # w_hat_1 - w_hat_2 = argmin_w sum_j (diff_j - w^T x'_j)^2 (least squares is linear).
    dw = _min_norm_solve(probes, diffs, jnp.asarray(0.0, _F64))
    return _masked_moments(jnp.sum(dw**2, axis=-1)[None, :], n_valid)


def mc_ilwd(
    pred1: Predictor,
    pred2: Predictor,
    dist: TestDistribution,
    M: int,
    n_prompts: int,
    key: PRNGKeyArray,
    *,
    n_probe: int | None = None,
    batch_size: int = 50_000,
    progress: bool = False,
) -> MCEstimate:
    """Implicit linear weight difference by probe fitting [AKY eqs. 16–17] (theory.md §11.3).

    For each context `D`, draw `n_probe` probe inputs `x'_j` from the covariate law (fresh
    draws, `dist.covariates.sample_fresh`), label them with each predictor's predictions, fit
    `w_hat_A = argmin_w sum_j (A(D)(x'_j) - w^T x'_j)^2` by least squares, and average
    `||w_hat_1 - w_hat_2||^2` over contexts. With `n_probe >= d` probes in general position the
    fit recovers the implied weight of a predictor linear in its query exactly (`G^T h` for
    `y_hat = h^T G x_q`), so the closed form is `theory.ilwd_linear`. Not normalised by `d`.

    **Arguments:** as `mc_spd`, plus `n_probe` (default `2 d`; must be `>= d`).

    **Returns:** an `MCEstimate`.
    """
    M, n, B = _check_common(dist, M, n_prompts, batch_size)
    d = dist.d
    P = 2 * d if n_probe is None else check_length(n_probe, "n_probe")
    if d > P:
        raise ValueError(
            f"`n_probe` must be >= d = {d} so that the probe fit determines the weights; got {P}."
        )
    p1 = _check_predictor(pred1, M, d, "`pred1`")
    p2 = _check_predictor(pred2, M, d, "`pred2`")

    def batch_fn(k: PRNGKeyArray, n_valid: Array) -> tuple[Array, Array]:
        return _ilwd_batch(p1, p2, dist, k, n_valid, B, M, P)

    return _run(batch_fn, n, B, key, progress, "mc_ilwd")[0]


# ----------------------------------------------------------------------------------------------
# any per-prompt quantity


@eqx.filter_jit
def _values_batch(
    values: Callable[..., Array], key: PRNGKeyArray, n_valid: Array, B: int, args: tuple
) -> tuple[Array, Array]:
    return _values_moments(values(key, B, *args), n_valid, B)


@eqx.filter_jit
def _values_moments(v: Array, n_valid: Array, B: int) -> tuple[Array, Array]:
    v = jnp.asarray(v, _F64)
    if v.ndim not in (1, 2) or v.shape[0] != B:
        raise ValueError(
            f"`values` must return an array of shape (B,) or (B, K) with B = {B} prompts; got "
            f"shape {v.shape}."
        )
    return _masked_moments(v.reshape(B, -1).T, n_valid)


def mc_means(
    values: Callable[..., Array],
    key: PRNGKeyArray,
    n: int,
    *args: Any,
    batch_size: int = 50_000,
    jit: bool = True,
    progress: bool = False,
) -> list[MCEstimate]:
    """Monte Carlo means, with standard errors, of `K` per-prompt quantities on the same prompts.

    The generic entry point of the engine, for a check that draws its own prompts (a law that
    `TestDistribution` does not describe, such as Theorem 4.2's quadratic labels) or needs a
    quantity other than a squared error. The prompts are drawn in batches, seeded, with bounded
    memory, and combined by the same float64 accumulator as `mc_risk` (module docstring).

    **Arguments:**

    - `values`: `values(key, B, *args) -> (B, K)` array (float64): the `K` quantities on each
      of `B` independent prompts drawn from `key` (a JAX key of the `rbg` implementation; every
      `jax.random` function accepts it). `B` is a static Python int.
    - `key`: the root key; batch `b` receives `rbg_key(fold_in(key, b))`.
    - `n`: the number of prompts, `>= 2`.
    - `*args`: passed to `values`. With `jit=True` (default) the batch is compiled once per
      `values`, `B`, array shapes and non-array `args` (which must be hashable): pass arrays
      (trained weights, covariances) as `args`, not captured in a closure, and define `values`
      at module level, so that the compiled kernel is reused across calls.
    - `batch_size`: prompts per batch (the last batch is drawn at full size and masked, so every
      batch compiles once). As for `mc_risk`, a different batch size draws different prompts.
    - `jit`: `False` calls `values` eagerly (for a `values` that draws through many different
      distributions, whose per-shape operations are then compiled once and shared).
    - `progress`: show a tqdm progress bar over batches.

    **Returns:** a list of `K` `MCEstimate`s, in the order of the columns.

    Example (the mean of `x^2`, `x ~ N(0, 2)`): ::

        def sq(key, B, scale):
            return (scale * jax.random.normal(key, (B, 1))) ** 2
        (est,) = mc_means(sq, jax.random.PRNGKey(0), 100_000, jnp.sqrt(2.0))
    """
    lsa.require_x64("Monte Carlo estimation (simulations.icl.montecarlo.mc_means)")
    if not callable(values):
        raise TypeError(f"`values` must be a callable (key, B, *args) -> array; got {values!r}.")
    n, B = _check_size(n, batch_size)

    def batch_fn(k: PRNGKeyArray, n_valid: Array) -> tuple[Array, Array]:
        if jit:
            return _values_batch(values, k, n_valid, B, args)
        return _values_moments(values(k, B, *args), n_valid, B)

    return _run(batch_fn, n, B, key, progress, getattr(values, "__name__", "mc_means"))


def mc_mean(
    values: Callable[..., Array],
    key: PRNGKeyArray,
    n: int,
    *args: Any,
    batch_size: int = 50_000,
    jit: bool = True,
    progress: bool = False,
) -> MCEstimate:
    """Monte Carlo mean, with its standard error, of one per-prompt quantity:
    `values(key, B, *args) -> (B,)`. Everything else as `mc_means`."""
    est = mc_means(values, key, n, *args, batch_size=batch_size, jit=jit, progress=progress)
    if len(est) != 1:
        raise ValueError(f"`values` returned {len(est)} quantities per prompt; use mc_means.")
    return est[0]


def two_sample_z(a: MCEstimate, b: MCEstimate) -> float:
    """The z-score `(a.mean - b.mean) / sqrt(a.se^2 + b.se^2)` of the difference of two
    **independent** estimates (drawn from different keys). For two quantities on the same
    prompts, estimate their difference itself with `mc_mean` (paired, smaller SE) instead."""
    return (a.mean - b.mean) / math.hypot(a.se, b.se)
