"""The instance of the shift suite: sizes, the trained layer, the shifted laws and their keys.

- `Sizes` (`NORMAL`, `QUICK`): the Monte Carlo sizes of a run and the acceptance bound `z_max`;
- `ShiftInstance` (`make_instance(setting)`): the LSA trained by `lsa.flow.gradient_flow` on the
  setting's Lambda and the matrices of the shifted laws;
- `gaussian_law`: the one Gaussian structure every Gaussian shift is drawn from;
- `Prefix`: a predictor on the first `m` examples of a prompt (several test lengths on the same
  prompts).

**Keys.** Everything random derives from the setting's seed rule (`lsa.Setting`): Lambda and
Theta from `k_Lambda`, `k_Theta`; every other draw from `Setting.mc_key(tag)` with the tags of
`Tag` (check `sK` uses tag `K`).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

import lsa
import theory
from lsa.flow import FlowResult, gradient_flow

from ...icl.distributions import GaussianCovariates, GaussianQuery, GaussianTask, TestDistribution
from ...icl.predictors import LSAPredictor
from ...icl.prefix import Prefix

__all__ = [
    "NORMAL",
    "QUICK",
    "Prefix",
    "ShiftInstance",
    "Sizes",
    "Tag",
    "as_setting",
    "gaussian_law",
    "make_instance",
    "train_lsa",
]

_F64 = jnp.float64


class Tag(enum.IntEnum):
    """Monte Carlo tags of the suite: the key of a draw is `setting.mc_key(tag)`. Check `sK`
    uses tag `K` (1-20); the figure tables and the instance use the tags below."""

    RISK_VS_M = 100  # + panel index
    COVARIATE_SCALE = 200  # + index of c
    RISK_VS_N = 300
    GARG = 400
    SINGLE_SHIFT = 900  # + index of M
    SIGMA_W = 1011
    OMEGA_Q = 1012
    OMEGA_X = 1013
    GARG_BASES = 1005
    THEOREM42_VECTORS = 1042


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Monte Carlo sizes of one run (normal or quick) and the acceptance bound.

    - `n`: prompts per risk row (`batch` per kernel call, so rows share a compiled kernel);
    - `n_spd`, `n_ilwd`: prompts for the SPD and ILWD rows;
    - `fig_M`, `fig_n`: prompt lengths and prompts per panel of `shift_risk_vs_M.png`;
    - `scale_c`: scale factors of `covariate_scale.png`;
    - `N_values`, `M_large`, `N_n`: training lengths, test length and prompts of `risk_vs_N.png`;
    - `garg_M`, `garg_n`: prompt lengths and prompts per Garg panel;
    - `z_max`: a z-check passes if `|z| <= z_max` (fixed in advance, theory.md §14).
    """

    n: int
    batch: int
    n_spd: int
    n_ilwd: int
    fig_M: tuple[int, ...]
    fig_n: int
    scale_c: tuple[float, ...]
    N_values: tuple[int, ...]
    M_large: int
    N_n: int
    garg_M: tuple[int, ...]
    garg_n: int
    z_max: float = 4.0


