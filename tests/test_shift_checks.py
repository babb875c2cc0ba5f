"""The distribution-shift suite (`simulations.checks.shift`, `lsa shift`): it runs, passes, writes
its figures and tables, and its z-checks have the power to catch a wrong closed form."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsa
import theory
from simulations import cli
from simulations.checks import shift as sc
from simulations.icl.montecarlo import mc_means

#: A tiny setting: the same d and N for every test below, so compiled kernels are reused.
TINY = lsa.Setting(d=3, N=8, seed=3)
FIGURES = ("shift_risk_vs_M.png", "covariate_scale.png", "risk_vs_N.png", "garg_panels.png")
TABLES = (
    "checks.csv",
    "risk_vs_M_theory.csv",
    "risk_vs_M_mc.csv",
    "covariate_scale_theory.csv",
    "covariate_scale_mc.csv",
    "risk_vs_N_theory.csv",
    "risk_vs_N_mc.csv",
    "garg.csv",
)


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("shift")
    checks, figures, tables = sc.run_suite(TINY, out, quick=True, log=lambda _: None)
    return out, checks, figures, tables


def test_quick_suite_passes_and_writes(quick_suite) -> None:  # type: ignore[no-untyped-def]
    out, checks, figures, tables = quick_suite
    ids = [c.id for c in checks]
    assert ids == [f"s{i}" for i in range(1, 21)]
    failed = [(c.id, c.statement, c.error) for c in checks if not c.passed]
    assert not failed, failed
    assert {f.name for f in figures} == set(FIGURES)
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000
    for name in TABLES:
        assert (out / "shift" / name).stat().st_size > 0
    assert {"checks", "garg", "timings"} <= set(tables)
    # z-rows record their standard error and sample size; trained-layer rows the power against
    # the rho = N convention error.
    for c in checks:
        if c.kind == "z":
            assert c.details["se"] > 0 and c.details["n"] >= 1_000
    assert all("z_if_rho_N" in c.details for c in checks[:9])
    # s13-s15 compare theory with theory, and say so
    assert all("(theory vs theory)" in c.statement for c in checks[12:15])
    assert not any("theory vs theory" in c.statement for c in checks[:12] + checks[15:])


def test_lsa_shift_cli_quick(quick_suite, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`lsa shift` end to end: arguments -> `run_suite` -> report, JSON and exit status. The suite
    itself ran in the fixture (same setting and sizes); it is not run a second time here."""
    _, checks, figures, tables = quick_suite
    seen = {}

    def fake_run_suite(setting, out, quick=False, log=print):  # type: ignore[no-untyped-def]
        seen.update(setting=setting, quick=quick)
        return checks, [Path(out) / f.name for f in figures], tables

    monkeypatch.setattr(sc, "run_suite", fake_run_suite)
    argv = ["shift", "--quick", "--d", str(TINY.d), "--N", str(TINY.N), "--seed", str(TINY.seed)]
    rc = cli.main([*argv, "--out", str(tmp_path)])
    assert rc == 0
    assert seen == {"setting": TINY, "quick": True}
    report = (tmp_path / "shift_report.md").read_text()
    assert "20/20 checks passed" in report
    for name in FIGURES:
        assert f"]({name})" in report
    data = json.loads((tmp_path / "shift_results.json").read_text())
    assert len(data["checks"]) == 20 and "provenance" in data and data["quick"] is True


def test_lsa_shift_bad_input() -> None:
    assert cli.main(["shift", "--shift", "no-such-shift"]) == 2
    assert cli.main(["shift", "--d", "1"]) == 2


def test_wrong_closed_form_fails(quick_suite) -> None:  # type: ignore[no-untyped-def]
    """Mutation test: the Monte Carlo of the trained layer under task shift against
    `theory.shift_risk` with the right M passes, and with a wrong M (the length a wrong
    convention would use) fails with a large |z|."""
    _, checks, _, _ = quick_suite
    inst = sc.make_instance(TINY)
    dist = sc.gaussian_law(inst.Lambda, inst.Lambda, inst.Sigma_w)
    args = dist.shift_risk_args()
    est = sc.lsa_risks(inst, dist, 20_000, jax.random.PRNGKey(5), batch=20_000)
    M = inst.M_a
    right = sc.z_check("m1", "right", "", est[M], theory.shift_risk(inst.Ginv, **args, M=M), 4.0)
    assert right.passed
    for wrong_M in (inst.N, inst.M_b):
        wrong = theory.shift_risk(inst.Ginv, **args, M=wrong_M)
        row = sc.z_check("m2", "wrong M", "", est[M], wrong, 4.0)
        assert not row.passed  # |z| > 4: the check's own bound rejects the wrong closed form
    # The recorded power of the suite's own rows: even at these quick sizes every trained-layer
    # row at the long test length M_b = 40 (M/N = 5) would reject the rho = N error. (At
    # M_a = 10 against N = 8 that error moves the prediction by only 25 %, which quick sizes
    # need not resolve: |z_if_rho_N| is about 1 for s2 at this seed.)
    long_rows = [c for c in checks[:9] if c.details["M"] == inst.M_b]
    assert len(long_rows) >= 4
    assert all(abs(c.details["z_if_rho_N"]) > 4 for c in long_rows)


def _theorem42_samples(key, B, Lc, w0, v, beta, s, sq, a_D):  # type: ignore[no-untyped-def]
    """Per-sample `x y` (d), the centred products `(xy - Lambda a_D)(xy - Lambda a_D)^T` (d^2)
    and `(<a_D, x> - y)^2` (1) for `y = <w0, x> + beta ((v^T x)^2 - sq) + eps`."""
    kx, ke = jax.random.split(key)
    d = Lc.shape[0]
    x = jax.random.normal(kx, (B, d), jnp.float64) @ Lc.T
    q = x @ v
    y = x @ w0 + beta * (q * q - sq) + s * jax.random.normal(ke, (B,), jnp.float64)
    xy = x * y[:, None]
    c = xy - (Lc @ (Lc.T @ a_D))[None, :]
    prod = (c[:, :, None] * c[:, None, :]).reshape(B, d * d)
    return jnp.concatenate([xy, prod, ((x @ a_D - y) ** 2)[:, None]], axis=1)


def test_theorem42_moments_match_sampling() -> None:
    """The Isserlis moments used by check s20 against Monte Carlo estimates (the engine's
    `mc_means`), each within 4.5 standard errors (13 compared quantities: a family-wise
    false-alarm rate below 1e-4)."""
    rng = np.random.default_rng(0)
    d = 3
    A = rng.standard_normal((d, d))
    L = A @ A.T / d + 0.5 * np.eye(d)
    w0, v = rng.standard_normal(d), rng.standard_normal(d)
    beta, s = 0.7, 0.3
    a_D, Sigma, best = sc.theorem42_moments(L, w0, v, beta, s)
    est = mc_means(
        _theorem42_samples,
        jax.random.PRNGKey(0),
        400_000,
        *map(jnp.asarray, (np.linalg.cholesky(L), w0, v, beta, s, v @ L @ v, a_D)),
        batch_size=100_000,
    )
    # E[xy] = Lambda a_D; Cov(xy) = Sigma (centred with the exact mean); and
    # min_w E(<w, x> - y)^2 = E(<a_D, x> - y)^2, since a_D is the population least-squares fit
    expected = np.concatenate([L @ a_D, Sigma.ravel(), [best]])
    z = np.array([e.z(x) for e, x in zip(est, expected, strict=True)])
    assert np.all(np.abs(z) <= 4.5), z
