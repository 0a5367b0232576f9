"""Shared test setup: strict JAX numerics per test (no global state changed at import)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield
