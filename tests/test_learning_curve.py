"""The closed-form isotropic learning curve (`theory.learning_curve`) against an independent
ODE solve of Lemma 5.2 (scipy, the full d x d system), and check g1 (the diffrax flow against
the closed form at every saved time) with its mutant."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import lsa
from simulations.checks import learning_curve as lc
from theory.learning_curve import isotropic_escape_time, isotropic_learning_curve


def _lemma52_scipy(d: int, N: int, lam: float, sigma: float, ts: np.ndarray) -> np.ndarray:
    """u(t) from the literal Lemma 5.2 ODE in all d^2 + 1 variables (DOP853, rtol 1e-12)."""
    Lam = lam * np.eye(d)
    G = (1 + 1 / N) * Lam + lam * d / N * np.eye(d)

    def f(t, y):
        U, u = y[:-1].reshape(d, d), y[-1]
        GLUL = G @ Lam @ U @ Lam
        dU = -(u**2) * GLUL + u * Lam @ Lam
        du = -np.trace(u * GLUL @ U.T - Lam @ Lam @ U.T)
        return np.concatenate([dU.ravel(), [du]])

    y0 = np.concatenate([(sigma * np.eye(d) / np.sqrt(d)).ravel(), [sigma]])
    sol = solve_ivp(f, (0, ts[-1]), y0, method="DOP853", t_eval=ts, rtol=1e-12, atol=1e-14)
    assert sol.success
    return sol.y[-1]


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_solves_lemma52(seed):
    """Random d, N, scale (tr Lambda / d from 1e-2 to 1e2) and start: the closed form equals
    the ODE solved independently, to the solver tolerance."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 7))
    N = int(rng.integers(1, 60))
    lam = float(10 ** rng.uniform(-2, 2))
    g = lam * (N + 1 + d) / N
    sigma = float(10 ** rng.uniform(-3, -0.2)) * np.sqrt(2 / (np.sqrt(d) * g))
    t_half = isotropic_escape_time(d, N, lam, sigma)
    ts = np.linspace(0, 4 * t_half, 40)
    u_ode = _lemma52_scipy(d, N, lam, sigma, ts)
    cf = isotropic_learning_curve(ts, d, N, lam, sigma)
    np.testing.assert_allclose(cf["u"], u_ode, rtol=1e-8)
    # at the escape time u U is half of Gamma^{-1} (exactly, by definition of the closed form)
    half = isotropic_learning_curve(t_half, d, N, lam, sigma)
    assert half["uU"] * g == pytest.approx(0.5, rel=1e-12)


def test_limit_and_loss():
    """t -> infinity: u U -> Gamma^{-1} = N / (lam (N + d + 1)) and L -> min L of the isotropic
    case, d (d + 1) lam / (2 (N + d + 1)) (theory.md §4.4 scaled by lam)."""
    d, N, lam = 4, 9, 2.5
    end = isotropic_learning_curve(1e6, d, N, lam, 0.01)
    assert end["uU"] == pytest.approx(N / (lam * (N + d + 1)), rel=1e-14)
    assert end["loss"] == pytest.approx(d * (d + 1) * lam / (2 * (N + d + 1)), rel=1e-12)
    start = isotropic_learning_curve(0.0, d, N, lam, 0.01)
    assert start["u"] == pytest.approx(0.01, rel=1e-15)


def test_escape_time_fractions():
    d, N, lam, s = 3, 10, 0.7, 0.05
    t = [isotropic_escape_time(d, N, lam, s, f) for f in (0.1, 0.5, 0.9)]
    assert t[0] < t[1] < t[2]
    for f, tf in zip((0.1, 0.5, 0.9), t, strict=True):
        c = isotropic_learning_curve(tf, d, N, lam, s)
        assert c["uU"] * lam * (N + 1 + d) / N == pytest.approx(f, rel=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="lam"):
        isotropic_learning_curve(1.0, 3, 5, -1.0, 0.1)
    with pytest.raises(ValueError, match="`t`"):
        isotropic_learning_curve(-1.0, 3, 5, 1.0, 0.1)
    with pytest.raises(ValueError, match="fraction"):
        isotropic_escape_time(3, 5, 1.0, 0.1, 1.5)
    with pytest.raises(ValueError, match="sigma"):
        isotropic_escape_time(1, 5, 1.0, 10.0)


@pytest.mark.parametrize(("d", "N", "kappa"), [(2, 3, 4.0), (4, 11, 10.0)])
def test_check_g1_and_mutant(d, N, kappa):
    """g1 passes at the setting's d and fails for the mutant flow (Gamma built with N + 1)."""
    setting = lsa.Setting(d=d, N=N, kappa=kappa)
    ok, rows = lc.check_learning_curve(setting)
    assert ok.passed, ok.details
    assert {r["lam"] for r in rows} == {1.0, 0.03, 40.0}
    bad, _ = lc.check_learning_curve(setting, mutant="gamma_N+1")
    assert not bad.passed
    assert bad.error > 1e3 * lc.TOLERANCE