NORMAL = Sizes(
    n=100_000,
    batch=25_000,
    n_spd=50_000,
    n_ilwd=25_000,
    fig_M=(2, 3, 5, 8, 12, 20, 40, 80),
    fig_n=10_000,
    scale_c=(1 / 3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
    N_values=(5, 20, 80),
    M_large=1000,
    N_n=4_000,
    garg_M=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
    garg_n=4_000,
)
QUICK = Sizes(
    n=20_000,
    batch=20_000,
    n_spd=10_000,
    n_ilwd=5_000,
    fig_M=(2, 5, 20),
    fig_n=2_000,
    scale_c=(1 / 3, 1.0, 3.0),
    N_values=(5, 40),
    M_large=300,
    N_n=1_000,
    garg_M=(1, 2, 4, 8),
    garg_n=1_000,
)


def as_setting(setting: Any) -> lsa.Setting:
    """`setting`, checked to be an `lsa.Setting` (`TypeError` otherwise: the former
    `simulations.checks.core.Setting`, with `spread`, is gone)."""
    if not isinstance(setting, lsa.Setting):
        raise TypeError(f"`setting` must be an lsa.Setting; got {type(setting).__name__}.")
    return setting


@dataclasses.dataclass(frozen=True)
class ShiftInstance:
    """The trained layer and the test laws of the shift checks.

    - `setting`: the `lsa.Setting`; `Lambda`, `N`: its covariance and training length;
    - `lsa`: the trained layer (`LSAPredictor` at the end point of `gradient_flow`); `Ginv`:
      `Gamma^{-1}(Lambda, N)` (theory.md §6);
    - `Sigma_w`: a non-identity, non-diagonal task second moment; `Omega_q`: a query second
      moment `!= Lambda`; `Omega_x`: a general covariate-shift covariance (all Haar-rotated);
    - `noise_std`: label-noise standard deviation of the noisy rows;
    - `M_a`, `M_b`: the two test lengths (`!= N`), a short and a long one.
    """

    setting: lsa.Setting
    Lambda: np.ndarray
    N: int
    lsa: LSAPredictor
    Ginv: np.ndarray
    Sigma_w: np.ndarray
    Omega_q: np.ndarray
    Omega_x: np.ndarray
    noise_std: float
    M_a: int
    M_b: int
    flow_seconds: float

    @property
    def d(self) -> int:
        return int(self.Lambda.shape[0])

    def key(self, tag: int) -> PRNGKeyArray:
        """The Monte Carlo key of `tag` (`Tag`, or `K` for check `sK`): `setting.mc_key(tag)`."""
        return self.setting.mc_key(int(tag))


def _rotated(eigenvalues: np.ndarray, key: PRNGKeyArray) -> np.ndarray:
    S = np.asarray(lsa.rotated_covariance(eigenvalues, key))
    return 0.5 * (S + S.T)


def _avoid(M: int, N: int) -> int:
    """`M`, moved off `N` (at M = N the rho = N convention error is invisible)."""
    return M + 2 if M == N else M


def train_lsa(setting: lsa.Setting, flow: FlowResult | None = None) -> LSAPredictor:
    """The LSA layer trained by the reduced population gradient flow (ZFB Thm 4.1, Lemma 5.2)
    from Assumption 3.3 (`setting.build()`, the setting's solver options), as an
    `LSAPredictor` on the full `(d+1) x (d+1)` weights. `flow`: that solve, if already done."""
    if flow is not None:
        return LSAPredictor(flow.W_PV, flow.W_KQ)
    problem = setting.build()
    method, options = setting.method_and_options()
    res = gradient_flow(problem.Lambda, setting.N, problem.init, method=method, options=options)
    return LSAPredictor(res.W_PV, res.W_KQ)


def make_instance(setting: lsa.Setting, flow: FlowResult | None = None) -> ShiftInstance:
    """Train the layer of `setting` (`gradient_flow`, unless its solved `flow` is given) and
    build the shifted laws (§8.5)."""
    setting = as_setting(setting)
    Lambda = setting.Lambda()
    d = Lambda.shape[0]
    t0 = time.perf_counter()
    pred = train_lsa(setting, flow)
    flow_seconds = time.perf_counter() - t0
    ramp = np.linspace(0.0, 1.0, d)
    return ShiftInstance(
        setting=setting,
        Lambda=Lambda,
        N=setting.N,
        lsa=pred,
        Ginv=np.linalg.inv(theory.gamma(Lambda, setting.N)),
        Sigma_w=_rotated(0.3 + 2.2 * ramp, setting.mc_key(Tag.SIGMA_W)),
        Omega_q=_rotated(2.0 - 1.5 * ramp, setting.mc_key(Tag.OMEGA_Q)),
        Omega_x=_rotated(0.5 + 1.5 * ramp, setting.mc_key(Tag.OMEGA_X)),
        noise_std=0.7,
        M_a=_avoid(10, setting.N),
        M_b=_avoid(40, setting.N),
        flow_seconds=flow_seconds,
    )


def gaussian_law(
    Lambda_x: np.ndarray,
    Omega: np.ndarray,
    Sigma_w: np.ndarray,
    noise_std: float = 0.0,
    noisy_target: bool = False,
) -> TestDistribution:
    """`x_i ~ N(0, Lambda_x)`, `x_q ~ N(0, Omega)` independent, `w ~ N(0, Sigma_w)`, label noise
    (theory.md §8.3). Every Gaussian shift of §8.5 is one of these; all share one structure, so
    one compiled Monte Carlo kernel per prompt length serves them all."""
    return TestDistribution(
        task=GaussianTask(Sigma_w),
        covariates=GaussianCovariates(Lambda_x),
        query=GaussianQuery(Omega),
        noise_std=noise_std,
        noisy_target=noisy_target,
    )
