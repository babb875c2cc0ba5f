"""The torch side of issue 11: the LSA layer in torch against `lsa` (the cross-framework
identity, to 1e-12 in float64), the GPT-2-style model's reading of a prompt, the training
configuration, the data stream, and resume after SIGKILL (bit-identical weights on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import lsa

torch = pytest.importorskip("torch")

from simulations.transformer.model import GPT2Regressor, TorchLSA, interleave  # noqa: E402
from simulations.transformer.train import (  # noqa: E402
    TransformerConfig,
    TransformerConfigError,
    build_model,
    sample_batch,
    stream_seed,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gamma_inverse(Lambda: np.ndarray, N: int) -> np.ndarray:
    """Gamma^{-1}, Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I (ZFB eq. 4.1), in numpy."""
    d = Lambda.shape[0]
    return np.linalg.inv((1.0 + 1.0 / N) * Lambda + np.trace(Lambda) / N * np.eye(d))


def _compare(W_PV, W_KQ, Lambda, M, key, B=64):
    """Max |torch - lsa| of the predictions and of the full map on the same prompts."""
    p = lsa.PromptDistribution(Lambda).sample(key, B, M)
    E = lsa.embed(p.X, p.y, p.x_q)
    want_pred = np.asarray(lsa.predict(E, W_PV, W_KQ))
    want_map = np.asarray(lsa.lsa_forward(E, W_PV, W_KQ))
    layer = TorchLSA(torch.from_numpy(np.array(W_PV)), torch.from_numpy(np.array(W_KQ)))
    assert layer.W_PV.dtype == torch.float64
    t = {k: torch.from_numpy(np.array(v)) for k, v in (("X", p.X), ("y", p.y), ("q", p.x_q))}
    with torch.no_grad():
        got_pred = layer.predict(t["X"], t["y"], t["q"]).numpy()
        got_map = layer(torch.from_numpy(np.array(E))).numpy()
    scale = max(1.0, float(np.max(np.abs(want_pred))))
    return (
        float(np.max(np.abs(got_pred - want_pred))) / scale,
        float(np.max(np.abs(got_map - want_map))) / max(1.0, float(np.max(np.abs(want_map)))),
        float(np.std(want_pred)),
    )


@pytest.mark.parametrize(("d", "N", "M"), [(3, 10, 4), (5, 8, 50), (2, 30, 7)])
def test_torch_lsa_matches_lsa_at_closed_form_minimum(d, N, M):
    """At W* (u = 1, U = Gamma^{-1}, eq. 4.1) on the default anisotropic Lambda, M != N."""
    Lambda = lsa.Setting(d=d, N=N, seed=d).Lambda()
    W_PV, W_KQ = lsa.from_reduced(1.0, _gamma_inverse(Lambda, N))
    key = jax.random.fold_in(jax.random.PRNGKey(11), 100 * d + M)
    err_pred, err_map, spread = _compare(W_PV, W_KQ, Lambda, M, key)
    assert spread > 0.1  # the predictions are not trivially zero
    assert err_pred <= 1e-12
    assert err_map <= 1e-12


def test_torch_lsa_matches_lsa_with_every_entry_nonzero(rng):
    """A generic layer (no zero block) tests the full map, not only the reduced view."""
    d = 4
    W_PV, W_KQ = rng.normal(size=(2, d + 1, d + 1)) * 0.3
    Lambda = lsa.Setting(d=d).Lambda()
    err_pred, err_map, _ = _compare(W_PV, W_KQ, Lambda, 9, jax.random.PRNGKey(3))
    assert err_pred <= 1e-12
    assert err_map <= 1e-12


# ----------------------------------------------------------------------------------------------
# the GPT-2-style model


def test_interleave_is_gargs_token_sequence():
    X = torch.arange(12.0).reshape(1, 3, 4)
    y = torch.tensor([[100.0, 200.0, 300.0]])
    tok = interleave(X, y)
    assert tok.shape == (1, 5, 4)
    torch.testing.assert_close(tok[0, 0], X[0, 0])
    torch.testing.assert_close(tok[0, 1], torch.tensor([100.0, 0, 0, 0]))
    torch.testing.assert_close(tok[0, 2], X[0, 1])
    torch.testing.assert_close(tok[0, 3], torch.tensor([200.0, 0, 0, 0]))
    torch.testing.assert_close(tok[0, 4], X[0, 2])  # the last label is never read


def test_model_is_causal_and_counts_positions():
    torch.manual_seed(0)
    model = GPT2Regressor(d=3, M_max=6, width=16, layers=2, heads=2).eval()
    assert model.positions.num_embeddings == 2 * 6 + 1
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(4, 7, 3, generator=g), torch.randn(4, 7, generator=g)
    with torch.no_grad():
        pred = model(X, y)
        assert pred.shape == (4, 7)
        X2, y2 = X.clone(), y.clone()
        X2[:, 4:] += 1.0  # change x_5.. and y_4..: predictions 0..3 must not move
        y2[:, 3:] -= 2.0
        pred2 = model(X2, y2)
    torch.testing.assert_close(pred[:, :4], pred2[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(pred[:, 4:], pred2[:, 4:])
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 8, 3), torch.zeros(1, 8))  # 8 points = 7 examples > M_max


# ----------------------------------------------------------------------------------------------
# configuration and data


def test_config_validation_names_the_field():
    with pytest.raises(TransformerConfigError, match="`width`"):
        TransformerConfig(width=0)
    with pytest.raises(TransformerConfigError, match="unknown transformer key"):
        TransformerConfig(widht=32)
    with pytest.raises(TransformerConfigError, match="`heads`"):
        TransformerConfig(width=30, heads=4)
    with pytest.raises(TransformerConfigError, match="`covariance`"):
        TransformerConfig(covariance="diag")
    with pytest.raises(TransformerConfigError, match="`lr`"):
        TransformerConfig(lr="0.1")  # strict: no string coercion
    with pytest.raises(TransformerConfigError, match="M_max"):
        TransformerConfig(N=20, M_max=10)
    cfg = TransformerConfig(N=20)
    assert cfg.m_max == 40
    with pytest.raises(ValueError):
        cfg.d = 3  # type: ignore[misc]  # frozen


def test_curriculum_schedule():
    cfg = TransformerConfig(
        d=6, N=10, curriculum=True, curriculum_d_start=2, curriculum_n_start=3, curriculum_every=5
    )
    assert [cfg.d_at(s) for s in (0, 4, 5, 19, 100)] == [2, 2, 3, 5, 6]
    assert [cfg.points_at(s) for s in (0, 5, 10, 100)] == [3, 5, 7, 11]
    X, _ = sample_batch(cfg, 7)
    assert X.shape == (64, 5, 6)
    assert torch.all(X[..., 3:] == 0)
    assert torch.all(X[..., :3] != 0)
    assert TransformerConfig(d=6, N=10).points_at(0) == 11


@pytest.mark.parametrize("covariance", ["fixed", "identity", "random"])
def test_data_is_a_function_of_seed_and_step(covariance):
    cfg = TransformerConfig(d=4, N=6, covariance=covariance, batch=8, seed=3)
    torch.manual_seed(123)  # the global RNG plays no part
    a = sample_batch(cfg, 17)
    torch.manual_seed(456)
    b = sample_batch(cfg, 17)
    c = sample_batch(cfg, 18)
    d = sample_batch(cfg.replace(seed=4), 17)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    assert stream_seed(3, 17) != stream_seed(17, 3)


def test_training_covariances_have_the_right_second_moment():
    """E[x x^T] is Lambda (fixed), I (identity) and E diag(Exp(1)) = I (random), per batch of
    20,000 prompts x 6 points (tolerance ~ 6 standard errors)."""
    d = 3
    for covariance, want in [
        ("fixed", lsa.Setting(d=d).Lambda()),
        ("identity", np.eye(d)),
        ("random", np.eye(d)),
    ]:
        cfg = TransformerConfig(d=d, N=5, covariance=covariance, batch=20_000)
        X, y = sample_batch(cfg, 0, dtype=torch.float64)
        x = X.reshape(-1, d).numpy()
        np.testing.assert_allclose(x.T @ x / len(x), want, atol=0.06 * np.max(want))
        w = np.linalg.lstsq(X[0].numpy(), y[0].numpy(), rcond=None)[0]
        np.testing.assert_allclose(X[0].numpy() @ w, y[0].numpy(), atol=1e-10)  # noiseless
    # random covariance: the diagonal scale is per prompt (kurtosis of x_1 across prompts)
    cfg = TransformerConfig(d=d, N=40, covariance="random", batch=4000)
    X, _ = sample_batch(cfg, 1, dtype=torch.float64)
    per_prompt = (X[..., 0] ** 2).mean(dim=1)  # ~ lambda_1 ~ Exp(1): variance 1
    assert 0.8 < float(per_prompt.var()) < 1.3


def test_initial_weights_depend_on_the_seed_only():
    cfg = TransformerConfig(d=3, N=4, width=16, layers=1, heads=2, seed=5)
    torch.manual_seed(0)
    a = build_model(cfg).state_dict()
    state = torch.get_rng_state()
    b = build_model(cfg).state_dict()
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model(cfg.replace(seed=6)).state_dict()
    assert not torch.equal(a["read_in.weight"], c["read_in.weight"])


# ----------------------------------------------------------------------------------------------
# training, kill and resume


TINY = {
    "d": 3,
    "N": 6,
    "width": 16,
    "layers": 2,
    "heads": 2,
    "steps": 60,
    "batch": 32,
    "lr": 3e-3,
    "seed": 7,
    "covariance": "random",
    "checkpoint_every": 10,
    "threads": 1,
}


def _launch(cfg: Path, out: Path, throttle: float = 0.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "simulations.transformer.train", "--config", str(cfg)]
    cmd += ["--out", str(out), "--no-progress", "--throttle", str(throttle)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _weights(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)


def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    full, killed = tmp_path / "full", tmp_path / "killed"

    ref = _launch(cfg, full)
    # the run to kill sleeps 0.15 s after every step (numbers unchanged), so that the kill
    # lands between its first checkpoint and its end
    victim = _launch(cfg, killed, throttle=0.15)
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.5)  # a few more steps past the checkpoint: those are lost
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "result.json").exists()
    state = torch.load(ckpt, weights_only=True)
    assert 10 <= state["step"] < TINY["steps"] and state["step"] % 10 == 0
    assert len(state["losses"]) == state["step"]

    _, err = ref.communicate(timeout=120)
    assert ref.returncode == 0, err.decode()[-2000:]
    resumed = _launch(cfg, killed)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()[-2000:]

    res_full = json.loads((full / "result.json").read_text())
    res_killed = json.loads((killed / "result.json").read_text())
    assert res_full["resumed_from"] == 0
    assert res_killed["resumed_from"] == state["step"]  # the last checkpoint, <= one interval lost
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = np.loadtxt(full / "loss.csv", skiprows=1)
    lb = np.loadtxt(killed / "loss.csv", skiprows=1)
    np.testing.assert_array_equal(la, lb)
    assert res_full["provenance"]["git"] and res_full["torch"]["deterministic"] is True


@pytest.mark.parametrize("bf16", [False, True])
def test_training_loss_falls(tmp_path, bf16):
    """A few hundred Adam steps of a tiny model on Lambda = I (d = 2): the prefix-averaged loss
    falls below its start (about E y^2 = d, the zero predictor's loss), by more than 10%; also
    under bf16 autocast of the forward pass (CPU autocast here; the gpu preset uses CUDA's)."""
    from simulations.transformer.train import train

    cfg = TransformerConfig(
        d=2, N=6, width=16, layers=2, heads=2, steps=300, batch=64, lr=3e-3, seed=7,
        covariance="identity", checkpoint_every=300, bf16=bf16,
    )  # fmt: skip
    res = train(cfg, tmp_path / "run", progress=False)
    assert res["torch"]["bf16_autocast"] is bf16
    loss = np.loadtxt(tmp_path / "run" / "loss.csv", skiprows=1)
    assert len(loss) == 300 and res["resumed_from"] == 0
    assert loss[-50:].mean() < 0.9 * loss[:50].mean()
    assert loss[:50].mean() > 0.8 * cfg.d  # it started near the zero predictor


def test_figure1_table_measures_on_common_prompts():
    """The evaluation plumbing on an untrained model: the zero predictor's error/d is c (E y^2
    = c d on both laws), OLS interpolates once M >= d, the model's column differs from both,
    and the LSA rows are the closed forms (positive, decreasing in M on c = 1)."""
    from simulations.transformer.experiments import figure1_table, lsa_risk

    d, N, M_max = 2, 3, 5
    torch.manual_seed(0)
    model = GPT2Regressor(d=d, M_max=M_max, width=16, layers=1, heads=2)
    table = figure1_table(
        {"tf": model}, {"lsa-I": "identity", "lsa-rand": "random"}, d=d, N=N, M_max=M_max,
        cs=(1.0, 4.0), n_prompts=400, batch_size=200, eval_seed=5,
    )  # fmt: skip
    mc = table[table["kind"] == "monte carlo"]
    assert set(mc["predictor"]) == {"tf", "OLS", "zero"}
    assert len(mc) == 2 * 2 * 3 * (M_max + 1) and (mc["n_prompts"] == 400).all()
    for (law, c), sub in mc.groupby(["law", "c"]):
        zero = sub[sub["predictor"] == "zero"]
        z = (zero["error_per_d"] - c) / zero["se_per_d"]
        assert np.all(np.abs(z) < 5), (law, c, z.tolist())
        ols = sub[(sub["predictor"] == "OLS") & (sub["M"] >= d)]
        assert np.all(ols["error_per_d"] < 1e-12 * c)
    exact = table[table["kind"] == "exact"]
    assert exact["M"].min() == 1 and (exact["error_per_d"] > 0).all()
    row = exact[(exact["predictor"] == "lsa-I") & (exact["law"] == "scaled") & (exact["c"] == 1)]
    assert np.all(np.diff(row.sort_values("M")["error_per_d"].to_numpy()) < 0)
    assert row[row["M"] == 4]["error_per_d"].item() == pytest.approx(
        lsa_risk("identity", "scaled", d, N, 4, 1.0) / d, rel=1e-15
    )


def test_cli_registers_transformer_without_importing_torch_models():
    """`lsa transformer` is a registered subcommand; building the parser imports no torch code."""
    code = (
        "import sys; from simulations.cli import build_parser; "
        "a = build_parser().parse_args(['transformer', '--quick', '--out', 'x']); "
        "print(a.quick, a.out, a.jobs, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "x", "2", "False"]
