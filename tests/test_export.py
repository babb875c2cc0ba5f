"""Serialized solves (`lsa.flow.enable_exported_solves`): a second process calls the exported
solve instead of tracing it, with bit-identical results; a damaged file is exported anew."""

import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = """
import sys, time
import numpy as np
import jax
import lsa
lsa.set_precision("float64")
folder = sys.argv[1]
if folder != "none":
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    lsa.flow.enable_exported_solves(folder + "/export")
s = lsa.Setting(d=4, N=7, kappa=30.0, seed=int(sys.argv[2]), trace=40.0)
p = s.build()
t0 = time.perf_counter()
r = lsa.flow.gradient_flow(p.Lambda, s.N, p.init)
np.savez(sys.argv[3], Lambda=p.Lambda, product=r.product, ts=r.ts, u=r.u,
         steps=r.stats["num_steps"], seconds=time.perf_counter() - t0)
"""


def _run(tmp: Path, folder: str, seed: int, name: str) -> dict:
    script = tmp / "solve.py"
    script.write_text(SCRIPT)
    out = tmp / f"{name}.npz"
    subprocess.run([sys.executable, str(script), folder, str(seed), str(out)], check=True)
    return dict(np.load(out))


def test_exported_solve_is_reused_identical_and_repaired(tmp_path):
    cache = tmp_path / "cache"
    plain = _run(tmp_path, "none", 3, "plain")
    first = _run(tmp_path, str(cache), 3, "first")  # traces, exports, compiles
    (path,) = (cache / "export").glob("*.jaxexport")
    second = _run(tmp_path, str(cache), 3, "second")  # deserializes: no tracing
    other = _run(tmp_path, str(cache), 5, "other")  # a new problem of the same shapes
    assert list((cache / "export").glob("*.jaxexport")) == [path]  # ... uses the same file
    path.write_bytes(path.read_bytes()[:100])  # a damaged file
    repaired = _run(tmp_path, str(cache), 3, "repaired")
    assert path.stat().st_size > 1000  # exported anew
    for res in (first, second, repaired):
        for k in ("product", "ts", "u", "steps"):
            assert np.array_equal(res[k], plain[k]), k
    L, N = other["Lambda"], 7
    Ginv = np.linalg.inv((1 + 1 / N) * L + np.trace(L) / N * np.eye(L.shape[0]))
    assert np.linalg.norm(other["product"] - Ginv) <= 1e-8 * np.linalg.norm(Ginv)  # Thm 4.1
