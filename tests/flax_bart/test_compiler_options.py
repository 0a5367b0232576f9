"""`compiler_options` reach every program a model compiles (forward, cache, generate) and FAST_COMPILE
computes what the default compilation computes, up to float32 rounding."""

import jax
import numpy as np
import pytest

from flax_bart import FAST_COMPILE, BartConfig, FlaxBartForConditionalGeneration
from tests.bart_helpers import TINY

CFG = BartConfig(**TINY)


def _inputs():
    rng = np.random.default_rng(1)
    ids = rng.integers(4, TINY["vocab_size"], (2, 7)).astype(np.int32)
    ids[:, -1] = 2
    return ids, np.ones_like(ids)


def test_fast_compile_matches_the_default_compilation():
    ids, mask = _inputs()
    full = FlaxBartForConditionalGeneration(CFG, seed=0)
    fast = FlaxBartForConditionalGeneration(CFG, seed=0, compiler_options=FAST_COMPILE)
    assert fast.compiler_options == FAST_COMPILE and full.compiler_options is None
    a = full(ids, attention_mask=mask, decoder_input_ids=ids, output_hidden_states=True)
    b = fast(ids, attention_mask=mask, decoder_input_ids=ids, output_hidden_states=True)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
    ga = full.generate(ids, attention_mask=mask, max_new_tokens=4, num_beams=1, do_sample=False).sequences
    gb = fast.generate(ids, attention_mask=mask, max_new_tokens=4, num_beams=1, do_sample=False).sequences
    np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb))


@pytest.mark.parametrize("path", ["call", "encode", "init_cache", "generate"])
def test_every_program_is_compiled_with_the_options(path):
    # An option XLA does not know fails at compile time: proof that the options reach that program.
    ids, mask = _inputs()
    model = FlaxBartForConditionalGeneration(CFG, seed=0, compiler_options={"xla_no_such_option_": 1})
    calls = {
        "call": lambda: model(ids, attention_mask=mask, decoder_input_ids=ids),
        "encode": lambda: model.encode(ids, attention_mask=mask),
        "init_cache": lambda: model.init_cache(2, 4, np.zeros((2, 7, TINY["d_model"]), np.float32)),
        "generate": lambda: model.generate(ids, attention_mask=mask, max_new_tokens=2),
    }
    with pytest.raises(Exception, match="xla_no_such_option_"):
        calls[path]()


@pytest.mark.parametrize("bad, word", [([("a", 1)], "dict"), ({"xla_x": [1]}, "xla_x"), ({3: 1}, "names")])
def test_bad_compiler_options_are_refused_by_name(bad, word):
    with pytest.raises(TypeError, match=word):
        FlaxBartForConditionalGeneration(CFG, _do_init=False, compiler_options=bad)


def test_from_pretrained_passes_the_options(tmp_path):
    FlaxBartForConditionalGeneration(CFG, seed=0).save_pretrained(tmp_path)
    model = FlaxBartForConditionalGeneration.from_pretrained(tmp_path, compiler_options=FAST_COMPILE)
    assert model.compiler_options == FAST_COMPILE
