"""In-context learning on sampled prompts: predictors, test distributions, the Monte Carlo engine.

- `simulations.icl.predictors`: the LSA at given weights and the baselines (OLS, ridge, GD, ...);
- `simulations.icl.distributions`: composable task, query and covariate laws (Garg's catalogue);
- `simulations.icl.montecarlo`: the one Monte Carlo engine (risk, SPD, ILWD with standard errors).
"""
