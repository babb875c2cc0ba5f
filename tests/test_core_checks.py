"""Mutation tests of the core checks a-f: each check passes on the right ingredients and fails
on a plausible wrong one (the mutants named in the checks' docstrings), on tiny sizes."""

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import scipy.integrate

import lsa
import theory
from lsa.flow import gradient_flow
from simulations.checks import core
from simulations.checks.core_empirical import (
    EmpiricalSizes,
    certify_minimum,
    check_empirical,
    prompt_set_loss,
)
from simulations.checks.core_flow import check_balance, check_flow_limit, check_lyapunov
from simulations.checks.core_map import check_prediction_identity, check_risk_mc

SETTING = lsa.Setting(d=3, N=6, kappa=5.0, seed=1)
M_TEST = 12  # != N
M_E = 24  # the Monte Carlo check's test length


@pytest.fixture(scope="module")
def trained():
    return core.train(SETTING)


def _passed(rows):
    return {r.id: r.passed for r in rows}


def reduced_ode(Lambda, N, u0, U0, T, f_U=1.0, f_u=1.0, n=200):
    """ZFB Lemma 5.2 (theory.md §4.2) by scipy DOP853, with factors on the two right-hand sides
    (1, 1: the gradient flow); a stand-in for a `FlowResult` with `ts, u, loss, balance`."""
    d = Lambda.shape[0]
    G = theory.gamma(Lambda, N)
    L2 = Lambda @ Lambda

    def vf(t, y):
        u, U = y[0], y[1:].reshape(d, d)
        dU = -(u**2) * G @ Lambda @ U @ Lambda + u * L2
        du = -(u * np.trace(G @ Lambda @ U @ Lambda @ U.T) - np.trace(L2 @ U.T))
        return np.concatenate([[f_u * du], f_U * dU.ravel()])

    ts = np.concatenate([[0.0], np.geomspace(1e-4 * T, T, n - 1)])
    sol = scipy.integrate.solve_ivp(
        vf, (0, T), np.concatenate([[u0], U0.ravel()]), "DOP853", ts, rtol=1e-12, atol=1e-14
    )
    u, U = sol.y[0], sol.y[1:].T.reshape(-1, d, d)
    GL = np.einsum("ij,tjk,kl,tml->tim", G @ Lambda, U, Lambda, U)
    loss = 0.5 * (u**2 * np.trace(GL, axis1=1, axis2=2) - 2 * u * np.einsum("ij,tij->t", L2, U))
    loss = loss + 0.5 * np.trace(Lambda)
    return SimpleNamespace(ts=sol.t, u=u, loss=loss, balance=u**2 - np.sum(U**2, axis=(1, 2)))


# ----------------------------------------------------------------------------------------------
# a-c


def test_flow_limit_and_mutants(trained):
    problem, res = trained
    L, N = problem.Lambda, SETTING.N
    assert all(_passed(check_flow_limit(L, N, res)).values())
    # Gamma built with M: the flow trained with the test length
    res_M = gradient_flow(L, M_TEST, problem.init)
    rows = check_flow_limit(L, N, res_M)
    assert not any(_passed(rows).values()), [r.error for r in rows]
    # the loss reported without its 1/2
    rows = check_flow_limit(L, N, dataclasses.replace(res, loss=2 * res.loss))
    assert _passed(rows) == {"a1": True, "a2": True, "a3": True, "a4": False}


def test_balance_and_lyapunov_mutants(trained):
    problem, res = trained
    L, N, sigma, Theta = problem.Lambda, SETTING.N, problem.sigma, SETTING.Theta()
    assert check_balance(res).passed
    assert all(_passed(check_lyapunov(L, N, sigma, Theta, res)).values())
    u0, U0 = float(problem.init.u), np.asarray(problem.init.U)
    T = res.t_final
    # the stand-in integrator itself passes b and c ...
    ok = reduced_ode(L, N, u0, U0, T)
    assert check_balance(ok).passed
    assert all(_passed(check_lyapunov(L, N, sigma, Theta, ok)).values())
    # ... a wrong factor in the vector field (dU/dt doubled) breaks the balance,
    assert not check_balance(reduced_ode(L, N, u0, U0, T, f_U=2.0)).passed
    # a sign error in du/dt makes the loss rise and u fall below u_min,
    rows = _passed(check_lyapunov(L, N, sigma, Theta, reduced_ode(L, N, u0, U0, 0.2 * T, f_u=-1)))
    assert not rows["c1"] and not rows["c3"], rows
    # and the loss reported without its 1/2 breaks l~(0) < 0.
    rows = _passed(check_lyapunov(L, N, sigma, Theta, dataclasses.replace(res, loss=2 * res.loss)))
    assert not rows["c2"], rows


def test_lyapunov_envelope_mutant(trained, monkeypatch):
    """c4 with min L taken without its tr(Lambda)/2 (the minimum of l~): the gap never closes."""
    problem, res = trained
    L, N, sigma, Theta = problem.Lambda, SETTING.N, problem.sigma, SETTING.Theta()
    min_loss = theory.min_loss
    monkeypatch.setattr(theory, "min_loss", lambda Lam, n: min_loss(Lam, n) - 0.5 * np.trace(Lam))
    rows = _passed(check_lyapunov(L, N, sigma, Theta, res))
    assert not rows["c4"], rows


# ----------------------------------------------------------------------------------------------
# d-e


def test_prediction_identity_and_mutants(key):
    L, N = SETTING.Lambda(), SETTING.N
    Ms = (2, M_TEST)
    assert all(_passed(check_prediction_identity(L, N, Ms, key, 32)).values())
    # Gamma built with M
    W_M = theory.limit_weights(L, M_TEST)
    rows = check_prediction_identity(L, N, (M_TEST,), key, 32, weights=W_M)
    assert not rows[0].passed and rows[0].error > 1e-3
    # rho = N: the map normalised by N
    rows = check_prediction_identity(
        L, N, (M_TEST,), key, 32, full_map=lambda E, P, K: lsa.predict(E, P, K) * M_TEST / N
    )
    assert not rows[0].passed and rows[0].error > 0.5
    # a query term the formula drops: a != 0
    W_PV, W_KQ = theory.limit_weights(L, N)
    W_PV = W_PV.copy()
    W_PV[-1, :-1] = 0.05
    rows = check_prediction_identity(L, N, (M_TEST,), key, 32, weights=(W_PV, W_KQ))
    assert not rows[0].passed and rows[0].details["err_query_column_deleted"] > 1e-3


def test_risk_mc_and_mutants(trained, monkeypatch):
    """M = 24 = 4N: there Gamma(M) differs enough from Gamma(N) for 20000 prompts."""
    problem, res = trained
    L, N = problem.Lambda, SETTING.N
    key = SETTING.mc_key(99)
    n = 20_000

    def run(W_PV, W_KQ):
        rows, _ = check_risk_mc(L, N, W_PV, W_KQ, (M_E,), n, key, 4.0, batch=10_000)
        return rows[0]

    row = run(res.W_PV, res.W_KQ)
    assert row.passed, row
    for name in ("z_if_rho_N", "z_if_Gamma_M", "z_if_half"):
        assert abs(row.details[name]) > 4, (name, row.details)
    # Gamma built with M
    W_PV, W_KQ = theory.limit_weights(L, M_E)
    assert not run(W_PV, W_KQ).passed
    # rho = N: every prediction times M/N
    assert not run(res.W_PV * (M_E / N), res.W_KQ).passed
    # the closed form with the loss's 1/2
    risk = theory.risk
    monkeypatch.setattr(theory, "risk", lambda *a: 0.5 * risk(*a))
    assert not run(res.W_PV, res.W_KQ).passed


# ----------------------------------------------------------------------------------------------
# f

TINY = EmpiricalSizes(B_values=(500, 2000, 8000, 32000), seeds=3, n_dense=1, chunk=500)


@pytest.mark.slow
def test_empirical_and_mutants(trained, monkeypatch):
    problem, res = trained
    L, N = problem.Lambda, SETTING.N
    key = SETTING.mc_key(98)
    rows, _ = check_empirical(L, N, problem.init, res, key, TINY)
    assert all(_passed(rows).values()), [(r.id, r.error, r.details) for r in rows]
    # f1: a reduced flow with a wrong factor in its vector field (time scaled by 2), and
    # f3: Gamma built with another length (2N)
    gamma = theory.gamma
    monkeypatch.setattr(theory, "gamma", lambda Lam, n: gamma(Lam, 2 * n))
    slow = dataclasses.replace(res, ts=2.0 * res.ts)
    got = _passed(check_empirical(L, N, problem.init, slow, key, TINY)[0])
    assert not got["f1"] and not got["f3"], got
    monkeypatch.undo()
    # f2: prompt sets without antithetic pairs
    got = _passed(check_empirical(L, N, problem.init, res, key, TINY, antithetic=False)[0])
    assert not got["f2"], got


def test_certificate_on_prediction_entries(trained):
    """f4's certificate: a minimum on the prediction's entries; not on all entries (the ignored
    ones add zero eigenvalues) and not at a saddle (the origin)."""
    problem, res = trained
    L, N = problem.Lambda, SETTING.N
    q = prompt_set_loss(L, N, 500)(SETTING.mc_key(97), 1000)
    emp = lsa.empirical_flow(q, *problem.init.weights(), t_end=2 * res.t_final)
    good = certify_minimum(emp.W_PV, emp.W_KQ, q)
    assert good["is_minimum"], good
    assert not certify_minimum(emp.W_PV, emp.W_KQ, q, entries="all")["is_minimum"]
    D = L.shape[0] + 1
    Z = np.zeros((D, D))
    assert not certify_minimum(Z, Z, q)["is_minimum"]


def test_core_needs_float64():
    lsa.set_precision("float32")
    try:
        with pytest.raises(RuntimeError, match="float64"):
            core.run_core_checks(SETTING, core.QUICK)
    finally:
        lsa.set_precision("float64")


def test_sizes_validated():
    with pytest.raises(ValueError, match="B_values"):
        EmpiricalSizes(B_values=(1000, 2000))
    with pytest.raises(ValueError, match="seeds"):
        EmpiricalSizes(seeds=1)
    with pytest.raises(ValueError, match="M_values"):
        core.CoreSizes(M_values=(0,))
    assert jax.config.read("jax_enable_x64")


@pytest.mark.parametrize("trace", [0.03, 300.0])
def test_balance_check_does_not_depend_on_units(trace):
    """Check b bounds the drift relative to max u^2, so it passes for the same setting with
    tr Lambda far from d (u^2 scales like 1/c under Lambda -> c Lambda)."""
    s = SETTING.replace(trace=trace)
    p = s.build()
    res = lsa.flow.gradient_flow(p.Lambda, s.N, p.init)
    row = check_balance(res)
    assert row.passed, row.error
    assert row.details["max_u2"] == pytest.approx(float(np.max(res.u**2)))
