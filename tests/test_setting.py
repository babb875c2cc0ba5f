"""One setting model (`lsa.Setting`) for every entry point.

Must show (issue 8, section 1): for the same setting, `lsa train`, a one-row `lsa scan` and the
Python API build bit-identical Lambda and Theta (and the same start u0, U0), and reach the same
u U to the solver tolerance (the single solver `lsa.gradient_flow` against the batched
`lsa.batch.batch_gradient_flow`), both equal to Gamma^{-1} computed here from its definition
`Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I` (ZFB Theorem 4.1).

Also: the seed rule against an independent re-derivation, every shipped TOML loads, and bad
values are refused with the parameter's name and allowed range, through every entry point.

Cost: both settings have d = 6 and the scans share one chunk shape, so each solver compiles
once per process.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import lsa
from simulations import scans
from simulations.cli import main
from simulations.cli.train import _option

#: The settings of the must-show test: the issue's example, and one with non-default trace,
#: absolute sigma, spectrum and seed.
CASES = [
    {"d": 6, "N": 15, "kappa": 7.0, "seed": 3},
    {"d": 6, "N": 8, "kappa": 4.0, "spectrum": "linear", "trace": 15.0, "sigma": 0.02, "seed": 5},
]
N_SAVE = 60  # coarse save grids: the end points are what is compared


def _gamma_inv(L: np.ndarray, N: int) -> np.ndarray:
    d = L.shape[0]
    return np.linalg.inv((1.0 + 1.0 / N) * L + np.trace(L) / N * np.eye(d))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _train(case: dict, out: Path) -> dict[str, np.ndarray]:
    argv = ["train", "--out", str(out), "--n-save", str(N_SAVE)]
    for k, v in case.items():
        argv += [_option(k), repr(v) if isinstance(v, float) else str(v)]
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert lsa.Setting.from_dict({k: saved[k] for k in lsa.Setting.model_fields}) == (
        lsa.Setting(**case, n_save=N_SAVE)
    )
    with np.load(out / "weights.npz") as w:
        return {k: w[k] for k in w.files}


def _scan_one_row(case: dict) -> dict[str, np.ndarray]:
    """A one-row scan through the public API; a custom measure records what the scan built
    and solved (it runs inside the scan's chunk, after the batched solve)."""
    seen: dict[str, np.ndarray] = {}

    def record(ctx: scans.SettingContext) -> float:
        init = ctx.problem.init
        seen.update(Lambda=ctx.Lambda, Theta=ctx.training.Theta(), u0=np.asarray(init.u),
                    U0=np.asarray(init.U), product=ctx.flow.product)  # fmt: skip
        return 0.0

    df = scans.scan(
        None,
        ["u_final", "dist_Ginv", "record"],
        params={**case, "n_save": N_SAVE},
        chunk_size=2,
        extra_measures=[scans.Measure("record", record)],
    )
    assert len(df) == 1 and df["status"].iloc[0] == "converged", df.T
    seen["u_final"] = np.float64(df["u_final"].iloc[0])
    return seen


@pytest.mark.parametrize("case", CASES, ids=["issue-example", "trace-sigma-linear"])
def test_train_scan_and_api_build_the_same_problem(case, tmp_path):
    setting = lsa.Setting(**case, n_save=N_SAVE)
    api = setting.build()
    train = _train(case, tmp_path / "train")
    row = _scan_one_row(case)

    # bit-identical problem: Lambda, Theta and the start (u0, U0 = sigma Theta Theta^T / ...)
    for name, ref in [("Lambda", api.Lambda), ("Theta", setting.Theta()),
                      ("u0", np.asarray(api.init.u)), ("U0", np.asarray(api.init.U))]:  # fmt: skip
        assert np.array_equal(train[name], ref), f"lsa train: {name}"
        assert np.array_equal(row[name], ref), f"lsa scan: {name}"
    assert np.array_equal(train["Lambda"], train["Lambda"].T)

    # the same end point to the solver tolerance, and it is Gamma^{-1}
    Ginv = _gamma_inv(api.Lambda, setting.N)
    uU_train = train["u_final"] * train["U_final"]
    uU_scan = row["product"]
    diffs = {
        "train-scan": _rel(uU_train, uU_scan),
        "train-Ginv": _rel(uU_train, Ginv),
        "scan-Ginv": _rel(uU_scan, Ginv),
    }
    print(f"u U relative differences ({case}): {diffs}")
    assert max(diffs.values()) < 1e-8, diffs
    assert abs(train["u_final"] - row["u_final"]) / row["u_final"] < 1e-8


def test_one_row_scan_from_toml_matches_the_api(tmp_path):
    """`lsa scan FILE.toml` with `[params]` only: the table holds the API's sigma and the same
    end point as the in-process scan."""
    case = CASES[0]
    toml = tmp_path / "one.toml"
    params = "\n".join(f"{k} = {v!r}" for k, v in case.items())
    toml.write_text(
        '[scan]\nname = "one"\nchunk_size = 2\nmeasures = ["u_final", "dist_Ginv"]\n'
        f"[params]\n{params}\nn_save = {N_SAVE}\n"
    )
    out = tmp_path / "runs"
    assert main(["scan", str(toml), "--out", str(out), "--no-progress"]) == 0
    (run,) = out.iterdir()
    df = pd.read_parquet(run / "results.parquet")
    setting = lsa.Setting(**case, n_save=N_SAVE)
    api = setting.build()
    assert len(df) == 1 and df["status"].iloc[0] == "converged"
    assert df["sigma"].iloc[0] == api.sigma and df["sigma_max"].iloc[0] == api.sigma_max
    assert df["dist_Ginv"].iloc[0] < 1e-8
    u_ref = float(np.sqrt(np.linalg.norm(_gamma_inv(api.Lambda, setting.N))))  # u* = ||G^-1||^1/2
    assert abs(df["u_final"].iloc[0] - u_ref) / u_ref < 1e-8


# ----------------------------------------------------------------------------------------
# the seed rule


def test_seed_rule_against_an_independent_derivation():
    d, N, kappa, seed = 5, 12, 9.0, 17
    s = lsa.Setting(d=d, N=N, kappa=kappa, seed=seed, sigma_fraction=0.25)
    k_Lambda, k_Theta, k_mc = jax.random.split(jax.random.PRNGKey(seed), 3)
    keys = s.keys()
    for mine, ref in [(keys.Lambda, k_Lambda), (keys.Theta, k_Theta), (keys.mc, k_mc)]:
        assert np.array_equal(np.asarray(mine), np.asarray(ref))
    assert np.array_equal(np.asarray(s.mc_key(4)), np.asarray(jax.random.fold_in(k_mc, 4)))

    Q = np.asarray(lsa.random_orthogonal(k_Lambda, d))
    lam = kappa ** (np.arange(d) / (d - 1))  # geometric, rescaled to trace d
    lam = lam * d / lam.sum()
    L = Q @ np.diag(lam) @ Q.T
    np.testing.assert_allclose(s.Lambda(), L, rtol=0, atol=1e-14 * np.abs(L).max())
    np.testing.assert_allclose(np.linalg.eigvalsh(s.Lambda()), lam, rtol=1e-13)
    assert not np.allclose(s.Lambda(), np.diag(np.diag(s.Lambda())))  # rotated, not diagonal
    Theta = np.asarray(lsa.random_theta(k_Theta, d))
    assert np.array_equal(s.Theta(), Theta)

    # sigma: 0.25 sigma_max, sigma_max = sqrt(2 / (sqrt(d) ||Gamma||_op)) (Theorem 4.1)
    g_max = np.linalg.eigvalsh((1 + 1 / N) * L + np.trace(L) / N * np.eye(d))[-1]
    sigma = 0.25 * np.sqrt(2 / (np.sqrt(d) * g_max))
    p = s.build()
    assert p.sigma == pytest.approx(sigma, rel=1e-13)
    # the start is lsa.paper_init's, bit for bit
    ref = lsa.paper_init(p.Lambda, N, sigma=p.sigma, Theta=Theta)
    assert np.array_equal(np.asarray(p.init.U), np.asarray(ref.U))
    assert float(p.init.u) == float(ref.u) == p.sigma
    # the same seed gives the same draws at another N or kappa (common random numbers)
    other = s.replace(N=40, kappa=2.0)
    assert np.array_equal(other.Theta(), s.Theta())
    np.testing.assert_allclose(np.linalg.eigh(other.Lambda())[1][:, 0] ** 2,
                               np.linalg.eigh(s.Lambda())[1][:, 0] ** 2, atol=1e-12)  # fmt: skip


# ----------------------------------------------------------------------------------------
# TOML files and bad values, through every entry point


def test_every_shipped_toml_loads_and_means_what_it_says():
    ex = scans.examples()
    assert set(ex) >= {"sigma_scan", "N_scan", "kappa_scan", "covariate_scale_scan"}
    import tomllib

    for name, path in ex.items():
        cfg = scans.load_config(path)
        fixed = tomllib.loads(path.read_text()).get("params", {})
        rows = cfg.settings()
        assert 0 < len(rows) <= 100, name
        for row in rows:
            for k, v in fixed.items():
                assert row[k] == v, (name, k)
            lsa.Setting(**{k: row[k] for k in scans.parameters.SETTING_KEYS}).build()
        # every shipped example fixes d and kappa: none relies on a default that changed
        assert {"d"} <= set(fixed) | set(cfg.grid), name
        assert {"kappa"} & (set(fixed) | set(cfg.grid)), name


@pytest.mark.parametrize("section", ["", "[train]\n", "[setting]\n"])
def test_a_train_toml_loads_in_every_layout(tmp_path, section):
    p = tmp_path / "t.toml"
    p.write_text(section + "d = 4\nN = 10\nkappa = 5.0\nsigma_fraction = 0.1\nseed = 2\n")
    s = lsa.Setting.from_toml(p)
    assert s == lsa.Setting(d=4, N=10, kappa=5.0, sigma_fraction=0.1, seed=2)


BAD = [
    ("foo = 1", r"unknown .*'foo'"),
    ('d = "5"', r"`d` \(input dimension.*an integer >= 1.*'5'"),
    ("d = 5.5", r"`d` \(input dimension.*an integer >= 1.*5\.5"),
    ("kappa = 0.5", r"`kappa` \(condition number.*a number >= 1.*0\.5"),
    ("N = 0", r"`N` \(training prompt length.*an integer >= 1.*0"),
    ("spread = 10", r"`spread`.*renamed to `kappa`"),
]


@pytest.mark.parametrize(("line", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_the_parameter_and_range(tmp_path, line, match):
    """The same refusal from `lsa.Setting` (API and `lsa train` files) and a scan's [params]."""
    p = tmp_path / "t.toml"
    p.write_text(line + "\n")
    with pytest.raises(lsa.SettingError, match=match):
        lsa.Setting.from_toml(p)
    q = tmp_path / "s.toml"
    q.write_text(textwrap.dedent('[scan]\nname = "b"\nmeasures = ["min_loss"]\n[params]\n') + line)
    with pytest.raises(scans.ScanError, match=match):
        scans.load_config(q)
