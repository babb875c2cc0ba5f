"""`lsa` and `theory` never import each other (nor `simulations`): a check compares two
independent computations, or it proves nothing."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("lsa", {"theory", "simulations"}), ("theory", {"lsa", "simulations", "jax"})],
)
def test_static_imports(package, forbidden):
    assert not (_imports(package) & forbidden)


@pytest.mark.parametrize(("package", "forbidden"), [("lsa", "theory"), ("theory", "lsa")])
def test_runtime_imports(package, forbidden):
    code = f"import sys, {package}; print({forbidden!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
