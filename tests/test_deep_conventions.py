"""The two-convention experiment (`simulations.checks.deep_conventions`): its polish lowers the
flow's loss and gradient (to the loss's round-off floor: max |grad| <= 1e-7 at losses ~0.3), and
a rerun resumes from the CSV without recomputing (rows and saved predictions reused)."""

from __future__ import annotations

import jax
import pandas as pd

import lsa
from simulations.checks.deep_conventions import conventions_table


def test_polish_reaches_a_critical_point_and_rerun_resumes(tmp_path):
    lsa.set_precision("float64")
    csv = tmp_path / "runs.csv"
    key = jax.random.PRNGKey(4)
    args = (2, 6, 300, (1,), 2, key, csv)
    table, summary = conventions_table(*args, n_test=2000, flow_steps=800, log=lambda s: None)
    assert len(table) == 4 and set(table["convention"]) == {"ahn", "zfb"}
    assert (table["grad"] <= table["grad_flow"]).all() and table["grad"].max() <= 1e-7
    assert (table["loss"] <= table["loss_flow"] * (1 + 1e-12)).all()
    assert (
        set(summary["convention"]) == {"ahn", "zfb"}
        and summary["spd_between_conventions"].notna().all()
    )
    mtime = csv.stat().st_mtime_ns
    logs: list[str] = []
    _, summary2 = conventions_table(*args, n_test=2000, flow_steps=800, log=logs.append)
    assert logs == [] and csv.stat().st_mtime_ns == mtime  # nothing recomputed or rewritten
    pd.testing.assert_frame_equal(summary, summary2)
