"""`lsa transformer`: train two GPT-2-style transformers (Lambda = I and random Exp(1)
covariances), draw ZFB's Figure 1 beside OLS, the zero predictor and the trained LSA, and
compare them with the in-context algorithms (Garg et al.'s catalogue, Akyürek et al.'s SPD and
ILWD) and probe their hidden states (issue 11 §2; `docs/transformer.md`).

Needs the `transformer` extra (`pip install ".[transformer]"`, the CPU build of torch); torch is
imported only when this command runs.

Presets (`--preset`, or `--quick` for `quick`):

- `quick`: d = 5, N = 20, M_max = 40, width 32, 2 layers, 2 heads, 2000 Adam steps each at
  batch 64, lr 1e-3; 1000 evaluation prompts per point (about 10 minutes on 2 CPU cores);
- `default`: d = 5, N = 20, M_max = 40, width 64, 3 layers, 2 heads, 10,000 steps each,
  4000 prompts per point;
- `gpu`: d = 10, N = 30, M_max = 60, width 128, 6 layers, 4 heads, 10,000 steps, on CUDA with
  bf16 autocast and `torch.compile` (recorded in each run's `torch` provenance).

Output directory (default `runs/transformer-<preset>`):

- `runs/identity/`, `runs/random/`: the two training runs (`simulations.transformer.train`
  run directories: config, checkpoint, final weights, loss of every step, result); an
  interrupted command resumes them from their last checkpoint;
- `figure1.csv`, `figure1.png`: error/d against M for test covariances c I and
  c diag(Exp(1)), c in {1, 4, 9} (ZFB Figure 1);
- `covariate_scale.csv`, `covariate_scale.png`: error/d at M = N against the covariate scale
  x -> s x, s in [1/3, 3];
- `garg.csv`, `garg.png`: error/d against M for the transformers, OLS, ridge, averaging, 3-NN,
  GD and the LSA limits, one panel per entry of Garg et al.'s catalogue (quick: 7 entries);
- `akyurek.csv`, `akyurek.png`: SPD and ILWD of each transformer against each reference, by M;
- `probing.csv`, `probing.png`: held-out R² of linear probes for w, X^T y and <w, x_q> on every
  layer's hidden state at the query token, with a randomly initialised control;
- `summary.json`: presets, configurations, final training losses, timings, evaluation seeds and
  provenance.

`--experiments` runs a subset of figure1, garg, akyurek, probing (all by default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..provenance import provenance, write_json

MODEL_SIZE: dict[str, dict[str, Any]] = {
    "quick": {"d": 5, "N": 20, "M_max": 40, "width": 32, "layers": 2, "heads": 2,
              "steps": 2000, "batch": 64, "lr": 1e-3, "checkpoint_every": 250},
    "default": {"d": 5, "N": 20, "M_max": 40, "width": 64, "layers": 3, "heads": 2,
                "steps": 10_000, "batch": 64, "lr": 1e-3, "checkpoint_every": 500},
    "gpu": {"d": 10, "N": 30, "M_max": 60, "width": 128, "layers": 6, "heads": 4,
            "steps": 10_000, "batch": 64, "lr": 3e-4, "checkpoint_every": 1000,
            "device": "cuda", "bf16": True, "compile": True},
}  # fmt: skip
EVAL_PROMPTS = {"quick": 1000, "default": 4000, "gpu": 4000}
#: Sizes of the Garg, Akyürek and probing evaluations. `quick` keeps them to about a minute on
#: a busy 2-core CPU: Garg on the catalogue entries whose every M comes from one prompt (the
#: prompt-dependent queries need a compiled kernel per M), fewer prompts.
ICL_EVAL: dict[str, dict[str, Any]] = {
    "quick": {"garg_evals": ("standard", "skewed", "half_subspace", "scale-x=0.333",
                             "scale-x=3", "scale-y=3", "noisyLR"),
              "garg_prompts": 300, "aky_Ms": (1, 3, 5, 10, 20, 30, 40), "aky_prompts": 200,
              "probe_train": 2000, "probe_test": 2000},
    "default": {"garg_evals": None, "garg_prompts": 2000,
                "aky_Ms": (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 25, 30, 35, 40),
                "aky_prompts": 1000, "probe_train": 8000, "probe_test": 10_000},
    "gpu": {"garg_evals": None, "garg_prompts": 2000,
            "aky_Ms": (1, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60),
            "aky_prompts": 1000, "probe_train": 8000, "probe_test": 10_000},
}  # fmt: skip
EXPERIMENTS = ("figure1", "garg", "akyurek", "probing")
CONTROL = "control: random initialisation"
TRAINED_ON = ("identity", "random")
LABEL = {"identity": "transformer, trained on Λ = I", "random": "transformer, random Λ"}
LSA_LABEL = {"identity": "LSA (exact), trained on Λ = I", "random": "LSA (exact), random Λ"}
LSA_COLOR = {"identity": "C0", "random": "C3"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "transformer",
        help="train softmax transformers and draw ZFB Figure 1 (needs the transformer extra)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the quick preset")
    p.add_argument("--preset", choices=tuple(MODEL_SIZE), default=None, help="model size")
    p.add_argument("--out", type=Path, help="output directory (default runs/transformer-<preset>)")
    p.add_argument("--jobs", type=int, default=2, help="models trained in parallel (default 2)")
    p.add_argument("--seed", type=int, default=0, help="training seed (weights and data)")
    p.add_argument("--eval-seed", type=int, default=2024, help="seed of the evaluation prompts")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--experiments",
        default=",".join(EXPERIMENTS),
        help=f"comma-separated subset of {','.join(EXPERIMENTS)} (default: all)",
    )
    p.set_defaults(func=run)


def _train_all(configs: dict[str, Any], out: Path, jobs: int, progress: bool) -> None:
    """Train (or resume) every model; `jobs > 1` runs them as parallel processes."""
    from simulations.transformer.train import train

    if jobs <= 1:
        for name, cfg in configs.items():
            train(cfg, out / "runs" / name, progress=progress, desc=name)
        return
    pending = list(configs.items())
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            name, cfg = pending.pop(0)
            run_dir = out / "runs" / name
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "request.json").write_text(json.dumps(cfg.model_dump(mode="json")))
            cmd = [sys.executable, "-m", "simulations.transformer.train",
                   "--config", str(run_dir / "request.json"), "--out", str(run_dir),
                   "--position", str(len(running))]  # fmt: skip
            if not progress:
                cmd.append("--no-progress")
            env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
            running.append((name, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)))
        time.sleep(0.5)
        for item in list(running):
            code = item[1].poll()
            if code is not None:
                running.remove(item)
                if code:
                    failed.append(f"{item[0]} (exit {code})")
    if failed:
        raise RuntimeError(f"training failed: {', '.join(failed)}; rerun to resume.")


def run(args: argparse.Namespace) -> int:
    try:
        import torch
    except ModuleNotFoundError:
        print(
            'lsa transformer: needs torch: pip install ".[transformer]" (CPU build of torch)',
            file=sys.stderr,
        )
        return 2
    import matplotlib.pyplot as plt

    from simulations.transformer import experiments as ex
    from simulations.transformer.train import TransformerConfig, load_model

    preset = args.preset or ("quick" if args.quick else "default")
    if args.quick and args.preset not in (None, "quick"):
        raise ValueError("give either --quick or --preset, not both.")
    out = args.out or Path("runs") / f"transformer-{preset}"
    out.mkdir(parents=True, exist_ok=True)
    size = MODEL_SIZE[preset]
    configs = {cov: TransformerConfig(**size, covariance=cov, seed=args.seed) for cov in TRAINED_ON}
    t0 = time.perf_counter()
    _train_all(configs, out, max(1, args.jobs), not args.no_progress)
    t_train = time.perf_counter() - t0

    models, results = {}, {}
    for cov in TRAINED_ON:
        model, _ = load_model(out / "runs" / cov)
        models[LABEL[cov]] = model
        results[cov] = json.loads((out / "runs" / cov / "result.json").read_text())
    d, N, M_max = size["d"], size["N"], size["M_max"]
    chosen = [e.strip() for e in args.experiments.split(",") if e.strip()]
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {', '.join(EXPERIMENTS)}.")
    torch.set_num_threads(1)
    n_params = results["identity"]["n_parameters"]
    model_caption = (
        f"GPT-2-style, width {size['width']}, {size['layers']} layers, {size['heads']} heads, "
        f"{n_params} parameters, {size['steps']} Adam steps (batch {size['batch']}, lr "
        f"{size['lr']:g}), d = {d}, N = {N}, M_max = {M_max}; final training loss "
        + ", ".join(f"{c}: {results[c]['final_loss']:.3f}" for c in TRAINED_ON)
    )
    summary: dict[str, Any] = {
        "preset": preset,
        "size": size,
        "configs": {c: configs[c].model_dump(mode="json") for c in TRAINED_ON},
        "training": {
            c: {
                k: results[c][k]
                for k in (
                    "final_loss",
                    "initial_loss",
                    "n_parameters",
                    "steps_per_s",
                    "wall_s",
                    "resumed_from",
                    "torch",
                )
            }
            for c in TRAINED_ON
        },
        "evaluation": {},
        "wall_s": {"train": t_train},
    }
    fig1 = None
    if "figure1" in chosen:
        lsa_trained = {LSA_LABEL[c]: c for c in TRAINED_ON}
        lsa_colors = {LSA_LABEL[c]: LSA_COLOR[c] for c in TRAINED_ON}
        n_eval = EVAL_PROMPTS[preset]
        t1 = time.perf_counter()
        fig1 = ex.figure1_table(models, lsa_trained, d=d, N=N, M_max=M_max, n_prompts=n_eval,
                                eval_seed=args.eval_seed)  # fmt: skip
        scale = ex.covariate_scale_table(models, lsa_trained, d=d, N=N, M_max=M_max,
                                         n_prompts=n_eval,
                                         eval_seed=args.eval_seed + 1)  # fmt: skip
        summary["wall_s"]["evaluate"] = time.perf_counter() - t1
        fig1.to_csv(out / "figure1.csv", index=False)
        scale.to_csv(out / "covariate_scale.csv", index=False)
        caption = model_caption + (
            f". {n_eval} prompts per point, eval seed {args.eval_seed}; bars: 90%."
        )
        fig = ex.plot_figure1(fig1, N=N, caption=caption, lsa_colors=lsa_colors)
        fig.savefig(out / "figure1.png", dpi=130)
        plt.close(fig)
        fig = ex.plot_covariate_scale(scale, N=N, caption=caption, lsa_colors=lsa_colors)
        fig.savefig(out / "covariate_scale.png", dpi=130)
        plt.close(fig)
        summary["evaluation"].update(
            {
                "n_prompts": n_eval,
                "figure1_eval_seed": args.eval_seed,
                "covariate_scale_eval_seed": args.eval_seed + 1,
                "lsa_risk": "theory.random_covariance (exact, no Monte Carlo)",
            }
        )
    control = None
    if "probing" in chosen:
        from simulations.transformer.train import build_model

        control = build_model(configs["identity"])  # the identity model's initial weights
    icl = _icl_experiments(chosen, models, control, preset, d, N, M_max, args.eval_seed,
                           model_caption, out, summary["wall_s"])  # fmt: skip
    summary["evaluation"].update(icl)
    summary["provenance"] = provenance()
    write_json(out / "summary.json", summary)
    if fig1 is not None:
        _print_summary(fig1, d, N, M_max, out)
    return 0


def _icl_experiments(
    chosen: list[str],
    models: dict[str, Any],
    control: Any,
    preset: str,
    d: int,
    N: int,
    M_max: int,
    eval_seed: int,
    model_caption: str,
    out: Path,
    wall: dict[str, float],
) -> dict[str, Any]:
    """Garg et al.'s catalogue, Akyürek et al.'s SPD/ILWD and the probes (issue 11 §2): tables
    (CSV) first, then figures drawn from the CSVs read back. Returns their evaluation record."""
    import pandas as pd

    from simulations.transformer import comparisons as cmp
    from simulations.transformer import figures as tfig
    from simulations.transformer import probing
    from simulations.transformer.bridge import TorchPredictor

    size = ICL_EVAL[preset]
    subjects = {name: TorchPredictor(m, name) for name, m in models.items()}
    refs = cmp.reference_predictors(d, N)
    seeds = {"garg": eval_seed + 2, "akyurek": eval_seed + 3, "probe_train": eval_seed + 4,
             "probe_test": eval_seed + 5}  # fmt: skip
    record: dict[str, Any] = {}
    if "garg" in chosen:
        t = time.perf_counter()
        table = cmp.garg_table(subjects, refs, d=d, M_max=M_max, evals=size["garg_evals"],
                               n_prompts=size["garg_prompts"], eval_seed=seeds["garg"],
                               catalogue_seed=0)  # fmt: skip
        wall["garg"] = time.perf_counter() - t
        table.to_csv(out / "garg.csv", index=False)
        caption = model_caption + (
            f". Garg et al.'s catalogue (simulations.icl.catalogue.garg_catalogue, bases from "
            f"PRNGKey(0)); {size['garg_prompts']} prompts per entry, eval seed {seeds['garg']} "
            "(entry e: fold_in(PRNGKey(seed), e)); bands: 90%. LSA: the layer at its "
            "gradient-flow limit, as a predictor (dotted)."
        )
        tfig.plot_garg(pd.read_csv(out / "garg.csv"), out / "garg.png", caption=caption)
        record["garg"] = {"evals": list(dict.fromkeys(table["eval"])),
                          "n_prompts": size["garg_prompts"], "eval_seed": seeds["garg"],
                          "catalogue_seed": 0}  # fmt: skip
    if "akyurek" in chosen:
        t = time.perf_counter()
        table = cmp.akyurek_table(subjects, refs, d=d, Ms=size["aky_Ms"],
                                  n_prompts=size["aky_prompts"],
                                  eval_seed=seeds["akyurek"])  # fmt: skip
        wall["akyurek"] = time.perf_counter() - t
        table.to_csv(out / "akyurek.csv", index=False)
        caption = model_caption + (
            f". Test law x, w ~ N(0, I), noiseless; {size['aky_prompts']} contexts per M, "
            f"{2 * d} probe inputs each, eval seed {seeds['akyurek']}; divided by d; bars: 90%."
        )
        tfig.plot_akyurek(pd.read_csv(out / "akyurek.csv"), out / "akyurek.png", d=d,
                          caption=caption)  # fmt: skip
        record["akyurek"] = {"Ms": list(size["aky_Ms"]), "n_prompts": size["aky_prompts"],
                             "n_probe": 2 * d, "eval_seed": seeds["akyurek"]}  # fmt: skip
    if "probing" in chosen:
        t = time.perf_counter()
        table = probing.probe_table({**models, CONTROL: control}, d=d, M=N,
                                    n_train=size["probe_train"], n_test=size["probe_test"],
                                    train_seed=seeds["probe_train"],
                                    eval_seed=seeds["probe_test"])  # fmt: skip
        wall["probing"] = time.perf_counter() - t
        table.to_csv(out / "probing.csv", index=False)
        caption = model_caption + (
            f". Ridge probes (lam = 1e-3 per example, standardised features) on the hidden "
            f"state at the query token, M = {N} examples, x, w ~ N(0, I); "
            f"{size['probe_train']} training prompts (seed {seeds['probe_train']}), "
            f"{size['probe_test']} held-out (seed {seeds['probe_test']}); bars: 90%. Control "
            "(dashed): the same architecture at its random initialisation (the Λ = I model's "
            "starting weights), probed the same way."
        )
        tfig.plot_probes(pd.read_csv(out / "probing.csv"), out / "probing.png", control=CONTROL,
                         caption=caption)  # fmt: skip
        record["probing"] = {"M": N, "n_train": size["probe_train"],
                             "n_test": size["probe_test"], "train_seed": seeds["probe_train"],
                             "test_seed": seeds["probe_test"], "lam": 1e-3,
                             "control": "random initialisation (the Λ = I run's seed)"}  # fmt: skip
    return record


def _print_summary(table: Any, d: int, N: int, M_max: int, out: Path) -> None:
    print(f"lsa transformer: error / d at M = N = {N} and M = M_max = {M_max} -> {out}/")
    sub = table[table["M"].isin([N, M_max])]
    pivot = sub.pivot_table(index=["law", "c", "predictor"], columns="M", values="error_per_d")
    print(pivot.round(3).to_string())


if __name__ == "__main__":
    from . import main

    sys.exit(main(["transformer", *sys.argv[1:]]))
