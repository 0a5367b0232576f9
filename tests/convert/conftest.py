"""Fixtures for the converter tests (helpers live in convert_helpers.py)."""

import pytest


@pytest.fixture(scope="session")
def hf():
    """transformers (test-only ground truth), imported once."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers
