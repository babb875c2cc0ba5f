"""Tests of `lsa.batch`, the vectorised ESDIRK solver of many reduced flows [ZFB Lemma 5.2]:
its tableau against diffrax's Kvaerno5, its end points against `lsa.gradient_flow` and against
`Gamma^{-1}` (Theorem 4.1, eq. 4.1) where it sums the off-diagonal part with exp-sum tables
(d >= 21), its independence of the units of Lambda, and loud per-member failures.

References are independent of the code under test: diffrax's own tableau, `Gamma` built here
from its definition, `numpy.linalg.inv`.
"""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import lsa
from lsa import _esdirk, batch
from lsa.flow import FlowError, FlowOptions, gradient_flow


def _haar(rng, d):
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))[None, :]


def _covariance(rng, d, kappa, trace):
    """A Haar-rotated covariance with condition number `kappa` and the given trace."""
    lam = np.exp(rng.uniform(0.0, np.log(kappa), d))
    lam[:2] = [1.0, kappa][: min(d, 2)]
    lam *= trace / lam.sum()
    Q = _haar(rng, d)
    L = (Q * lam[None, :]) @ Q.T
    return 0.5 * (L + L.T)


def _theta_outer(rng, d):
    Z = rng.standard_normal((d, d))
    TT = Z @ Z.T
    return TT / np.linalg.norm(TT)


def _gamma_inv(L, N):
    """Gamma^{-1}, Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I [ZFB Thm 4.1], built here."""
    d = L.shape[0]
    return np.linalg.inv((1.0 + 1.0 / N) * L + np.trace(L) / N * np.eye(d))


def _rel(A, B):
    return float(np.linalg.norm(A - B) / np.linalg.norm(B))


def _init(L, N, fraction, TT):
    sigma = fraction * lsa.sigma_bound(L, N)
    return lsa.Init(u=jnp.asarray(sigma), U=jnp.asarray(sigma * TT))


# ----------------------------------------------------------------------------------------
# the integrator's coefficients


def test_tableau_is_diffrax_kvaerno5():
    """The hand-written ESDIRK is Kvaerno 5(4) exactly as diffrax has it: stage matrix,
    abscissae, solution and error weights, stage predictors, the diagonal, stiff accuracy."""
    tab = diffrax.Kvaerno5().tableau
    assert tab.num_stages == len(_esdirk._A) == len(_esdirk._C) == 7
    assert tab.a_diagonal[0] == 0.0  # explicit first stage
    np.testing.assert_allclose(tab.a_diagonal[1:], _esdirk._G, rtol=0, atol=1e-16)
    np.testing.assert_allclose(_esdirk._C, np.concatenate([[0.0], tab.c]), rtol=0, atol=1e-15)
    for i in range(1, 7):
        np.testing.assert_allclose(_esdirk._A[i], tab.a_lower[i - 1], rtol=0, atol=1e-15)
        np.testing.assert_allclose(_esdirk._PRED[i], tab.a_predictor[i - 1], rtol=0, atol=1e-15)
    b_sol = np.array([*_esdirk._A[6], _esdirk._G])
    np.testing.assert_allclose(b_sol, tab.b_sol, rtol=0, atol=1e-15)
    np.testing.assert_allclose(_esdirk._B_ERR, tab.b_error, rtol=0, atol=1e-15)
    # stiffly accurate (b_sol is the last row of A: y_new is the last stage) and FSAL; the
    # integrator relies on both (g(y_new) = k_7)
    np.testing.assert_array_equal(tab.b_sol, [*tab.a_lower[5], tab.a_diagonal[6]])
    assert tab.fsal
    # each row of A sums to its abscissa (with the diagonal)
    for i in range(1, 7):
        assert sum(_esdirk._A[i]) + _esdirk._G == pytest.approx(_esdirk._C[i], abs=1e-14)


# ----------------------------------------------------------------------------------------
# against gradient_flow and Gamma^{-1} where the exp-sum tables are used


def test_batch_matches_gradient_flow_with_tables_d21():
    """d = 21 (420 off-diagonal terms > DIRECT_MAX_TERMS: the batch solver uses the exp-sum
    tables), random rotated Lambda of different conditioning and trace, different N and sigma:
    batch and single solves agree on u U to 1e-8, and both equal Gamma^{-1} to 1e-8. (The
    condition numbers keep every table at 64 bins, so `gradient_flow` compiles once.)"""
    d = 21
    assert d * d - d > batch.DIRECT_MAX_TERMS
    rng = np.random.default_rng(2024)
    cases = [(_covariance(rng, d, k, tr), n, f) for k, tr, n, f in
             [(30.0, 21.0, 20, 0.5), (40.0, 3.0, 5, 0.05), (8.0, 400.0, 60, 0.3)]]  # fmt: skip
    TT = _theta_outer(rng, d)
    inits = [_init(L, n, f, TT) for L, n, f in cases]
    res = batch.batch_gradient_flow(
        np.stack([c[0] for c in cases]), [c[1] for c in cases], inits, pad_to=4
    )
    assert res.stop_reason == ["converged"] * 3
    for b, ((L, n, _), init) in enumerate(zip(cases, inits, strict=True)):
        Gi = _gamma_inv(L, n)
        assert _rel(res.product[b], Gi) <= 1e-8
        ref = gradient_flow(L, n, init)
        assert ref.stop_reason == "converged"
        assert _rel(ref.product, Gi) <= 1e-8
        assert _rel(res.product[b], ref.product) <= 1e-8
        m = res.member(b)
        assert m.u_final == res.u_final[b] and m.stop_reason == "converged"
        assert abs(m.loss[-1] - ref.loss[-1]) <= 1e-9 * abs(ref.loss[-1])
        assert res.loss_final[b] == m.loss[-1]
        # the last state is the end point for a converged member
        assert res.last_u[b] == res.u_final[b]
        scale = np.abs(res.U_final[b]).max()
        np.testing.assert_allclose(res.last_U(b), res.U_final[b], rtol=0, atol=1e-14 * scale)


