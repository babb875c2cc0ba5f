"""`lsa reproduce` and `lsa shift`: the setting options (one `lsa.Setting`) and the suites."""

import inspect

import pytest

from simulations.cli import main
from simulations.cli import reproduce as rep


@pytest.mark.parametrize("command", ["reproduce", "shift"])
def test_spread_is_refused_with_the_new_name(command, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([command, "--spread", "3", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--spread was renamed to --kappa" in err


@pytest.mark.parametrize("command", ["reproduce", "shift"])
def test_invalid_kappa_names_the_parameter(command, capsys, tmp_path):
    assert main([command, "--kappa", "0.5", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "kappa" in err and ">= 1" in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_setting_from_args_is_the_one_setting():
    import lsa

    ns = type("NS", (), {"d": 4, "N": 7, "kappa": 3.0, "seed": 2})()
    assert rep.setting_from_args(ns) == lsa.Setting(d=4, N=7, kappa=3.0, seed=2)


def test_suites_are_an_explicit_immutable_parameter():
    assert isinstance(rep.SUITES, tuple)
    assert not hasattr(rep, "EXTRA_SUITES")
    assert inspect.signature(rep.reproduce).parameters["suites"].default == rep.SUITES
