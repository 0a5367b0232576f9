"""`flax_bart.search.first_argmax` picks the index `jnp.argmax` picks, in every case greedy decoding can meet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from flax_bart.search import first_argmax

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, np.finfo(np.float32).max, np.finfo(np.float32).min]


def _both(scores):
    x = jnp.asarray(scores, jnp.float32)
    got = np.asarray(jax.jit(first_argmax)(x))
    want = np.asarray(jnp.argmax(x, axis=-1))
    return got, want


def test_ties_infinities_and_nans_pick_argmax_index():
    ninf = -np.inf
    rows = np.array([
        [1.0, 3.0, 3.0, 2.0],            # tie: the first maximum
        [ninf, ninf, ninf, ninf],        # every token banned: index 0, as argmax
        [ninf, 2.0, np.nan, 5.0],        # a NaN wins, as in argmax
        [np.nan, np.nan, 1.0, 1.0],      # the first NaN
        [np.inf, 1.0, np.inf, np.nan],   # NaN beats +inf
        [-0.0, 0.0, -1.0, -0.0],         # signed zeros compare equal: the first
    ], np.float32)
    got, want = _both(rows)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32
    assert list(got) == [1, 0, 2, 0, 3, 0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 70), st.data())
def test_random_rows_with_special_values(rows, vocab, data):
    values = data.draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-4, 4, width=32),
                                min_size=rows * vocab, max_size=rows * vocab))
    got, want = _both(np.array(values, np.float32).reshape(rows, vocab))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("vocab", [50265, 7])
def test_large_vocab_ties(vocab):
    rng = np.random.default_rng(vocab)
    x = rng.integers(0, 4, size=(4, vocab)).astype(np.float32)   # many ties at the maximum
    got, want = _both(x)
    np.testing.assert_array_equal(got, want)
