"""Each statement of the paper as a check: predicted value, simulated value, tolerance, verdict.

`lsa` computes (trains the layer, applies the full map), `theory` predicts (closed forms), and
this module puts the two side by side. The two never import each other, so every check compares
two independent computations. All numbers are float64.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

import lsa
import theory
from lsa.flow import EmpiricalResult, FlowResult, empirical_flow, gradient_flow

__all__ = [
    "CheckResult",
    "Setting",
    "check_balance",
    "check_empirical",
    "check_flow_limit",
    "check_lyapunov",
    "check_prediction_identity",
    "check_risk_mc",
    "run_core_checks",
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """The experimental setting of `lsa reproduce` (and of `lsa train`).

    - `d`, `N`: input dimension and training prompt length;
    - `eigenvalues`: the spectrum of Lambda (default: `d` values spread `spread`x geometrically,
      rescaled to trace d); Lambda is this spectrum rotated by a Haar-random orthogonal matrix
      drawn from `seed`, so it is anisotropic and non-diagonal;
    - `sigma_fraction`: sigma as a fraction of sigma_max; Theta is drawn from `seed + 1`;
    - `M_values`: test prompt lengths for the risk checks (M != N);
    - `mc_prompts`: Monte Carlo prompts per test length; `z_max`: accepted |z|;
    - `B_values`: prompt-set sizes for the empirical flow check.
    """

    d: int = 5
    N: int = 20
    spread: float = 10.0
    eigenvalues: tuple[float, ...] | None = None
    sigma_fraction: float = 0.5
    seed: int = 0
    M_values: tuple[int, ...] = (5, 10, 40, 80)
    mc_prompts: int = 200_000
    z_max: float = 4.0
    B_values: tuple[int, ...] = (1_000, 10_000, 100_000)

    def __post_init__(self) -> None:
        if self.d < 1 or self.N < 1:
            raise ValueError("`d` and `N` must be >= 1.")
        if any(m < 1 for m in self.M_values):
            raise ValueError("every test length in `M_values` must be >= 1.")
        if self.eigenvalues is not None and len(self.eigenvalues) != self.d:
            raise ValueError(f"`eigenvalues` must have d = {self.d} entries.")

    def spectrum(self) -> np.ndarray:
        if self.eigenvalues is not None:
            return np.asarray(self.eigenvalues, dtype=np.float64)
        lam = self.spread ** (np.arange(self.d) / max(self.d - 1, 1))
        return lam * self.d / lam.sum()

    def Lambda(self) -> np.ndarray:
        return np.asarray(lsa.rotated_covariance(self.spectrum(), jax.random.PRNGKey(self.seed)))

    def init(self) -> lsa.Init:
        return lsa.paper_init(
            self.Lambda(),
            self.N,
            sigma_fraction=self.sigma_fraction,
            key=jax.random.PRNGKey(self.seed + 1),
        )


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One checked statement."""

    id: str
    statement: str
    reference: str
    predicted: float
    simulated: float
    error: float
    tolerance: float
    kind: str  # "rel", "abs", "z", "ineq", "trend"
    passed: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["verdict"] = "PASS" if self.passed else "FAIL"
        return d


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _theta_of(init: lsa.Init) -> tuple[float, np.ndarray]:
    """sigma and a Theta with Theta Theta^T = U(0)/sigma (any square root will do)."""
    sigma = float(init.u)
    TT = np.asarray(init.U) / sigma
    return sigma, np.real(scipy.linalg.sqrtm(0.5 * (TT + TT.T)))


# ----------------------------------------------------------------------------------------
# (a)-(c): the reduced flow against Theorem 4.1 and the lemmas
# ----------------------------------------------------------------------------------------


