"""Tests of `lsa.full_flow.full_population_flow`: gradient flow of the exact population loss over
all `2 (d+1)^2` entries (theory.md §5, §14 row 14).

References: the reduced flow `lsa.gradient_flow` (an independent solver in Lambda's eigenbasis)
from Assumption 3.3 at common times; scipy's Radau on the same vector field from a dense start
(an independent integrator); the exact zeros of a, b and the unused entries; the unit
reparametrisation `Lambda -> c Lambda`, `W -> c^{-1/2} W`, `t -> t / c^2` (identical step counts);
monotone loss along any gradient flow; forced failures with their status.
"""

import jax
import numpy as np
import pytest
import scipy.integrate

import lsa
from lsa.flow import FlowError, FlowOptions
from lsa.full_flow import full_population_flow
from lsa.full_loss import full_loss_grad_theta, pack_params


def _lam(d: int, kappa: float, trace: float, seed: int) -> np.ndarray:
    return np.asarray(lsa.spread_covariance(d, kappa, jax.random.PRNGKey(seed), trace=trace))


# ----------------------------------------------------------------------------------------------
# row 14: from Assumption 3.3 the full flow is the reduced flow; a, b, unused entries stay 0


@pytest.mark.parametrize(
    ("d", "N", "kappa", "trace", "seed"),
    # d = 5 at tr Lambda = d is check fe5 (tests/test_full_entry_checks.py)
    [(2, 3, 5.0, 0.05, 1), (4, 7, 30.0, 50.0, 2)],
)
def test_equals_reduced_flow_from_paper_init(d, N, kappa, trace, seed):
    Lam = _lam(d, kappa, trace, seed)
    init = lsa.paper_init(Lam, N, sigma_fraction=0.4, key=jax.random.PRNGKey(100 + seed))
    W_PV0, W_KQ0 = (np.asarray(w) for w in init.weights())
    T = lsa.gradient_flow(Lam, N, init).t_final  # the reduced flow's convergence time
    red = lsa.gradient_flow(Lam, N, init, options=FlowOptions(t_end=T, n_save=60))
    full = full_population_flow(Lam, N, W_PV0, W_KQ0, t_end=T, ts=red.ts[red.ts <= T])
    # common save times (the full solve may stop by its own rule a little before T)
    common = np.intersect1d(full.ts, red.ts)
    assert common.size >= 40
    u_scale = float(np.max(np.abs(red.u)))
    worst_u = worst_U = 0.0
    for t in common:
        i, j = int(np.nonzero(red.ts == t)[0][0]), int(np.nonzero(full.ts == t)[0][0])
        worst_u = max(worst_u, abs(full.reduced.u[j] - red.u[i]) / u_scale)
        worst_U = max(worst_U, float(np.max(np.abs(full.reduced.U[j] - red.U_at(i)))) / u_scale)
    print(f"d={d}: max rel error u {worst_u:.2e}, U {worst_U:.2e}; steps {full.stats['num_steps']}")
    # both solves at rtol <= 1e-10: agreement to 1e-7 of the scale allows a global error
    # amplification of 1000 through the plateau escape
    assert worst_u <= 1e-7 and worst_U <= 1e-7
    # the end point: u U = Gamma^{-1} as the reduced flow found it
    np.testing.assert_allclose(
        full.reduced.u[-1] * full.reduced.U[-1], red.product, rtol=0, atol=1e-7 * u_scale**2
    )
    # a, b and every entry the prediction ignores: exactly 0 at every saved time
    assert np.all(full.reduced.a == 0.0) and np.all(full.reduced.b == 0.0)
    assert np.all(full.W_PV_traj[:, :-1, :] == 0.0) and np.all(full.W_KQ_traj[:, :, -1] == 0.0)
    # the loss is the reduced loss
    np.testing.assert_allclose(full.loss[-1], red.loss[-1], rtol=1e-9)


def test_unused_entries_keep_their_start(rng):
    d, N = 3, 4
    Lam = _lam(d, 4.0, 3.0, 5)
    init = lsa.paper_init(Lam, N, sigma_fraction=0.5, key=jax.random.PRNGKey(4))
    W_PV0, W_KQ0 = (np.array(w) for w in init.weights())
    W_PV0[:-1, :] = rng.standard_normal((d, d + 1))
    W_KQ0[:, -1] = rng.standard_normal(d + 1)
    res = full_population_flow(Lam, N, W_PV0, W_KQ0)
    assert np.all(res.W_PV_traj[:, :-1, :] == W_PV0[:-1, :])
    assert np.all(res.W_KQ_traj[:, :, -1] == W_KQ0[:, -1])
    assert np.all(res.reduced.a == 0.0) and np.all(res.reduced.b == 0.0)
    assert res.stop_reason == "converged" and res.status == 1


# ----------------------------------------------------------------------------------------------
# dense starts: an independent integrator; monotone loss; stationarity at the end


@pytest.mark.parametrize(("d", "N", "seed"), [(3, 5, 12)])
def test_dense_start_against_scipy_radau(d, N, seed):
    Lam = _lam(d, 8.0, 20.0, seed)
    r = np.random.default_rng(seed)
    scale = np.sqrt(d / np.trace(Lam))
    W_PV0, W_KQ0 = 0.5 * scale * r.standard_normal((2, d + 1, d + 1))
    t_end = 0.3
    res = full_population_flow(Lam, N, W_PV0, W_KQ0, t_end=t_end, ts=np.linspace(0, t_end, 7))

    def f(t, th):
        return -np.asarray(full_loss_grad_theta(th, Lam, N))

    ref = scipy.integrate.solve_ivp(
        f, (0.0, t_end), np.asarray(pack_params(W_PV0, W_KQ0)), method="Radau",
        t_eval=res.ts, rtol=1e-11, atol=1e-13 * scale,
    )  # fmt: skip
    assert ref.success
    T = len(res.ts)
    got = np.concatenate([res.W_PV_traj.reshape(T, -1), res.W_KQ_traj.reshape(T, -1)], axis=1)
    err = float(np.max(np.abs(got - ref.y.T))) / float(np.max(np.abs(ref.y)))
    print(f"d={d}: max rel difference to Radau {err:.2e}")
    assert err <= 1e-8
    assert np.all(np.diff(res.loss) <= 1e-12 * res.loss[0])  # gradient flow: L non-increasing


def test_dense_start_converges_to_a_critical_point():
    d, N = 3, 3
    Lam = _lam(d, 10.0, 0.3, 21)
    r = np.random.default_rng(21)
    scale = np.sqrt(d / np.trace(Lam))
    W_PV0, W_KQ0 = 0.4 * scale * r.standard_normal((2, d + 1, d + 1))
    res = full_population_flow(Lam, N, W_PV0, W_KQ0, rtol=1e-10, eps=1e-10)
    assert res.stop_reason == "converged"
    g = np.asarray(full_loss_grad_theta(pack_params(res.W_PV, res.W_KQ), Lam, N))
    g0 = np.asarray(full_loss_grad_theta(pack_params(W_PV0, W_KQ0), Lam, N))
    assert np.max(np.abs(g)) <= 1e-8 * np.max(np.abs(g0))
    assert np.all(np.diff(res.loss) <= 1e-12 * abs(res.loss[0]))
    # the balance ||r||^2 - ||K||_F^2 (scaling symmetry) is conserved
    bal0 = np.sum(W_PV0[-1] ** 2) - np.sum(W_KQ0[:, :-1] ** 2)
    bal = np.sum(res.W_PV[-1] ** 2) - np.sum(res.W_KQ[:, :-1] ** 2)
    assert bal == pytest.approx(bal0, rel=1e-7, abs=1e-9 * scale**2)


# ----------------------------------------------------------------------------------------------
# units: Lambda -> c Lambda is an exact reparametrisation


@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_units_invariance(c):
    d, N = 4, 6
    Lam = _lam(d, 20.0, 4.0, 31)
    r = np.random.default_rng(31)
    W_PV0, W_KQ0 = 0.3 * r.standard_normal((2, d + 1, d + 1))
    a = full_population_flow(Lam, N, W_PV0, W_KQ0)
    b = full_population_flow(c * Lam, N, W_PV0 / np.sqrt(c), W_KQ0 / np.sqrt(c))
    assert a.stats["num_steps"] == b.stats["num_steps"]
    assert a.stats["num_rejected_steps"] == b.stats["num_rejected_steps"]
    np.testing.assert_allclose(b.W_PV * np.sqrt(c), a.W_PV, rtol=0, atol=1e-9)
    np.testing.assert_allclose(b.W_KQ * np.sqrt(c), a.W_KQ, rtol=0, atol=1e-9)
    assert b.loss[-1] / c == pytest.approx(a.loss[-1], rel=1e-10)
    n = min(len(a.ts), len(b.ts)) - 1  # the save grids agree (the end may differ in round-off)
    np.testing.assert_allclose(b.ts[:n] * c**2, a.ts[:n], rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# failures and bad input


def _setup(d=3, N=4):
    Lam = _lam(d, 5.0, 3.0, 41)
    init = lsa.paper_init(Lam, N, sigma_fraction=0.5, key=jax.random.PRNGKey(41))
    W_PV0, W_KQ0 = (np.asarray(w) for w in init.weights())
    return Lam, N, W_PV0, W_KQ0


def test_max_steps_raises_with_status():
    Lam, N, W_PV0, W_KQ0 = _setup()
    with pytest.raises(FlowError) as exc:
        full_population_flow(Lam, N, W_PV0, W_KQ0, max_steps=5)
    assert exc.value.status == "max_steps"
    assert exc.value.diagnostics["num_steps"] == 5
    assert exc.value.diagnostics["last_state"].shape == (16,)


def test_horizon_raises_with_status():
    Lam, N, W_PV0, W_KQ0 = _setup()
    with pytest.raises(FlowError) as exc:
        full_population_flow(Lam, N, W_PV0, W_KQ0, margin=1e-3)
    assert exc.value.status == "horizon"


def test_t_end_before_convergence():
    Lam, N, W_PV0, W_KQ0 = _setup()
    res = full_population_flow(Lam, N, W_PV0, W_KQ0, t_end=0.01)
    assert res.stop_reason == "t_end" and res.status == 2 and res.t_final == 0.01


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"W_PV0": np.full((4, 4), np.nan)}, "W_PV0"),
        ({"W_KQ0": np.zeros((4, 3))}, "W_KQ0"),
        ({"W_PV0": np.zeros((3, 3))}, "W_PV0"),
        ({"Lambda": -np.eye(3)}, "positive definite"),
        ({"N": 0}, "N"),
        ({"t_end": -1.0}, "t_end"),
        ({"rtol": 0.0}, "rtol"),
        ({"eps": 2.0}, "eps"),
        ({"n_save": 1}, "n_save"),
        ({"max_steps": 0}, "max_steps"),
        ({"ts": [0.0, 1.0]}, "t_end"),
        ({"ts": [0.5, 0.1], "t_end": 1.0}, "increasing"),
    ],
)
def test_bad_input(change, match):
    Lam, N, W_PV0, W_KQ0 = _setup()
    kw = {"Lambda": Lam, "N": N, "W_PV0": W_PV0, "W_KQ0": W_KQ0, **change}
    pos = [kw.pop(k) for k in ("Lambda", "N", "W_PV0", "W_KQ0")]
    with pytest.raises(ValueError, match=match):
        full_population_flow(*pos, **kw)