def test_batch_is_invariant_to_units():
    """Lambda -> c Lambda (same Theta, sigma the same fraction of sigma_max) is an exact
    reparametrisation, u(t) = c^{-1/2} u~(c^2 t): the step counts agree and the end points map."""
    d, N = 3, 1
    rng = np.random.default_rng(7)
    L = _covariance(rng, d, 20.0, float(d))
    TT = _theta_outer(rng, d)
    cs = [1.0, 1e-3, 300.0, 1e4]
    Ls = np.stack([c * L for c in cs])
    res = batch.batch_gradient_flow(
        Ls, N, [_init(Lc, N, 0.02, TT) for Lc in Ls], options=_OPTS, pad_to=4
    )
    assert all(res.ok)
    steps = res.n_accepted + res.n_rejected
    assert np.max(np.abs(steps - steps[0])) <= 0.05 * steps[0]
    for b, c in enumerate(cs):
        assert _rel(res.product[b], _gamma_inv(Ls[b], N)) <= 1e-8
        assert res.u_final[b] * np.sqrt(c) == pytest.approx(res.u_final[0], rel=1e-9)
        # the stopping rule fires at a step, which round-off in the units can move slightly
        assert res.t_final[b] * c**2 == pytest.approx(res.t_final[0], rel=1e-3)


# ----------------------------------------------------------------------------------------
# failures are loud


_OPTS = FlowOptions(n_save=60)  # the small tests share one compiled solve (d = 3, 4 lanes)


def _small_problem():
    rng = np.random.default_rng(3)
    L = _covariance(rng, 3, 4.0, 3.0)
    return L, 10, _init(L, 10, 0.05, _theta_outer(rng, 3))


def test_max_steps_is_reported_and_member_raises():
    L, N, init = _small_problem()
    res = batch.batch_gradient_flow(
        np.stack([L, L]), N, [init, init], options=FlowOptions(n_save=60, max_steps=5), pad_to=4
    )
    assert res.stop_reason == ["max_steps", "max_steps"]
    assert batch.STATUS[int(res.status[0])] == "max_steps"
    assert not res.ok.any()
    for field in (res.u_final, res.t_final, res.loss_final, res.U_final, res.product):
        assert np.all(np.isnan(field))
    # the last state is kept for diagnosis
    assert np.all(np.isfinite(res.last_u)) and np.all(res.last_u > 0)
    assert np.all(res.n_accepted + res.n_rejected == 5)
    with pytest.raises(FlowError, match="max_steps") as exc:
        res.member(0)
    diag = exc.value.diagnostics
    assert exc.value.status == "max_steps" and diag["member"] == 0
    assert np.all(np.isfinite(diag["last_U"])) and diag["last_u"] == res.last_u[0]


def test_horizon_is_named():
    L, N, init = _small_problem()
    res = batch.batch_gradient_flow(
        L[None], N, [init], options=FlowOptions(n_save=60, t_max=0.5), pad_to=4
    )
    assert res.stop_reason == ["horizon"]
    assert np.isnan(res.u_final[0]) and np.isfinite(res.last_u[0])
    with pytest.raises(FlowError, match="horizon"):
        res.member(0)


def test_rejection_causes_are_named():
    """A stalled lane (steps rejected until the step size underflows) is reported with the
    cause of its rejections, in this order: non-finite trial state or error, u <= 0, failed
    Newton iteration; only plain error-test rejections are `step_size_underflow`."""
    y = jnp.array([[0.1, 0.2, 0.3, 1.0]] * 5)
    y = y.at[0, 0].set(jnp.nan).at[1, 2].set(-0.5).at[4, 2].set(jnp.inf)
    trial = _esdirk._Trial(
        y=y,
        g=jnp.zeros_like(y),
        err=jnp.array([0.5, 2.0, 2.0, 2.0, 2.0]),
        newton_ok=jnp.array([True, False, False, True, True]),
    )
    names = [batch.STATUS[int(c)] for c in _esdirk._rejection_cause(trial)]
    assert names == [
        "non_finite",
        "u_nonpositive",
        "newton_failure",
        "step_size_underflow",
        "non_finite",
    ]


def test_status_codes_are_distinct_and_named():
    names = list(batch.STATUS.values())
    assert len(set(names)) == len(names)
    for cause in ("converged", "max_steps", "horizon", "non_finite", "u_nonpositive",
                  "newton_failure", "save_grid_exhausted"):  # fmt: skip
        assert cause in names
    assert "step_size_underflow" in names  # only for error-test rejections


def test_batch_uses_eigenmethod_defaults():
    L, N, init = _small_problem()
    res = batch.batch_gradient_flow(L[None], N, [init], options=_OPTS, pad_to=4)
    assert res.stats["rtol"] == lsa.EigenMethod().rtol