def check_flow_limit(
    Lambda: np.ndarray, N: int, res: FlowResult, tol: float = 1e-8
) -> list[CheckResult]:
    """(a) Theorem 4.1: the flow from Assumption 3.3 reaches eq. 4.1 and min L."""
    W_PV_star, W_KQ_star = theory.limit_weights(Lambda, N)
    Ginv = np.linalg.inv(theory.gamma(Lambda, N))
    minL = theory.min_loss(Lambda, N)
    rows = []
    for cid, what, sim, pred in (
        ("a1", "W_KQ(T) -> W_KQ* (eq. 4.1)", res.W_KQ, W_KQ_star),
        ("a2", "W_PV(T) -> W_PV* (eq. 4.1)", res.W_PV, W_PV_star),
        ("a3", "u U(T) -> Gamma^{-1}", res.product, Ginv),
    ):
        err = _rel(sim, pred)
        rows.append(
            CheckResult(
                cid,
                what,
                "ZFB Thm 4.1",
                float(np.linalg.norm(pred)),
                float(np.linalg.norm(sim)),
                err,
                tol,
                "rel",
                err <= tol,
                {"t_final": res.t_final, "steps": res.stats["num_steps"]},
            )
        )
    err = abs(res.loss[-1] - minL) / abs(minL)
    rows.append(
        CheckResult(
            "a4",
            "L(T) -> min L = (tr Lambda - tr(Lambda^2 Gamma^-1))/2",
            "ZFB Lemma 5.3",
            minL,
            float(res.loss[-1]),
            err,
            tol,
            "rel",
            err <= tol,
        )
    )
    return rows


def check_balance(res: FlowResult, tol: float = 1e-9) -> CheckResult:
    """(b) Lemma A.3: u^2 - ||U||_F^2 is conserved (= 0 from the balanced start)."""
    drift = float(np.max(np.abs(res.balance - res.balance[0])))
    return CheckResult(
        "b",
        "u^2 - ||U||_F^2 constant along the flow",
        "ZFB Lemma A.3",
        float(res.balance[0]),
        float(res.balance[np.argmax(np.abs(res.balance - res.balance[0]))]),
        drift,
        tol,
        "abs",
        drift <= tol,
        {"max_abs_balance": float(np.max(np.abs(res.balance)))},
    )


def check_lyapunov(
    Lambda: np.ndarray, N: int, init: lsa.Init, res: FlowResult
) -> list[CheckResult]:
    """(c) The loss never increases; u(t) >= u_min (Lemma A.5); gap(t) <= e^{-mu t} gap(0)."""
    sigma, Theta = _theta_of(init)
    minL = theory.min_loss(Lambda, N)
    rounding = 1e-12 * max(1.0, float(np.max(np.abs(res.loss))))
    incr = float(np.max(np.diff(res.loss), initial=0.0))
    u_min = theory.u_min(sigma, Theta, Lambda, N)
    mu = theory.pl_constant(sigma, Theta, Lambda, N)
    gap = res.loss - minL
    env = theory.pl_envelope(res.ts, float(gap[0]), mu)
    # An inequality: no slack in the favourable direction beyond float64 rounding of the loss.
    excess = float(np.max(gap - env - rounding))
    l0 = float(res.loss[0] - 0.5 * np.trace(Lambda))
    bound0 = theory.init_loss_bound(sigma, Theta, Lambda, N)
    return [
        CheckResult(
            "c1",
            "loss non-increasing along the flow",
            "ZFB eq. 3.9 (gradient flow)",
            0.0,
            incr,
            incr,
            rounding,
            "ineq",
            incr <= rounding,
        ),
        CheckResult(
            "c2",
            "l~(0) < 0 and l~(0) <= Lemma A.4 bound",
            "ZFB Lemma A.4",
            bound0,
            l0,
            l0 - bound0,
            0.0,
            "ineq",
            (l0 < 0) and (l0 <= bound0),
        ),
        CheckResult(
            "c3",
            "u(t) >= u_min for all saved t",
            "ZFB Lemma A.5",
            u_min,
            float(np.min(res.u)),
            u_min - float(np.min(res.u)),
            0.0,
            "ineq",
            float(np.min(res.u)) >= u_min,
        ),
        CheckResult(
            "c4",
            "gap(t) <= exp(-mu t) gap(0) at every saved t",
            "ZFB Lemma 5.4, eq. 5.8",
            mu,
            float(np.max((gap - rounding) / np.maximum(env, 1e-300))),
            excess,
            0.0,
            "ineq",
            excess <= 0.0,
            {"mu": mu},
        ),
    ]


