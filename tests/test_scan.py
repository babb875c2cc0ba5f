"""Tests of parameter scans: `lsa.batch` (the vectorised solver), `simulations.scans` (grids,
hashing, run directories, resume after SIGKILL, the Dask executor) and the `lsa scan` / `lsa plot`
commands.

References: `lsa.gradient_flow` (the single-solve path, an independent integrator: diffrax
Kvaerno5 in t-time against the batch's own ESDIRK in s-time), `theory` closed forms, and an
uninterrupted in-process run for every resumed or distributed one.

Cost: every scan here uses one problem shape (d = 3, chunks of 4, 60 saved points), so the
batched solve compiles once per process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import lsa
import theory
from lsa.batch import batch_gradient_flow, select_device
from lsa.flow import FlowOptions, gradient_flow
from simulations import scans
from simulations.cli import main
from simulations.scans import Measure, ScanConfig, ScanError, solve
from simulations.scans.measures import first_crossing

ROOT = Path(__file__).resolve().parents[1]

PARAMS = {"d": 3, "n_save": 60}
GRID = {"kappa": [1.0, 4.0], "sigma_fraction": [0.05, 0.5], "N": [5, 10]}
MEASURES = ["final_loss", "min_loss", "t_escape", "dist_Ginv", "t_converge"]


def _cfg(**kw) -> ScanConfig:
    args = {"name": "test", "measures": MEASURES, "params": PARAMS, "grid": GRID, "chunk_size": 4}
    args.update(kw)
    return ScanConfig.build(**args)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """The uninterrupted in-memory run every persisted run is compared with."""
    return scans.run_scan(_cfg()).table


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values("setting_id").reset_index(drop=True)
    b = b.sort_values("setting_id").reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    assert a["setting_id"].tolist() == b["setting_id"].tolist()
    assert not a["setting_id"].duplicated().any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=0.0)


# ----------------------------------------------------------------------------------------
# grids and hashing


def test_grid_expansion_product_zip_and_defaults():
    cfg = ScanConfig.build(
        name="g",
        measures=["min_loss"],
        params={"d": 4},
        grid={"kappa": {"geomspace": [1, 100, 3]}, "N": {"geomspace": [2, 8, 5]}},
        zips={"M": [5, 50], "c": [1.0, 2.0]},
    )
    s = cfg.settings()
    assert cfg.grid["kappa"] == [1.0, 10.0, 100.0]
    assert cfg.grid["N"] == [2, 3, 4, 6, 8]  # integer parameters round and drop duplicates
    assert len(s) == 3 * 5 * 2
    assert [x["setting_id"] for x in s] == list(range(30))
    assert {(x["M"], x["c"]) for x in s} == {(5, 1.0), (50, 2.0)}  # zipped, not crossed
    assert all(x["d"] == 4 and x["seed"] == 0 for x in s)
    # unset values stay unset in the rows; lsa.Setting resolves them (sigma_fraction 0.5)
    assert all(x["sigma_fraction"] is None and x["sigma"] is None for x in s)
    plain = ScanConfig.build(name="g", measures=["min_loss"], grid={"N": [3, 7]})
    assert [x["M"] for x in plain.settings()] == [3, 7]  # M defaults to N
    # every other default is lsa.Setting's (or Measurement's): one table of defaults
    for x in plain.settings():
        for k, p in scans.PARAMETERS.items():
            if k not in ("N", "M"):
                assert x[k] == p.default, k
    assert scans.PARAMETERS["kappa"].default == lsa.Setting().kappa == 10.0
    assert scans.PARAMETERS["d"].default == lsa.Setting().d == 5
    assert scans.PARAMETERS["rtol"].default is None  # the solver's default


def test_hash_is_canonical_and_pinned():
    a = ScanConfig.build(name="h", measures=["min_loss"], grid={"N": [5, 10], "kappa": [1, 2]})
    b = ScanConfig.build(name="h", measures=["min_loss"], grid={"kappa": [1.0, 2.0], "N": [5, 10]})
    c = ScanConfig.build(name="h", measures=["min_loss"], grid={"N": [5, 11], "kappa": [1, 2]})
    assert a.hash == b.hash != c.hash
    assert a.run_name == f"h-{a.hash}" and len(a.hash) == 12
    # pinned: a change here orphans every existing run directory (deliberate only)
    assert a.hash == "6aa7de4f14bc"  # schema 2 (lsa.Setting); schema 1 was d3c4023b255d


def test_toml_round_trip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        textwrap.dedent(
            """
            [scan]
            name = "t"
            measures = ["min_loss", "risk_floor"]
            [params]
            d = 3
            [grid]
            N = [5, 10]
            [[zip]]
            kappa = [1, 2]
            seed = [0, 1]
            """
        )
    )
    cfg = scans.load_config(p)
    assert len(cfg.settings()) == 4
    assert cfg.hash == ScanConfig.build(
        name="t", measures=["min_loss", "risk_floor"], params={"d": 3}, grid={"N": [5, 10]},
        zips=[{"kappa": [1, 2], "seed": [0, 1]}],
    ).hash  # fmt: skip


def test_every_example_is_valid():
    ex = scans.examples()
    assert set(ex) >= {"sigma_scan", "N_scan", "kappa_scan", "covariate_scale_scan"}
    for path in ex.values():
        cfg = scans.load_config(path)
        assert 0 < len(cfg.settings()) <= 100


# ----------------------------------------------------------------------------------------
# bad input: clear errors before anything runs


BAD = [
    ({"grid": {"sigma_fracc": [0.1]}}, r"unknown parameter.*'sigma_fracc'.*valid parameters"),
    ({"grid": {"spread": [2.0]}}, r"`spread`.*renamed to `kappa`"),
    ({"params": {"sigma_frac": 0.1}}, r"renamed to `sigma_fraction`"),
    ({"params": {"eigenvalues": [1.0, 2.0]}}, r"`eigenvalues`.*not a scan parameter"),
    ({"params": {"t_end": 1.0}}, r"`t_end`.*not a scan parameter"),
    ({"grid": {"N": []}}, "empty"),
    ({"grid": {}, "zips": [{}]}, "empty"),
    ({"zips": {"kappa": [1, 2], "M": [1]}}, "equal lengths"),
    ({"params": {"sigma": 0.1}, "grid": {"sigma_fraction": [0.1]}}, "conflicting options"),
    ({"params": {"spectrum": "isotropic"}, "grid": {"kappa": [2.0]}}, "conflicting options"),
    ({"params": {"spectrum": "isotropic"}}, r"conflicting options.*isotropic.*kappa = 1"),
    ({"params": {"N": 3}, "grid": {"N": [4]}}, "given twice"),
    ({"grid": {"kappa": [0.5]}}, r"parameter `kappa` \(condition number: a number >= 1\)"),
    ({"grid": {"N": [2.5]}}, r"parameter `N` \(.*: an integer >= 1\).*got 2.5"),
    ({"params": {"d": "5"}}, r"parameter `d` \(.*: an integer >= 1\).*got '5'"),
    ({"params": {"rotate": 1}}, r"parameter `rotate` \(.*: true or false\)"),
    ({"params": {"c": 0.0}}, r"parameter `c` \(.*: a number > 0\)"),
    ({"params": {"rtol": 2.0}}, r"parameter `rtol` \(.*: a number in \(0, 1\), or unset\)"),
    ({"measures": ["final_los"]}, r"unknown measure.*final_loss"),
    ({"chunk_size": 0}, "chunk_size"),
]


@pytest.mark.parametrize(("kw", "match"), BAD)
def test_bad_config_raises_before_running(kw, match, tmp_path, monkeypatch):
    monkeypatch.setattr(solve, "run_chunk", _must_not_run)
    args = {"name": "bad", "measures": ["final_loss"], "grid": {"N": [5]}}
    args.update(kw)
    with pytest.raises(ScanError, match=match):
        scans.scan(args.pop("grid"), args.pop("measures"), zip=args.pop("zips", None),
                   out=tmp_path, **args)  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


def _must_not_run(*a, **k):
    raise AssertionError("a chunk ran")


def test_bad_toml_and_options(tmp_path, monkeypatch):
    monkeypatch.setattr(solve, "run_chunk", _must_not_run)
    p = tmp_path / "c.toml"
    p.write_text('[scan]\nname = "t"\nmeasures = ["min_loss"]\n[grids]\nN = [5]\n')
    with pytest.raises(ScanError, match=r"unknown section.*'grids'"):
        scans.load_config(p)
    p.write_text('[scan]\nname = "t"\nmeasure = ["min_loss"]\n')
    with pytest.raises(ScanError, match=r"unknown \[scan\] key.*measure"):
        scans.load_config(p)
    cfg = ScanConfig.build(name="t", measures=["min_loss"], grid={"N": [5]})
    with pytest.raises(ScanError, match="conflicting options"):
        scans.run_scan(cfg, tmp_path / "o", address="tcp://127.0.0.1:1")
    with pytest.raises(ScanError, match="executor"):
        scans.run_scan(cfg, tmp_path / "o", executor="ray")
    with pytest.raises(ValueError, match="unknown device"):
        scans.run_scan(cfg, tmp_path / "o", device="tpu")
    assert not (tmp_path / "o").exists()


def test_output_folder_that_cannot_be_created(tmp_path, monkeypatch):
    monkeypatch.setattr(solve, "run_chunk", _must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ScanError, match="not writable"):
        scans.scan({"N": [5]}, "min_loss", out=blocker / "runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(solve, "run_chunk", _must_not_run)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ScanError, match="not writable"):
            scans.scan({"N": [5]}, "min_loss", out=ro / "runs")
    finally:
        ro.chmod(0o700)


def test_select_device():
    assert select_device("cpu").platform == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        select_device("quantum")
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ValueError, match=r"lsa-flow\[cuda\]"):
            select_device("gpu")
        assert select_device("auto").platform == "cpu"


# ----------------------------------------------------------------------------------------
# the batched solver against single solves


def test_batch_matches_gradient_flow():
    """Members with different Lambda (rotations) and Theta, solved together, agree with
    `gradient_flow` one by one: end points to 1e-8, escape and convergence times to the
    interpolation error of the save grids. (Different N and sigma in one batch are covered by
    the scan tests against theory; each would cost `gradient_flow` a recompilation here.)"""
    d, N = 3, 10
    cases = []  # (Lambda, N, init): seeds share sigma and spectrum -> one gradient_flow compile
    for seed, kappa in [(0, 4.0), (1, 4.0), (2, 4.0)]:
        L = np.asarray(lsa.spread_covariance(d, kappa, jax.random.PRNGKey(seed)))
        init = lsa.paper_init(L, N, sigma_fraction=0.05, key=jax.random.PRNGKey(100 + seed))
        cases.append((L, N, init))
    opts = FlowOptions(n_save=60)
    res = batch_gradient_flow(
        np.stack([c[0] for c in cases]), [c[1] for c in cases], [c[2] for c in cases],
        options=opts, pad_to=4,
    )  # fmt: skip
    assert res.stop_reason == ["converged"] * 3
    for b, (L, n, init) in enumerate(cases):
        ref = gradient_flow(L, n, init, options=opts)
        assert abs(res.u_final[b] - ref.u_final) < 1e-8
        np.testing.assert_allclose(res.product[b], ref.product, rtol=0, atol=1e-8)
        np.testing.assert_allclose(res.product[b], np.linalg.inv(theory.gamma(L, n)), atol=1e-8)
        m = res.member(b)
        assert abs(m.loss[-1] - ref.loss[-1]) < 1e-10
        assert np.max(np.abs(m.balance)) < 1e-9  # Lemma A.3: u^2 - ||U||^2 conserved (= 0)
        # the trajectories: the same escape and convergence times up to the interpolation
        # error of the coarse save grids (60 points; about 1%)
        ml, Gi = theory.min_loss(L, n), np.linalg.inv(theory.gamma(L, n))
        for f_a, f_b in [(m, ref)]:
            te = [first_crossing(f.ts, f.loss - ml, 0.5 * (f.loss[0] - ml), log=False)
                  for f in (f_a, f_b)]  # fmt: skip
            dist = [np.array([np.linalg.norm(f.u[i] * f.U_at(i) - Gi) for i in range(len(f.ts))])
                    for f in (f_a, f_b)]  # fmt: skip
            tc = [first_crossing(f.ts, dd, 1e-6 * np.linalg.norm(Gi), log=True)
                  for f, dd in zip((f_a, f_b), dist, strict=True)]  # fmt: skip
            assert te[0] == pytest.approx(te[1], rel=0.03)
            assert tc[0] == pytest.approx(tc[1], rel=0.03)
        np.testing.assert_allclose(res.U_at(b, 0), np.asarray(init.U), atol=1e-15)


def test_batch_reports_failures_per_member():
    L = np.asarray(lsa.spread_covariance(3, 4.0, jax.random.PRNGKey(0)))
    init = lsa.paper_init(L, 10, sigma_fraction=0.05, key=jax.random.PRNGKey(1))
    res = batch_gradient_flow(
        np.stack([L, L]), 10, [init, init], options=FlowOptions(n_save=60, t_max=0.5), pad_to=4
    )
    assert res.stop_reason == ["horizon", "horizon"]
    assert not res.ok.any()
    with pytest.raises(ValueError, match="t_end"):
        batch_gradient_flow(L[None], 10, [init], options=FlowOptions(t_end=1.0))


# ----------------------------------------------------------------------------------------
# scans: measurements, run directories, resume


def test_scan_measures_against_theory(reference):
    df = reference
    assert len(df) == 8 and (df["status"] == "converged").all()
    assert (df["error"] == "").all()
    assert np.all(df["dist_Ginv"] < 1e-8)
    np.testing.assert_allclose(df["final_loss"], df["min_loss"], rtol=1e-9)
    assert np.all(df["t_escape"] > 0) and np.all(df["t_converge"] > df["t_escape"])
    # escape is later from a smaller start (logarithmically)
    small = df[df.sigma_fraction == 0.05].sort_values(["kappa", "N"])["t_escape"].to_numpy()
    large = df[df.sigma_fraction == 0.5].sort_values(["kappa", "N"])["t_escape"].to_numpy()
    assert np.all(small > large)


def test_run_directory_and_instant_rerun(tmp_path, reference, monkeypatch):
    res = scans.run_scan(_cfg(), tmp_path)
    root = res.run_dir
    assert root.name == _cfg().run_name and not res.cached
    for f in ["config.json", "provenance.json", "plan.json", "timings.json", "results.parquet",
              "results.csv", "DONE"]:  # fmt: skip
        assert (root / f).is_file(), f
    assert len(list((root / "chunks").glob("chunk-*.parquet"))) == 2
    prov = json.loads((root / "provenance.json").read_text())
    assert {"versions", "device", "git", "scan"} <= set(prov)
    _same_table(res.table, reference)
    _same_table(pd.read_csv(root / "results.csv", keep_default_na=False,
                            dtype={"error": str}).fillna(""), reference)  # fmt: skip
    monkeypatch.setattr(solve, "run_chunk", _must_not_run)
    t0 = time.perf_counter()
    again = scans.run_scan(_cfg(), tmp_path)
    assert again.cached and time.perf_counter() - t0 < 1.0
    _same_table(again.table, reference)


_KILL_SCRIPT = """
import json, sys, time
import lsa
from simulations.scans import Measure, ScanConfig, run_scan
lsa.set_precision("float64")
def slow(ctx):
    time.sleep(0.25)
    return 0.0
