"""The Garg, Akyürek and probing experiments of issue 11 §2: the torch model as a `Predictor`
(bridge) against the model called directly, the linear probe on synthetic features with a known
answer, and SPD/ILWD through the Monte Carlo engine against the closed forms of
`theory.metrics` (|z| <= 4)."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import theory  # noqa: E402
from simulations.icl.catalogue import garg_catalogue  # noqa: E402
from simulations.icl.montecarlo import MCEstimate, mc_spd, two_sample_z  # noqa: E402
from simulations.icl.predictors import GD, OLS, at_every_prefix  # noqa: E402
from simulations.transformer.bridge import (  # noqa: E402
    TorchPredictor,
    predict_numpy,
    query_hidden,
)
from simulations.transformer.comparisons import akyurek_table, garg_table, lsa_limit  # noqa: E402
from simulations.transformer.figures import plot_akyurek, plot_garg, plot_probes  # noqa: E402
from simulations.transformer.model import GPT2Regressor  # noqa: E402
from simulations.transformer.probing import fit_probe, probe_table  # noqa: E402

Z_MAX = 4.0
D = 3


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> GPT2Regressor:
    """A small randomly initialised model (seed 11): the bridge does not care about training."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        m = GPT2Regressor(D, M_max=10, width=16, layers=2, heads=2)
    return m.eval()