# ----------------------------------------------------------------------------------------
# (d)-(e): the trained layer on test prompts
# ----------------------------------------------------------------------------------------


def check_prediction_identity(
    Lambda: np.ndarray, N: int, M_values: Iterable[int], key: jax.Array, n_prompts: int = 256
) -> list[CheckResult]:
    """(d) At the limit weights the full map predicts h^T Gamma^{-1} x_q with rho = M (eq. 4.3);
    rho = N instead would multiply every prediction by exactly M/N."""
    W_PV, W_KQ = theory.limit_weights(Lambda, N)
    dist = lsa.PromptDistribution(Lambda)
    rows = []
    for i, M in enumerate(M_values):
        p = dist.sample(jax.random.fold_in(key, i), n_prompts, M)
        E = lsa.embed(p.X, p.y, p.x_q)
        y_full = np.asarray(lsa.predict(E, W_PV, W_KQ))  # literal map, rho = M
        y_thy = theory.trained_prediction(
            np.asarray(p.X), np.asarray(p.y), np.asarray(p.x_q), Lambda, N
        )
        scale = float(np.max(np.abs(y_thy)))
        err = float(np.max(np.abs(y_full - y_thy))) / scale
        Et = jnp.swapaxes(E, -1, -2)
        y_rhoN = np.asarray((E + W_PV @ E @ (Et @ W_KQ @ E) / N)[..., -1, -1])
        err_N = float(np.max(np.abs(y_rhoN - (M / N) * y_full))) / scale
        rows.append(
            CheckResult(
                f"d{i + 1}",
                f"full map = h^T Gamma^-1 x_q per prompt, M = {M}",
                "ZFB eq. 4.3",
                0.0,
                err,
                err,
                1e-10,
                "rel",
                err <= 1e-10 and err_N <= 1e-10,
                {"M": M, "rho_N_is_M_over_N_times_err": err_N, "prompts": n_prompts},
            )
        )
    return rows


def mc_squared_error(
    predict: Callable[[Any, Any, Any], Any],
    dist: lsa.PromptDistribution,
    M: int,
    n_prompts: int,
    key: jax.Array,
    batch: int = 50_000,
    scale: float = 1.0,
) -> tuple[float, float, float, float]:
    """Mean and standard error of `(scale * y_hat - y_q)^2` over `n_prompts` test prompts.

    Returns `(mean, se, mean_mutant, se_mutant)` where the mutant multiplies predictions by
    `scale` (used to show how far a convention error would move z); with `scale = 1` the two
    coincide.
    """
    s1 = s2 = m1 = m2 = 0.0
    n = 0
    for b, start in enumerate(range(0, n_prompts, batch)):
        size = min(batch, n_prompts - start)
        p = dist.sample(jax.random.fold_in(key, b), size, M)
        yh = np.asarray(predict(p.X, p.y, p.x_q))
        yq = np.asarray(p.y_q)
        e = (yh - yq) ** 2
        f = (scale * yh - yq) ** 2
        s1 += float(e.sum())
        s2 += float((e**2).sum())
        m1 += float(f.sum())
        m2 += float((f**2).sum())
        n += size
    mean, mmean = s1 / n, m1 / n
    se = math.sqrt(max(s2 / n - mean**2, 0.0) / (n - 1))
    mse = math.sqrt(max(m2 / n - mmean**2, 0.0) / (n - 1))
    return mean, se, mmean, mse


def check_risk_mc(
    Lambda: np.ndarray,
    N: int,
    res: FlowResult,
    M_values: Iterable[int],
    n_prompts: int,
    key: jax.Array,
    z_max: float = 4.0,
) -> tuple[list[CheckResult], list[dict[str, Any]]]:
    """(e) The trained weights' test risk at M != N: Monte Carlo on the full LSA map against the
    exact R(N, M) of theory.md §7.3 (no 1/2), |z| <= z_max.

    Also reports the z-score that the rho = N convention (predictions times M/N) would give, to
    show the test has the power to catch it.
    """
    W_PV, W_KQ = jnp.asarray(res.W_PV), jnp.asarray(res.W_KQ)
    dist = lsa.PromptDistribution(Lambda)
    rows, table = [], []

    @jax.jit
    def pred(X, y, xq):
        return lsa.predict_prompt(X, y, xq, W_PV, W_KQ)

    for i, M in enumerate(M_values):
        R = theory.risk(Lambda, N, M)
        mean, se, mmean, mse = mc_squared_error(
            pred, dist, M, n_prompts, jax.random.fold_in(key, 1000 + i), scale=N / M
        )  # predictions * (N/M) is what rho = N would have given
        z = (mean - R) / se
        z_mut = (mmean - R) / mse
        rows.append(
            CheckResult(
                f"e{i + 1}",
                f"MC risk of trained weights = R(N, M), M = {M}",
                "theory.md §7.3",
                R,
                mean,
                z,
                z_max,
                "z",
                abs(z) <= z_max,
                {"M": M, "se": se, "n": n_prompts, "z_if_rho_N": z_mut},
            )
        )
        table.append(
            {
                "M": M,
                "theory": R,
                "mc_mean": mean,
                "mc_se": se,
                "z": z,
                "z_if_rho_N": z_mut,
                "n": n_prompts,
            }
        )
    return rows, table


# ----------------------------------------------------------------------------------------
# (f): the empirical flow over all entries
# ----------------------------------------------------------------------------------------


