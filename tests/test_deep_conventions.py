"""The two-convention experiment (`simulations.checks.deep_conventions`): its Newton polish ends
at critical points whose classification is checked independently (a point labelled "minimum" is
not lowered by random perturbations of any direction; the origin, where the prediction is
bilinear in the weights, is a saddle), and a rerun resumes from the CSV without recomputing
(rows and saved weights reused; the weights reproduce the recorded loss)."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

import lsa
from lsa.deep_empirical import deep_empirical_loss, deep_stats
from simulations.checks.deep_conventions import (
    STATUSES,
    conventions_table,
    escape_probe,
    escape_probes,
    newton_polish,
    run_weights,
)
from simulations.plots.deep import plot_conventions, plot_escape


def test_polish_reaches_a_minimum_and_rerun_resumes(tmp_path):
    lsa.set_precision("float64")
    csv = tmp_path / "runs.csv"
    key = jax.random.PRNGKey(4)
    args = (2, 6, 300, (1,), 2, key, csv)
    kw = {"n_test": 2000, "flow_steps": 800, "polish_steps": 200}
    table, summary = conventions_table(*args, **kw, log=lambda s: None)
    assert len(table) == 4 and set(table["convention"]) == {"ahn", "zfb"}
    assert set(table["status"]) <= set(STATUSES)
    assert (table["loss"] <= table["loss_flow"] * (1 + 1e-12)).all()
    # L = 1 at this size: every start ends at a certified minimum
    assert (table["status"] == "minimum").all() and table["grad"].max() <= 1e-8
    assert (table["grad"] <= table["grad_flow"]).all()
    assert (
        set(summary["convention"]) == {"ahn", "zfb"}
        and summary["spd_between_conventions"].notna().all()
    )
    # the saved weights give back the recorded training loss (documented key: fold_in(key, 0))
    train = lsa.PromptDistribution(np.eye(2)).sample(jax.random.fold_in(key, 0), 300, 6)
    for r in table.itertuples():
        W = run_weights(r._asdict())
        st = deep_stats(train.X, train.y, train.x_q, train.y_q, r.convention)
        assert abs(float(deep_empirical_loss(W[0], W[1], st)) - r.loss) <= 1e-13 * r.loss
    mtime = csv.stat().st_mtime_ns
    logs: list[str] = []
    _, summary2 = conventions_table(*args, **kw, log=logs.append)
    assert logs == [] and csv.stat().st_mtime_ns == mtime  # nothing recomputed or rewritten
    pd.testing.assert_frame_equal(summary, summary2)
    png = plot_conventions(table, tmp_path / "conventions.png")  # the figure draws from the table
    assert png.stat().st_size > 10_000


def _stats(seed: int, conv: str, d: int = 2, n: int = 6, B: int = 400):
    P = lsa.PromptDistribution(np.eye(d)).sample(jax.random.PRNGKey(seed), B, n)
    return deep_stats(P.X, P.y, P.x_q, P.y_q, conv)


def test_minimum_survives_random_perturbations():
    """Independent of the Hessian: at a point labelled "minimum" no random direction (200 of
    them, steps 1e-3 and 1e-4) lowers the loss beyond round-off."""
    lsa.set_precision("float64")
    for conv in ("ahn", "zfb"):
        st = _stats(1, conv)
        W0 = 0.3 * np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, 1, 3, 3)))
        W, info = newton_polish(W0, st, 300)
        assert info["status"] == "minimum", info
        f0 = float(deep_empirical_loss(W[0], W[1], st))
        assert abs(f0 - info["loss"]) <= 1e-14
        rng = np.random.default_rng(0)
        for _ in range(200):
            u = rng.standard_normal(W.shape)
            u /= np.linalg.norm(u)
            for h in (1e-3, 1e-4):
                Wh = W + h * u
                assert float(deep_empirical_loss(Wh[0], Wh[1], st)) >= f0 - 1e-13


def test_origin_is_a_saddle():
    """At W = 0 the prediction is bilinear in (W_PV, W_KQ): gradient 0, Hessian with eigenvalues
    of both signs; without Newton steps the polish must say "saddle"."""
    lsa.set_precision("float64")
    for conv in ("ahn", "zfb"):
        _, info = newton_polish(np.zeros((2, 2, 3, 3)), _stats(3, conv), 0)
        assert info["grad"] == 0.0 and info["eig_min"] < 0 < info["eig_max"]
        assert info["status"] == "saddle"


def test_escape_probe_follows_the_run(tmp_path):
    """The probe starts where `conventions_table`'s flow ends (same training set and start: equal
    flow losses) and records Newton steps whose loss never rises (a trust-region method accepts
    only steps that lower it)."""
    lsa.set_precision("float64")
    key = jax.random.PRNGKey(5)
    table, _ = conventions_table(
        2, 6, 200, (1,), 1, key, tmp_path / "runs.csv", n_test=500, flow_steps=300,
        polish_steps=5, log=lambda s: None,
    )  # fmt: skip
    probe = escape_probe(2, 6, 200, 1, "zfb", 0, key, flow_steps=300, newton_steps=40, every=4)
    run = table[table["convention"] == "zfb"].iloc[0]
    assert abs(probe["loss"].iloc[0] - run["loss_flow"]) <= 1e-12 * run["loss_flow"]
    assert (np.diff(probe["newton_step"]) == 4).all() and probe["newton_step"].iloc[0] == 0
    assert (np.diff(probe["loss"]) <= 1e-15).all()
    assert {"norm_PV_1", "norm_KQ_1"} <= set(probe.columns)


def test_escape_probes_resume_and_plot(tmp_path):
    """`escape_probes` writes one B at a time and a rerun skips the B it finds (nothing redone:
    no log line, same table); the figure draws from the table."""
    lsa.set_precision("float64")
    key, csv = jax.random.PRNGKey(6), tmp_path / "probe.csv"
    plan = ((100, 6, 3), (150, 6, 3))
    lines: list[str] = []
    first = escape_probes(csv, key, plan[:1], log=lines.append)
    both = escape_probes(csv, key, plan, log=lines.append)
    assert len(lines) == 2 and set(both["B"]) == {100, 150}
    pd.testing.assert_frame_equal(both[both["B"] == 100].reset_index(drop=True), first)
    again = escape_probes(csv, key, plan, log=lines.append)
    assert len(lines) == 2 and len(again) == len(both) == 6
    assert plot_escape(again, tmp_path / "escape.png").stat().st_size > 0
