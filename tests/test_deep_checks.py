"""simulations.checks.deep: the noisy scalar-family optimum and the spectral SPD formula against
independent computations, and the cheap checks d1-d2 pass."""

from __future__ import annotations

import jax
import numpy as np
from scipy.optimize import minimize

import lsa
from simulations.checks import deep as cd
from theory.deep import noisy_optimal_step_sizes, optimal_step_sizes, wishart_moments

lsa.set_precision("float64")


def test_noisy_optimum_reduces_and_minimises():
    d, N = 8, 40
    for L in (1, 2, 3):
        np.testing.assert_allclose(
            noisy_optimal_step_sizes(d, N, L, 0.0), optimal_step_sizes(d, N, L), rtol=1e-10
        )
    nu = 0.25
    np.testing.assert_allclose(
        noisy_optimal_step_sizes(d, N, 1, nu), [N / (N + d + 1 + nu)], rtol=1e-12
    )
    # L = 2: a numerical minimiser of the risk written in the step sizes
    m = [float(x) for x in wishart_moments(d, N, 4)]

    def risk(a):
        c = np.array([1.0, -(a[0] + a[1]), a[0] * a[1]])
        clean = sum(c[i] * c[j] * m[i + j] for i in range(3) for j in range(3))
        noise = sum(c[i] * c[j] * m[i + j - 1] for i in (1, 2) for j in (1, 2))
        return clean + nu / N * noise

    best = minimize(
        risk, [0.5, 1.2], method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-15}
    )
    np.testing.assert_allclose(np.sort(best.x), noisy_optimal_step_sizes(d, N, 2, nu), atol=1e-6)


def test_spectral_values_against_direct_formula():
    steps = ((tuple(optimal_step_sizes(8, 40, 2).tolist()),),)
    v = np.asarray(cd.spectral_values(jax.random.PRNGKey(0), 50, steps, (1.0,), (0.0,), 0.01))
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (50, 40, 8)))
    s = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / 40)
    a = steps[0][0]
    phi = (1 - (1 - a[0] * s) * (1 - a[1] * s)) / s
    np.testing.assert_allclose(v[:, 0], np.sum((phi - 1 / (s + 1 / 40)) ** 2 * s**2, 1), rtol=1e-10)
    np.testing.assert_allclose(v[:, 1], np.sum((phi - 1 / s) ** 2 * s**2, 1), rtol=1e-10)
    np.testing.assert_allclose(v[:, 3], np.sum((1 - s * phi) ** 2, 1), rtol=1e-10)


def test_identity_checks_pass_and_mutants_fail():
    c1 = cd.check_gd_identity(jax.random.PRNGKey(1))
    assert c1.passed and c1.details["mutant_fails_L>=2"]
    c2 = cd.check_gram_route(jax.random.PRNGKey(2))
    assert c2.passed and min(c2.details["mutant_query_term_dropped"]) > 1e-6
