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


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_changes_no_global_state():
    """Importing the packages (plots included) leaves JAX in float32 and chooses no matplotlib
    backend: precision and backend are explicit choices (`lsa.set_precision`, the CLI)."""
    code = (
        "import matplotlib, jax\n"
        "before = matplotlib.rcParams._get_backend_or_none()\n"
        "import lsa, theory, simulations.plots.figures, simulations.plots.scan\n"
        "import simulations.checks.core, simulations.icl.montecarlo\n"
        "print(jax.config.read('jax_enable_x64'), before == "
        "matplotlib.rcParams._get_backend_or_none())"
    )
    assert _fresh(code) == "False True"


def test_set_precision_is_explicit_and_checked():
    code = (
        "import lsa, jax.numpy as jnp\n"
        "try:\n"
        "    lsa.require_x64('the test')\n"
        "    print('no error')\n"
        "except RuntimeError as e:\n"
        "    print('set_precision' in str(e))\n"
        "lsa.set_precision('float64')\n"
        "print(lsa.get_precision(), jnp.zeros(1).dtype)"
    )
    assert _fresh(code).splitlines() == ["True", "float64 float64"]


def test_solver_refuses_float32():
    """A solve in float32 raises instead of silently losing eight digits."""
    code = (
        "import lsa, numpy as np\n"
        "L = np.diag([1.0, 2.0])\n"
        "init = lsa.paper_init(L, 5, sigma_fraction=0.5, Theta=np.eye(2))\n"
        "try:\n"
        "    lsa.flow.gradient_flow(L, 5, init)\n"
        "    print('solved')\n"
        "except RuntimeError as e:\n"
        "    print('float64' in str(e))"
    )
    assert _fresh(code) == "True"