spec = json.loads(sys.argv[1])
run_scan(ScanConfig.build(**spec, extra_measures=[Measure("slow", slow, needs_flow=False)]),
         sys.argv[2])
"""


def test_resume_after_sigkill(tmp_path, reference):
    """SIGKILL after the first chunk lands; the rerun finishes with every row exactly once."""
    spec = {"name": "test", "measures": [*MEASURES, "slow"], "params": PARAMS, "grid": GRID,
            "chunk_size": 4}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, json.dumps(spec), str(tmp_path)], cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    try:  # the same scan (a measure's name, not its function, is part of the hash)
        cfg = ScanConfig.build(
            **spec, extra_measures=[Measure("slow", lambda ctx: 0.0, needs_flow=False)]
        )
        chunks = tmp_path / cfg.run_name / "chunks"
        deadline = time.monotonic() + 120
        while not list(chunks.glob("chunk-*.parquet")):
            assert proc.poll() is None, "the scan ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(list(chunks.glob("chunk-*.parquet"))) == 1
        assert not (tmp_path / cfg.run_name / "DONE").exists()  # not mistaken for finished
        res = scans.run_scan(cfg, tmp_path)
        assert not res.cached
        _same_table(res.table.drop(columns="slow"), reference)
        assert len(list(chunks.glob("chunk-*.parquet"))) == 2
        assert scans.run_scan(cfg, tmp_path).cached
    finally:
        if proc.poll() is None:
            proc.kill()


def test_measures_are_read_only_and_extra_measures_explicit():
    """No global registry: the built-ins cannot be changed, a scan names its own measures."""
    with pytest.raises(TypeError):
        scans.MEASURES["x"] = scans.MEASURES["min_loss"]  # type: ignore[index]
    twice = Measure("twice", lambda ctx: 2 * ctx.min_loss, needs_flow=False)
    with pytest.raises(ScanError, match=r"unknown measure.*'twice'"):
        ScanConfig.build(measures=["twice"], grid={"N": [3]})  # nothing was registered
    with pytest.raises(ScanError, match="already taken"):
        ScanConfig.build(measures=["min_loss"], extra_measures=[Measure("min_loss", len)])
    with pytest.raises(ScanError, match="clashes with a parameter"):
        Measure("kappa", len)
    cfg = ScanConfig.build(measures=["min_loss", "twice"], params={"d": 3}, grid={"N": [3, 5]},
                           extra_measures=[twice])  # fmt: skip
    df = scans.run_scan(cfg).table
    np.testing.assert_array_equal(df["twice"], 2 * df["min_loss"])
    assert "twice" not in scans.MEASURES


def test_dask_two_workers_match_in_process(reference):
    pytest.importorskip("distributed")
    df = scans.run_scan(_cfg(), executor="dask", n_workers=2).table
    _same_table(df, reference)


# ----------------------------------------------------------------------------------------
# command line


def test_cli_scan_and_plot(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text(
        textwrap.dedent(
            """
            [scan]
            name = "cli"
            chunk_size = 4
            measures = ["final_loss", "min_loss", "t_escape"]
            [params]
            d = 3
            n_save = 60
            [grid]
            kappa = [1.0, 4.0]
            N = [5, 10]
            """
        )
    )
    out = tmp_path / "runs"
    assert main(["scan", str(toml), "--out", str(out), "--no-progress"]) == 0
    run = next(out.iterdir())
    assert (run / "DONE").is_file()
    assert main(["scan", str(toml), "--out", str(out), "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["plot", str(run)]) == 0  # default: heatmap over the two grid parameters
    assert list((run / "figures").glob("*.png"))
    png = tmp_path / "lines.png"
    argv = ["plot", str(run / "results.csv"), "--x", "N", "--y", "t_escape", "--hue", "kappa",
            "--out", str(png)]  # fmt: skip
    assert main(argv) == 0 and png.stat().st_size > 0
    assert main(["plot", str(run), "--x", "N", "--y", "nope"]) == 2
    assert "unknown column" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[scan]\nname = "b"\nmeasures = ["min_loss"]\n[grid]\nNN = [1]\n')
    assert main(["scan", str(bad), "--out", str(out)]) == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["scan", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "sigma_scan" in listing and "an integer >= 1" in listing and "conv_tol" in listing