def _prompts(rng: np.random.Generator, B: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.standard_normal((B, n, D))
    w = rng.standard_normal((B, D))
    return X, np.einsum("bnd,bd->bn", X, w)


def _direct(model: GPT2Regressor, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(X).float(), torch.from_numpy(y).float())
    return out.double().numpy()


def test_bridge_predicts_as_the_model(model, rng):
    X, y = _prompts(rng, 16, 9)
    direct = _direct(model, X, y)  # entry i: from examples 0 .. i-1 and the query x_i
    tp = TorchPredictor(model)
    # the Predictor call (jit + pure_callback) on (x_1..x_8; x_9)
    got = np.asarray(tp(X[:, :8], y[:, :8], X[:, 8]))
    np.testing.assert_array_equal(got, direct[:, 8])
    np.testing.assert_array_equal(predict_numpy(model, X[:, :8], y[:, :8], X[:, 8]), got)
    # every prefix through the engine's mask convention: one forward pass per prefix length,
    # against positions of the single full forward pass (float32 kernels on other lengths)
    pref = np.asarray(at_every_prefix(tp, X, y))
    np.testing.assert_allclose(pref, direct, rtol=0, atol=2e-6)
    # the query token's last hidden state, read out, is the prediction
    h = query_hidden(model, X[:, :8], y[:, :8], X[:, 8])
    assert len(h) == 3 and h[-1].shape == (16, 16)
    with torch.no_grad():
        ro = model.read_out(model.ln_f(torch.from_numpy(h[-1]).float()))[:, 0].double().numpy()
    np.testing.assert_allclose(ro, got, rtol=0, atol=1e-6)


def test_bridge_in_the_engine(model, key):
    """The wrapped model runs inside the engine's jitted kernels (`mc_spd`), and agrees there
    with `akyurek_table`'s host-side estimate (independent prompts, two-sample |z| <= 4)."""
    tp = TorchPredictor(model)
    dist = garg_catalogue(D, jax.random.PRNGKey(0))["standard"]
    M = 4
    eng = mc_spd(tp, OLS(), dist, M, 3000, jax.random.fold_in(key, 1), batch_size=1500)
    tab = akyurek_table({"tf": tp}, {"OLS": OLS()}, d=D, Ms=[M], n_prompts=3000,
                        eval_seed=5, batch_size=1500)  # fmt: skip
    row = tab.iloc[0]
    host = MCEstimate(float(row["spd"]), float(row["spd_se"]), int(row["n_prompts"]))
    assert abs(two_sample_z(eng, host)) <= Z_MAX, (eng, host)


def test_garg_table_layout_and_references(model, tmp_path):
    """OLS is exact from M = d on (noiseless `standard`), the zero predictor's error / d is
    E y^2 / d = 1 (|z| <= 4), and the prompt-dependent `orthogonal_train_test` keeps M < d."""
    tp = TorchPredictor(model, "tf")
    tab = garg_table({"tf": tp}, {"OLS": OLS()}, d=D, M_max=8,
                     evals=["standard", "orthogonal_train_test"], n_prompts=400, eval_seed=3,
                     batch_size=400)  # fmt: skip
    std = tab[tab["eval"] == "standard"]
    assert sorted(set(std["M"])) == list(range(9))
    ols = std[(std["predictor"] == "OLS") & (std["M"] >= D)]
    assert ols["error_per_d"].max() < 1e-20
    zero = std[(std["predictor"] == "zero") & (std["M"] >= 1)]
    z = (zero["error_per_d"] - 1.0) / zero["se_per_d"]
    assert np.all(np.abs(z) <= Z_MAX), z
    orth = tab[tab["eval"] == "orthogonal_train_test"]
    assert set(orth["M"]) == {1, 2} and set(orth["predictor"]) == {"tf", "OLS", "zero"}
    # the query is orthogonal to the examples: OLS predicts 0, exactly the zero predictor
    o = orth.pivot_table(index="M", columns="predictor", values="error_per_d")
    np.testing.assert_allclose(o["OLS"], o["zero"], rtol=1e-9)
    tab.to_csv(tmp_path / "garg.csv", index=False)
    out = plot_garg(pd.read_csv(tmp_path / "garg.csv"), tmp_path / "garg.png", caption="test")
    assert out.stat().st_size > 0


@pytest.mark.parametrize("M", [3, 8])
def test_spd_ilwd_against_the_closed_forms(M, tmp_path):
    """SPD / ILWD of the LSA at its limit W* against GD(alpha) and against itself, by the
    engine (`mc_means` inside `akyurek_table`), against `theory.spd_linear` /
    `theory.ilwd_linear` with E[h h^T] from `theory.prompt_moment`."""
    N, alpha = 20, 0.03
    lsa_p = lsa_limit("identity", D, N)
    tab = akyurek_table({"LSA": lsa_p}, {"LSA": lsa_p, "GD": GD(alpha)}, d=D, Ms=[M],
                        n_prompts=20_000, eval_seed=7 + M, batch_size=5000)  # fmt: skip
    same = tab[tab["reference"] == "LSA"].iloc[0]
    assert same["spd"] == 0.0 and same["ilwd"] == 0.0
    row = tab[tab["reference"] == "GD"].iloc[0]
    G1 = N / (N + D + 1.0) * np.eye(D)
    G2 = theory.gd_G(alpha, M, D)
    I = np.eye(D)
    Ehh = theory.prompt_moment(I, I, 0.0, M)
    spd = MCEstimate(float(row["spd"]), float(row["spd_se"]), int(row["n_prompts"]))
    ilwd = MCEstimate(float(row["ilwd"]), float(row["ilwd_se"]), int(row["n_prompts"]))
    assert abs(spd.z(theory.spd_linear(G1, G2, I, Ehh))) <= Z_MAX, spd
    assert abs(ilwd.z(theory.ilwd_linear(G1, G2, Ehh))) <= Z_MAX, ilwd
    assert plot_akyurek(tab, tmp_path / "a.png", d=D, caption="test").stat().st_size > 0


def _heldout_r2(H_tr, V_tr, H_te, V_te) -> MCEstimate:
    probe = fit_probe(H_tr, V_tr, lam=1e-4)
    return MCEstimate.from_samples(1.0 - probe.normalized_residual(H_te, V_te))


def test_probe_recovers_a_linear_relation(rng):
    n, width, k = 3000, 12, 3
    V = rng.standard_normal((2 * n, k)) * np.array([1.0, 3.0, 0.5]) + 2.0
    A = rng.standard_normal((k, width))
    H = V @ A + 0.01 * rng.standard_normal((2 * n, width)) + 5.0
    r2 = _heldout_r2(H[:n], V[:n], H[n:], V[n:])
    assert r2.mean > 0.999, r2


def test_probe_finds_nothing_in_noise(rng):
    n, width, k = 5000, 12, 3
    V = rng.standard_normal((2 * n, k))
    H = rng.standard_normal((2 * n, width))  # independent of V
    r2 = _heldout_r2(H[:n], V[:n], H[n:], V[n:])
    # out of sample the overfit costs about width / n; no relation, so R^2 is about 0
    assert abs(r2.mean) < 0.05 and abs(r2.z(-width / n)) <= Z_MAX, r2


def test_probe_table_layout(model, tmp_path):
    tab = probe_table({"m": model, "c": model}, d=D, M=6, n_train=300, n_test=200,
                      batch_size=200)  # fmt: skip
    assert len(tab) == 2 * 3 * 3  # two models, layers + 1 = 3, three targets
    assert set(tab["target"]) == {"w", "X^T y", "<w, x_q>"}
    assert np.all(tab["r2"] <= 1.0) and np.all(tab["r2_se"] > 0)
    assert plot_probes(tab, tmp_path / "p.png", control="c", caption="t").stat().st_size > 0
