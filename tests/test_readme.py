"""The README's Python tour runs as written and its Theorem 4.1 claim holds."""

import re
from pathlib import Path

import numpy as np

import theory

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs():
    code = re.search(
        r"## A tour of the Python API\n\n```python\n(.*?)```", README.read_text(), re.S
    )
    assert code is not None
    ns: dict = {}
    exec(code.group(1), ns)
    Ginv = np.linalg.inv(theory.gamma(ns["Lambda"], 20))
    assert np.linalg.norm(ns["res"].product - Ginv) / np.linalg.norm(Ginv) < 1e-8
    assert ns["y_hat"].shape == (1000,)


def test_readme_commands_present():
    text = README.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# lsa-flow")
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        i = lines.index(marker)
        assert lines[i + 1] == "```bash"
        assert lines[i + 2].startswith(
            "python3 -m venv .venv && . .venv/bin/activate && pip install"
        )
