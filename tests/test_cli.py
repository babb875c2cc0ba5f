"""The `lsa` command: train, reproduce (quick) and its bad-input errors."""

import json

import numpy as np
import pytest

import theory
from simulations.cli import main


def test_train_writes_result_dir_and_skips_finished(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--d", "3", "--N", "6", "--kappa", "5", "--out", str(out)]) == 0
    for name in ("config.json", "summary.json", "trajectory.csv", "trajectory.npz", "weights.npz"):
        assert (out / name).exists(), name
    w = np.load(out / "weights.npz")
    # independent check of the saved end point: u U = Gamma^{-1} (Theorem 4.1)
    Ginv = np.linalg.inv(theory.gamma(w["Lambda"], 6))
    uU = w["W_PV"][-1, -1] * w["W_KQ"][:-1, :-1]
    assert np.linalg.norm(uU - Ginv) / np.linalg.norm(Ginv) < 1e-8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "converged"
    assert "jax" in summary["provenance"]["versions"]
    capsys.readouterr()
    assert main(["train", "--d", "3", "--N", "6", "--kappa", "5", "--out", str(out)]) == 0
    assert "finished" in capsys.readouterr().out


def test_train_from_toml(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nd = 2\nN = 4\neigenvalues = [1.0, 3.0]\nsigma = 0.1\nseed = 3\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["sigma"] == 0.1 and conf["seed"] == 3 and conf["eigenvalues"] == [1.0, 3.0]
    assert conf["sigma_fraction"] is None and conf["derived"]["sigma"] == 0.1
    assert "versions" in conf["provenance"]


def test_train_options_override_the_file(tmp_path):
    """Options override the TOML file; an option's sigma replaces the file's sigma_fraction."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("d = 2\nN = 4\nkappa = 3.0\nsigma_fraction = 0.2\nseed = 1\nn_save = 40\n")
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--N", "5", "--sigma", "0.05", "--out", str(out)]
    assert main(argv) == 0
    conf = json.loads((out / "config.json").read_text())
    assert (conf["d"], conf["N"], conf["kappa"], conf["seed"]) == (2, 5, 3.0, 1)
    assert conf["sigma"] == 0.05 and conf["sigma_fraction"] is None


def test_train_refuses_renamed_options_and_another_setting(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--spread", "3", "--out", str(out)]) == 2
    assert "renamed to `--kappa`" in capsys.readouterr().err
    assert main(["train", "--sigma-frac", "0.1", "--out", str(out)]) == 2
    assert "`--sigma-fraction`" in capsys.readouterr().err
    cfg = tmp_path / "old.toml"
    cfg.write_text("[train]\nd = 2\nspread = 3.0\n")
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    assert "renamed to `kappa`" in capsys.readouterr().err
    assert not out.exists()
    argv = ["train", "--d", "2", "--N", "3", "--n-save", "40", "--out", str(out)]
    assert main(argv) == 0
    argv[4] = "4"  # another N into the same finished folder: refused, not silently skipped
    assert main(argv) == 2
    assert "another setting" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("d = 3\nfoo = 1\n", "unknown setting key(s) 'foo'"),
        ("d = 3\n[x\n", "malformed TOML"),
        ('d = "5"\n', "`d` (input dimension: an integer >= 1)"),
        ("d = 5.5\n", "`d` (input dimension: an integer >= 1)"),
        ("kappa = 0.5\n", "`kappa` (condition number: a number >= 1)"),
        ("[train]\nN = 0\n", "`N` (training prompt length: an integer >= 1)"),
        ("spread = 10\n", "renamed to `kappa`"),
    ],
)
def test_train_bad_toml(tmp_path, capsys, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r" / "summary.json").exists()


def test_train_bad_values(tmp_path, capsys):
    assert main(["train", "--N", "0", "--out", str(tmp_path / "r")]) == 2
    assert "`N` (training prompt length: an integer >= 1)" in capsys.readouterr().err
    assert main(["train", "--sigma", "-1", "--out", str(tmp_path / "r2")]) == 2
    assert "`sigma` (initial scale: a number > 0, or unset)" in capsys.readouterr().err
    assert main(["train", "--spectrum", "isotropic", "--out", str(tmp_path / "r3")]) == 2
    assert "needs kappa = 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--method", "rk4"])


def test_train_warns_above_sigma_max(tmp_path):
    with pytest.warns(UserWarning, match="sigma_max"):
        main(
            [
                "train",
                "--d",
                "2",
                "--N",
                "4",
                "--sigma-fraction",
                "1.2",
                "--t-end",
                "1.0",
                "--out",
                str(tmp_path / "r"),
            ]
        )


@pytest.mark.slow
def test_reproduce_quick(tmp_path, capsys):
    """The main job end to end on a smaller Monte Carlo: every check passes, files written."""
    out = tmp_path / "figs"
    code = main(["reproduce", "--quick", "--only-core", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    results = json.loads((out / "results.json").read_text())
    assert all(c["passed"] for c in results["checks"])
    ids = {c["id"] for c in results["checks"]}
    assert {"a1", "a2", "a3", "a4", "b", "c1", "c2", "c3", "c4", "d1", "e1", "f1", "f2"} <= ids
    assert {"f3", "f4", "f5"} <= ids  # f4, f5: findings, rows even when "not observed"
    for name in (
        "loss_vs_time.png",
        "distance_vs_time.png",
        "balance.png",
        "risk_vs_M.png",
        "empirical_vs_B.png",
        "report.md",
        "trajectory.csv",
        "risk_mc.csv",
    ):
        assert (out / name).exists(), name


def test_check_group_writes_report(tmp_path, capsys):
    """`lsa check learning-curve` runs g1 on the setting of the options and writes its report,
    results (with provenance) and figure."""
    out = tmp_path / "c"
    assert main(["check", "learning-curve", "--d", "3", "--N", "6", "--out", str(out)]) == 0
    res = json.loads((out / "check_learning_curve_results.json").read_text())
    assert res["setting"]["d"] == 3 and res["checks"][0]["id"] == "g1"
    assert res["checks"][0]["verdict"] == "PASS"
    assert "versions" in res["provenance"]
    assert (out / "learning_curve.png").exists()
    assert "g1" in (out / "check_learning_curve_report.md").read_text()


def test_check_unknown_group(tmp_path, capsys):
    assert main(["check", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown check group 'nope'" in capsys.readouterr().err
