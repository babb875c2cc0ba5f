"""Each statement of the papers as a check: predicted value, simulated value, tolerance, verdict.

- `simulations.checks.core`: checks a-f (Theorem 4.1, Lemmas A.3-A.5, 5.4, the full map, the
  test risk, the empirical flow);
- `simulations.checks.shift`: checks s1-s20 (task, query and covariate shift, OLS, G*, SPD/ILWD,
  Theorem 4.2).
"""