def check_empirical(
    Lambda: np.ndarray,
    N: int,
    init: lsa.Init,
    res: FlowResult,
    B_values: Iterable[int],
    key: jax.Array,
    n_dense: int = 4,
) -> tuple[list[CheckResult], list[dict[str, Any]]]:
    """(f) The empirical flow over all 2(d+1)^2 entries, on B prompts:

    - from Assumption 3.3 it tracks the reduced population flow, closer as B grows, and keeps
      a = b = 0 exactly (antithetic prompt sets make the odd/even symmetry exact);
    - from generic random dense starts (`n_dense` seeds, scale 1/sqrt(d+1)) the end point is
      classified: the global basin (a b^T negligible, u U -> Gamma^{-1} as B grows, the
      finite-B minimiser differing by O(B^{-1/2})) or a spurious local minimum with a, b != 0.
      The latter is certified by the Hessian of the empirical loss on the relevant entries
      (gradient ~0, one zero eigenvalue for the scaling symmetry, the rest positive).
    """
    d = Lambda.shape[0]
    Ginv = np.linalg.inv(theory.gamma(Lambda, N))
    u_star = theory.limit_reduced(Lambda, N)[0]
    min_L = theory.min_loss(Lambda, N)
    dist = lsa.PromptDistribution(Lambda)
    W_PV0, W_KQ0 = init.weights()
    starts = []
    for k in range(n_dense):
        k1, k2 = jax.random.split(jax.random.fold_in(key, 500 + k))
        starts.append(
            (
                jax.random.normal(k1, (d + 1, d + 1)) / math.sqrt(d + 1),
                jax.random.normal(k2, (d + 1, d + 1)) / math.sqrt(d + 1),
            )
        )
    t_end = 2.0 * res.t_final
    table: list[dict[str, Any]] = []
    spurious: list[dict[str, Any]] = []
    for j, B in enumerate(B_values):
        p = dist.sample(jax.random.fold_in(key, 2000 + j), B, N, antithetic=True)
        q = lsa.quadratic_loss(lsa.prompt_stats(p.X, p.y, p.x_q, p.y_q))
        t0 = time.perf_counter()
        emp = empirical_flow(q, W_PV0, W_KQ0, t_end=t_end)
        row: dict[str, Any] = {
            "B": B,
            "track_u_max_rel": _tracking_error(emp, res, u_star),
            "paper_init_uU_dist": _rel(emp.W_PV[-1, -1] * emp.W_KQ[:-1, :-1], Ginv),
            "paper_init_ab_max": float(
                max(np.abs(emp.W_PV[-1, :-1]).max(), np.abs(emp.W_KQ[-1, :-1]).max())
            ),
        }
        glob = []
        for k, (Wp0, Wk0) in enumerate(starts):
            gen = empirical_flow(q, Wp0, Wk0, t_end=8.0 * t_end)
            uU = gen.W_PV[-1, -1] * gen.W_KQ[:-1, :-1]
            ab_mat = np.outer(gen.W_PV[-1, :-1], gen.W_KQ[-1, :-1])
            is_global = np.linalg.norm(ab_mat) <= 1e-6 * np.linalg.norm(uU)
            if is_global:
                glob.append(_rel(uU, Ginv))
            elif not spurious:
                spurious.append(_certify_minimum(gen, q, B, k, float(gen.loss[-1])))
        row.update(
            {
                "dense_global_fraction": len(glob) / len(starts),
                "dense_init_uU_dist": float(np.median(glob)) if glob else float("nan"),
                "seconds": time.perf_counter() - t0,
            }
        )
        table.append(row)
    tr = [r["track_u_max_rel"] for r in table]
    dn = [r["dense_init_uU_dist"] for r in table]
    ab = float(max(r["paper_init_ab_max"] for r in table))
    sizes = [r["B"] for r in table]
    ok_dn = all(np.isfinite(dn)) and all(b < a for a, b in itertools.pairwise(dn))
    slope = (
        float(np.polyfit(np.log(sizes), np.log(dn), 1)[0])
        if ok_dn and len(dn) > 1
        else float("nan")
    )
    frac = float(np.mean([r["dense_global_fraction"] for r in table]))
    rows = [
        CheckResult(
            "f1",
            "empirical flow from Assumption 3.3 tracks the reduced flow as B grows",
            "ZFB §3.3, eq. 3.7 vs 3.8",
            0.0,
            tr[-1],
            tr[-1],
            tr[0],
            "trend",
            all(b < a for a, b in itertools.pairwise(tr)),
            {"max_rel_u_deviation_by_B": dict(zip(sizes, tr, strict=True))},
        ),
        CheckResult(
            "f2",
            "a = b = 0 kept exactly by the empirical flow (antithetic prompts)",
            "ZFB Lemma 5.2",
            0.0,
            ab,
            ab,
            1e-12,
            "abs",
            ab <= 1e-12,
        ),
        CheckResult(
            "f3",
            "dense random starts in the global basin: u U -> Gamma^-1 as B grows",
            "theory.md §5",
            -0.5,
            slope,
            dn[-1],
            dn[0],
            "trend",
            ok_dn,
            {
                "median_dist_by_B": dict(zip(sizes, dn, strict=True)),
                "loglog_slope": slope,
                "fraction_of_dense_starts_in_global_basin": frac,
            },
        ),
    ]
    if spurious:
        sp = spurious[0]
        rows.append(
            CheckResult(
                "f4",
                "finding: spurious local minimum with a, b != 0 reached from dense starts",
                "beyond ZFB (Thm 4.1 covers Assumption 3.3 only)",
                min_L,
                sp["loss"],
                sp["hessian_min_nonzero_eig"],
                0.0,
                "ineq",
                sp["hessian_min_nonzero_eig"] > 0 and sp["grad_norm"] < 1e-8,
                sp,
            )
        )
    return rows, table


