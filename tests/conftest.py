"""Shared test setup: strict JAX numerics per test, and one compilation cache per session.

Nothing is changed at import time: the settings are applied by fixtures and restored afterwards.
"""

import jax
import pytest

_CACHE_OPTIONS = {
    "jax_compilation_cache_dir": None,  # set to a per-session temporary directory
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
    """Many tests compile the same tiny programs (same config, same shapes, fresh closures): an XLA
    compilation cache keyed by the program text lets them reuse one another's compilations."""
    old = {k: getattr(jax.config, k) for k in _CACHE_OPTIONS}
    for k, v in _CACHE_OPTIONS.items():
        jax.config.update(k, str(tmp_path_factory.mktemp("xla-cache")) if v is None else v)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield
