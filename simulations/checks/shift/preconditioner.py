"""Checks s13–s15: the optimal preconditioner `G*` (theory.md §8.4, §8.6; §14 row 20).

These compare **theory with theory**, with no Monte Carlo: the closed form
`theory.optimal_preconditioner` against a numerical minimiser of the closed-form risk (s13), and
against `Gamma^{-1}` and `(Gamma + s^2/N I)^{-1}` written out independently (s14, s15). Their
labels say "(theory vs theory)".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize

import theory

from ..base import CheckResult
from .instance import ShiftInstance

__all__ = ["check_optimal_G"]

THEORY_VS_THEORY = "(theory vs theory)"


def _gamma_explicit(Lambda: np.ndarray, N: int) -> np.ndarray:
    """`Gamma = (1 + 1/N) Lambda + (tr Lambda / N) I`, written out here (theory.md conventions)."""
    d = Lambda.shape[0]
    return (1.0 + 1.0 / N) * Lambda + (np.trace(Lambda) / N) * np.eye(d)


def _minimise_G(risk: Callable[[np.ndarray], float], d: int) -> np.ndarray:
    """BFGS over the `d * d` entries of `G` from `G = 0`. The risk is a quadratic in `G`, so
    central differences give its gradient exactly up to round-off."""
    h = 1e-3

    def f(g: np.ndarray) -> float:
        return risk(g.reshape(d, d))

    def grad(g: np.ndarray) -> np.ndarray:
        out = np.empty_like(g)
        for i in range(g.size):
            e = np.zeros_like(g)
            e[i] = h
            out[i] = (f(g + e) - f(g - e)) / (2 * h)
        return out

    res = scipy.optimize.minimize(
        f, np.zeros(d * d), jac=grad, method="BFGS", options={"gtol": 1e-13, "maxiter": 2000}
    )
    return res.x.reshape(d, d)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _check_s13(inst: ShiftInstance) -> CheckResult:
    """s13: `G*` under the shifted law is the BFGS minimiser of the closed-form risk."""
    s2, M = inst.noise_std**2, inst.M_a
    args: dict[str, Any] = {
        "Lambda_x": inst.Omega_x,
        "Omega": inst.Omega_q,
        "Sigma_w": inst.Sigma_w,
        "s2": s2,
    }
    G_star = theory.optimal_preconditioner(inst.Omega_x, inst.Sigma_w, s2, M)
    G_num = _minimise_G(lambda G: theory.shift_risk(G, **args, M=M), inst.d)
    err = _rel_err(G_num, G_star)
    R_star = theory.shift_risk(G_star, **args, M=M)
    R_num = theory.shift_risk(G_num, **args, M=M)
    return CheckResult(
        "s13",
        f"G* = E[hh^T]^-1 Lambda_x Sigma_w = BFGS minimiser of R(G) (shifted law, M = {M}) "
        + THEORY_VS_THEORY,
        "theory.md §8.4",
        float(np.linalg.norm(G_star)),
        float(np.linalg.norm(G_num)),
        err,
        1e-6,
        "rel",
        err <= 1e-6 and R_star <= R_num + 1e-12 * abs(R_num),
        {
            "R_at_G_star": R_star,
            "R_at_bfgs": R_num,
            "R_at_Gamma_inv": theory.shift_risk(inst.Ginv, **args, M=M),
            "theory_vs_theory": True,
        },
    )


def _check_s14(inst: ShiftInstance) -> CheckResult:
    """s14: `G*` under the training law with M = N is `Gamma^{-1}` (a second route to Lemma 5.3)."""
    L, N, d = inst.Lambda, inst.N, inst.d
    Ginv = np.linalg.inv(_gamma_explicit(L, N))
    G_train = theory.optimal_preconditioner(L, np.eye(d), 0.0, N)
    err = _rel_err(G_train, Ginv)
    return CheckResult(
        "s14",
        "G* under the training law with M = N equals Gamma^-1 (second route to Lemma 5.3) "
        + THEORY_VS_THEORY,
        "theory.md §8.4, ZFB Lemma 5.3",
        float(np.linalg.norm(Ginv)),
        float(np.linalg.norm(G_train)),
        err,
        1e-10,
        "rel",
        err <= 1e-10,
        {"theory_vs_theory": True},
    )


def _check_s15(inst: ShiftInstance, s2_train: float = 0.5) -> CheckResult:
    """s15: with training noise `s^2`, `G*` at M = N is `(Gamma + s^2/N I)^{-1}`, as is
    `theory.noisy_training_minimiser`."""
    L, N, d = inst.Lambda, inst.N, inst.d
    Gn = np.linalg.inv(_gamma_explicit(L, N) + (s2_train / N) * np.eye(d))
    G_noisy = theory.optimal_preconditioner(L, np.eye(d), s2_train, N)
    err = _rel_err(G_noisy, Gn)
    err2 = _rel_err(theory.noisy_training_minimiser(L, N, s2_train), Gn)
    return CheckResult(
        "s15",
        f"G* with training noise s^2 = {s2_train:g}, M = N: (Gamma + s^2/N I)^-1 "
        + THEORY_VS_THEORY,
        "theory.md §8.6",
        float(np.linalg.norm(Gn)),
        float(np.linalg.norm(G_noisy)),
        max(err, err2),
        1e-10,
        "rel",
        max(err, err2) <= 1e-10,
        {"noisy_training_minimiser_rel_err": err2, "theory_vs_theory": True},
    )


def check_optimal_G(inst: ShiftInstance) -> list[CheckResult]:
    """s13–s15 (theory vs theory): `G* = E[hh^T]^{-1} Lambda_x Sigma_w` minimises the shift risk
    (theory.md §8.4); under the training law with M = N it is `Gamma^{-1}`, with training noise
    `(Gamma + s^2/N I)^{-1}` (§8.6); theory.md §14 row 20."""
    return [_check_s13(inst), _check_s14(inst), _check_s15(inst)]