def _certify_minimum(
    emp: EmpiricalResult, q: lsa.QuadraticLoss, B: int, seed: int, loss: float
) -> dict[str, Any]:
    """Gradient norm and Hessian spectrum of the empirical loss on the relevant entries
    (last row of W_PV, first d columns of W_KQ) at an end point of the flow."""
    D = emp.W_PV.shape[0]

    def f(z):
        Wp = jnp.zeros((D, D)).at[-1].set(z[:D])
        Wk = jnp.zeros((D, D)).at[:, :-1].set(z[D:].reshape(D, D - 1))
        return lsa.quadratic_form_loss(Wp, Wk, q)

    z = jnp.concatenate([jnp.asarray(emp.W_PV[-1]), jnp.asarray(emp.W_KQ[:, :-1]).reshape(-1)])
    g = float(jnp.linalg.norm(jax.grad(f)(z)))
    ev = np.linalg.eigvalsh(np.asarray(jax.hessian(f)(z)))
    return {
        "B": B,
        "dense_seed": seed,
        "loss": loss,
        "grad_norm": g,
        "hessian_zero_eig": float(ev[0]),
        "hessian_min_nonzero_eig": float(ev[1]),
        "a": emp.W_PV[-1, :-1].tolist(),
        "b": emp.W_KQ[-1, :-1].tolist(),
        "u": float(emp.W_PV[-1, -1]),
    }


def _tracking_error(emp: EmpiricalResult, red: FlowResult, u_star: float) -> float:
    """max over the reduced flow's saved times of |u_emp(t) - u_red(t)| / u*."""
    u_emp = emp.W_PV_traj[:, -1, -1]
    t = red.ts[red.ts <= emp.ts[-1]]
    u_e = np.interp(t, emp.ts, u_emp)
    u_r = np.interp(t, red.ts, red.u)
    return float(np.max(np.abs(u_e - u_r)) / u_star)


# ----------------------------------------------------------------------------------------
# All of them
# ----------------------------------------------------------------------------------------


def run_core_checks(
    setting: Setting, log: Callable[[str], None] = print
) -> tuple[list[CheckResult], dict[str, Any]]:
    """Run checks (a)-(f) for one setting. Returns the checks and the data the figures need."""
    Lambda = setting.Lambda()
    N = setting.N
    key = jax.random.PRNGKey(setting.seed + 2)
    init = setting.init()
    t0 = time.perf_counter()
    res = gradient_flow(Lambda, N, init)
    log(
        f"  reduced flow: {res.stats['num_steps']} steps, t_final = {res.t_final:.4g}, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    checks = check_flow_limit(Lambda, N, res)
    checks.append(check_balance(res))
    checks += check_lyapunov(Lambda, N, init, res)
    checks += check_prediction_identity(Lambda, N, setting.M_values, key)
    t0 = time.perf_counter()
    rows, risk_table = check_risk_mc(
        Lambda, N, res, setting.M_values, setting.mc_prompts, key, setting.z_max
    )
    checks += rows
    log(
        f"  Monte Carlo risk: {len(setting.M_values)} test lengths x {setting.mc_prompts} prompts, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    t0 = time.perf_counter()
    rows, emp_table = check_empirical(Lambda, N, init, res, setting.B_values, key)
    checks += rows
    log(f"  empirical flows: B in {list(setting.B_values)}, {time.perf_counter() - t0:.2f} s")
    sigma, Theta = _theta_of(init)
    data = {
        "Lambda": Lambda,
        "flow": res,
        "min_loss": theory.min_loss(Lambda, N),
        "Gamma_inv": np.linalg.inv(theory.gamma(Lambda, N)),
        "mu": theory.pl_constant(sigma, Theta, Lambda, N),
        "u_min": theory.u_min(sigma, Theta, Lambda, N),
        "risk_table": risk_table,
        "empirical_table": emp_table,
        "risk_curve": _risk_curve(Lambda, N, setting.M_values),
    }
    return checks, data


def _risk_curve(Lambda: np.ndarray, N: int, M_values: Iterable[int]) -> dict[str, np.ndarray]:
    Ms = np.unique(np.geomspace(1, 4 * max(max(M_values), N), 200).astype(int))
    return {
        "M": Ms,
        "R": np.array([theory.risk(Lambda, N, int(m)) for m in Ms]),
        "floor": np.full(Ms.shape, theory.risk_floor(Lambda, N)),
    }
