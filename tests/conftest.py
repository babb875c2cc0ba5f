"""Test configuration: float64 everywhere (theory checks need it) and a seeded key fixture."""

import jax
import numpy as np
import pytest

import lsa

lsa.set_precision("float64")  # an explicit call: importing lsa changes nothing in JAX


@pytest.fixture
def key() -> jax.Array:
    return jax.random.PRNGKey(20240521)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240521)


@pytest.fixture
def aniso_lambda() -> np.ndarray:
    """Anisotropic, non-diagonal Lambda (d = 4, eigenvalues spread 10x, Haar rotation)."""
    return np.asarray(lsa.rotated_covariance(np.array([0.4, 0.9, 1.7, 4.0]), jax.random.PRNGKey(7)))
