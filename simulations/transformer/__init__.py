"""Trained softmax transformers in torch beside the LSA theory (issue 11).

Needs the `transformer` extra (`pip install ".[transformer]"`: the CPU build of torch). Nothing
else in lsa-flow imports this package: `import simulations` and `lsa reproduce` work without
torch; `lsa transformer` imports it when it runs.

- `model`: `GPT2Regressor` (Garg et al.'s reading of a prompt, torch's own transformer blocks)
  and `TorchLSA` (ZFB's single LSA layer in torch, tested against `lsa` to 1e-12);
- `train`: `TransformerConfig` and `train` (deterministic, resumable after SIGKILL);
- `experiments`: ZFB Figure 1 against OLS, the zero predictor and the trained LSA's risk;
- `bridge`: `TorchPredictor`, the torch model as a `simulations.icl` predictor;
- `comparisons`: Garg et al.'s catalogue and Akyürek et al.'s SPD / ILWD against the references;
- `probing`: linear probes of every layer's hidden state at the query token;
- `figures`: the figures of the last two, drawn from their tables.
"""
