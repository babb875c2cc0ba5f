"""The full-entry check group (`simulations.checks.full_entry`, `lsa check full-entry`): every row
passes on a small setting, and the documented mutant of each row makes it fail. The landscape
pieces (`simulations.checks.landscape`) are checked against independent computations."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import lsa
from lsa.full_loss import full_population_loss
from simulations.checks import full_entry as fe
from simulations.checks import landscape as ls

SETTING = lsa.Setting(d=2, N=6)


@pytest.fixture(scope="module", autouse=True)
def _x64():
    lsa.set_precision("float64")


def test_fe1_reduced_agreement_and_mutant():
    L, N, key = SETTING.Lambda(), SETTING.N, SETTING.mc_key(fe.TAGS["fe1"])
    assert fe.check_reduced_agreement(L, N, key, 3).passed
    assert not fe.check_reduced_agreement(L, N, key, 3, mutant="gamma_N+1").passed


def test_fe2_zero_gradient_and_mutant():
    L, N, key = SETTING.Lambda(), SETTING.N, SETTING.mc_key(fe.TAGS["fe1"])
    row = fe.check_zero_gradient(L, N, key, 3)
    assert row.passed and row.error == 0.0
    assert not fe.check_zero_gradient(L, N, key, 3, mutant="transposed_blocks").passed


def test_fe3_monte_carlo_and_mutant():
    L, N, key = SETTING.Lambda(), SETTING.N, SETTING.mc_key(fe.TAGS["fe3"])
    sizes = fe.FullEntrySizes(mc_prompts=50_000, mc_batch=25_000)
    rows = fe.check_mc(L, N, key, sizes)
    assert all(r.passed for r in rows)
    # the convention errors are resolved far beyond the threshold
    assert all(abs(r.details["z_dropped_query_term"]) > 2 * sizes.z_max for r in rows)
    assert abs(rows[1].details["z_rho_N_at_test"]) > 2 * sizes.z_max
    assert not any(r.passed for r in fe.check_mc(L, N, key, sizes, mutant="no_query_term"))


def test_fe4_minimum_and_mutant():
    L, N, key = SETTING.Lambda(), SETTING.N, SETTING.mc_key(fe.TAGS["fe4"])
    row, _ = fe.check_minimum(L, N, key, 2)
    assert row.passed and row.simulated - row.predicted >= row.tolerance
    assert not fe.check_minimum(L, N, key, 2, mutant="min_loss_N-1")[0].passed


def test_fe5_full_flow_and_mutant():
    row = fe.check_full_flow(SETTING)
    assert row.passed, row.details
    assert row.details["max_abs_a_b_ignored"] == 0.0
    assert not fe.check_full_flow(SETTING, mutant="gamma_N+1").passed


def test_family_loss_is_the_full_loss_on_the_family():
    """The explicit family loss (derived by hand) against `lsa.full_population_loss` (Wick) at
    random points of the invariant family, on every eigenvector: agreement to round-off."""
    s = lsa.Setting(d=3, N=7)
    Lam, N = s.Lambda(), s.N
    lam, V = np.linalg.eigh(Lam)
    rng = np.random.default_rng(3)
    for k in range(3):
        u, mu, al, be = rng.normal(), rng.normal(size=3), rng.normal(), rng.normal()
        Wp, Wk = np.zeros((4, 4)), np.zeros((4, 4))
        Wp[-1, -1], Wp[-1, :-1] = u, al * V[:, k]
        Wk[:-1, :-1], Wk[-1, :-1] = (V * mu) @ V.T, be * V[:, k]
        Wp[0, 1], Wk[1, -1] = 2.0, -1.0  # ignored entries
        x = np.concatenate([u * mu, [al * be], [math.log(abs(al / u))]])
        fam = float(ls.family_loss(x, lam, float(N), k))
        full = float(full_population_loss(Wp, Wk, Lam, N))
        assert abs(fam - full) <= 1e-13 * full


def test_rank_one_stability_matches_the_hessian():
    """S < 1 exactly when the rank-one point is a certified minimum (else one negative
    eigenvalue, in the family directions)."""
    for Lam, N in ((lsa.Setting(d=2, N=20).Lambda(), 20), (np.eye(3), 20)):
        r1 = ls.rank_one_point(Lam, N)
        cert = ls.certify_point(r1["W_PV"], r1["W_KQ"], Lam, N)
        assert cert["grad_norm"] <= 1e-12
        assert cert["is_minimum"] == (r1["stability_S"] < 1.0)
        if r1["stability_S"] > 1.0:
            assert cert["n_negative"] == 1


def _closed_form_points(instances):
    """Certified closed-form spurious points as limit-point records (as the suite writes them)."""
    closed = {i.name: ls.spurious_closed_form(i.Lambda, i.N) for i in instances}
    points = []
    for i in instances:
        c = closed[i.name]
        cert = ls.certify_point(c["W_PV"], c["W_KQ"], i.Lambda, i.N)
        rec = {"instance": i.name, "class": "spurious", "start": 0}
        rec |= {k: v for k, v in cert.items() if k not in ("W_PV", "W_KQ")}
        rec |= ls.closed_form_distance(cert, c, i.Lambda)
        points.append(rec)
    return closed, points


def test_fl1_fl2_fl3_and_mutants():
    insts = [
        ls.Instance("d2", lsa.Setting(d=2, N=20).Lambda(), 20),
        ls.Instance("iso", np.eye(3), 20),
    ]
    closed, points = _closed_form_points(insts)
    assert closed["d2"]["kind"] == "rank_one" and closed["iso"]["kind"] == "dressed"
    assert [p["n_zero"] for p in points] == [1, 3]  # scaling; scaling + (d - 1) rotations
    c = closed["d2"]
    # fl1, and its mutant: the certificate on all entries
    assert fe.check_certificates(points, entries_mutant=None).passed
    assert not fe.check_certificates(points, entries_mutant=(insts[0], c["W_PV"], c["W_KQ"])).passed
    # fl2, and its mutant: the closed form on the bottom eigenvector
    assert fe.check_closed_form(points, closed, insts).passed
    assert not fe.check_closed_form(points, closed, insts, mutant="bottom_eigenvector").passed
    # fl3, and its mutant: the spurious value computed with N + 1
    rows = [
        {"instance": i.name, "structure": "balanced", "scale_over_sigma_max": 1.0, "n_starts": 1,
         "n_global": 0, "n_spurious": 1, "n_other": 0, "n_failed": 0, "frac_spurious": 1.0,
         "frac_spurious_se": 0.0}
        for i in insts
    ]  # fmt: skip
    sizes = fe.FullEntrySizes()
    assert fe.check_basins(rows, sizes, points=points, instances=insts).passed
    assert not fe.check_basins(
        rows, sizes, mutant="spurious_N+1", points=points, instances=insts
    ).passed


def test_starts_have_the_requested_structure():
    inst = ls.Instance("d2", SETTING.Lambda(), SETTING.N)
    key = jax.random.PRNGKey(0)
    Wp, Wk = ls.make_start("unbalanced", 0.3, inst, key)
    assert np.isclose(np.linalg.norm(Wp), 0.6) and np.isclose(np.linalg.norm(Wk), 0.15)
    Wp, Wk = ls.make_start("paper", 0.3, inst, key)
    assert Wp[-1, :-1].tolist() == [0.0, 0.0] and Wk[-1, :-1].tolist() == [0.0, 0.0]
    assert np.isclose(Wp[-1, -1], 0.3) and np.isclose(np.linalg.norm(Wk), 0.3)
