"""Checks a-c: the reduced population flow against Theorem 4.1 and the lemmas (theory.md §3-§4).

Each check compares the solved flow (`lsa.flow.gradient_flow`, a `FlowResult`) with a closed
form of `theory`. Mutants that make each check fail are named in its docstring and exercised
in `tests/test_core_checks.py`.
"""

from __future__ import annotations

import numpy as np

import theory
from lsa.flow import FlowResult

from .base import CheckResult, rel_error

__all__ = ["check_balance", "check_flow_limit", "check_lyapunov"]


def check_flow_limit(
    Lambda: np.ndarray, N: int, res: FlowResult, tol: float = 1e-8
) -> list[CheckResult]:
    """(a) Theorem 4.1: the flow from Assumption 3.3 reaches eq. 4.1 and min L (Lemma 5.3).

    Mutants that fail it: a flow trained with Gamma built with the test length M instead of N
    (a1-a4 off by O(1)); a flow reporting the loss without its 1/2 (a4).
    """
    W_PV_star, W_KQ_star = theory.limit_weights(Lambda, N)
    Ginv = np.linalg.inv(theory.gamma(Lambda, N))
    minL = theory.min_loss(Lambda, N)
    rows = []
    for cid, what, sim, pred in (
        ("a1", "W_KQ(T) -> W_KQ* (eq. 4.1)", res.W_KQ, W_KQ_star),
        ("a2", "W_PV(T) -> W_PV* (eq. 4.1)", res.W_PV, W_PV_star),
        ("a3", "u U(T) -> Gamma^{-1}", res.product, Ginv),
    ):
        err = rel_error(sim, pred)
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
    err = abs(float(res.loss[-1]) - minL) / abs(minL)
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
    """(b) Lemma A.3: u^2 - ||U||_F^2 is conserved (= 0 from the balanced start).

    The drift is measured relative to the largest `u^2` along the flow: `u^2` scales like
    `1 / c` under `Lambda -> c Lambda`, so an absolute bound would be loose or strict depending
    on the units of Lambda.

    Mutant that fails it: a wrong factor in the vector field (dU/dt doubled: still a descent
    flow, but no longer the gradient flow, so the balance drifts).
    """
    drift_all = np.abs(res.balance - res.balance[0])
    scale = float(np.max(np.asarray(res.u) ** 2))
    drift = float(np.max(drift_all)) / scale
    return CheckResult(
        "b",
        "u^2 - ||U||_F^2 constant along the flow (relative to max u^2)",
        "ZFB Lemma A.3",
        float(res.balance[0]),
        float(res.balance[np.argmax(drift_all)]),
        drift,
        tol,
        "rel",
        drift <= tol,
        {"max_abs_balance": float(np.max(np.abs(res.balance))), "max_u2": scale},
    )


def check_lyapunov(
    Lambda: np.ndarray, N: int, sigma: float, Theta: np.ndarray, res: FlowResult
) -> list[CheckResult]:
    """(c) The loss never increases; l~(0) < 0 within the Lemma A.4 bound; u(t) >= u_min
    (Lemma A.5); gap(t) <= e^{-mu t} gap(0) (Lemma 5.4). Inequalities, no favourable slack
    beyond float64 rounding of the loss.

    `sigma`, `Theta`: the start of Assumption 3.3 (`U(0) = sigma Theta Theta^T`, `u(0) =
    ||U(0)||_F`). Mutants that fail it: a sign error in du/dt (the loss rises, u falls below
    u_min: c1, c3); a flow reporting the loss without its 1/2 (l~(0) > 0: c2); min L without its
    tr(Lambda)/2 (the minimum of l~ taken for that of L: the gap never closes, c4). The PL rate
    is a loose worst case (theory.md §4.8): c4 catches an offset in the gap, not a slower flow
    (only a flow about 100x slower breaks it).
    """
    minL = theory.min_loss(Lambda, N)
    rounding = 1e-12 * max(1.0, float(np.max(np.abs(res.loss))))
    incr = float(np.max(np.diff(res.loss), initial=0.0))
    u_min = theory.u_min(sigma, Theta, Lambda, N)
    mu = theory.pl_constant(sigma, Theta, Lambda, N)
    gap = res.loss - minL
    env = theory.pl_envelope(res.ts, float(gap[0]), mu)
    excess = float(np.max(gap - env - rounding))
    l0 = float(res.loss[0] - 0.5 * np.trace(Lambda))
    bound0 = theory.init_loss_bound(sigma, Theta, Lambda, N)
    u_low = float(np.min(res.u))
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
            bool(l0 < 0 and l0 <= bound0),
        ),
        CheckResult(
            "c3",
            "u(t) >= u_min for all saved t",
            "ZFB Lemma A.5",
            u_min,
            u_low,
            u_min - u_low,
            0.0,
            "ineq",
            u_low >= u_min,
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
