"""`init_cache` traces only what the cache holds: an empty self-attention cache and the cross-attention
K/V of the encoder's states (flax_bart.modules: BartAttention._create_cache), with the values a full
decoder pass would store."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from tests.bart_helpers import TINY

CFG = BartConfig(**{**TINY, "encoder_layers": 2, "decoder_layers": 3})


def _enc(rows=2, length=6):
    return np.random.default_rng(0).normal(size=(rows, length, CFG.d_model)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("head", ["lm", "base"])
def test_the_cache_holds_zeros_and_the_encoders_projected_keys_and_values(head, dtype):
    model = MODEL_CLASSES[head](CFG, seed=0, dtype=getattr(jnp, dtype))
    enc = _enc()
    cache = traverse_util.flatten_dict(model.init_cache(2, 9, enc))
    params = traverse_util.flatten_dict(model.params)
    prefix = ("model",) if head == "lm" else ()
    heads, hd = CFG.decoder_attention_heads, CFG.d_model // CFG.decoder_attention_heads
    for i in range(CFG.decoder_layers):
        layer = prefix + ("decoder", "layers", str(i))
        for name in ("cached_key", "cached_value"):
            got = cache[layer + ("self_attn", name)]
            assert got.shape == (2, 9, heads, hd) and got.dtype == jnp.dtype(dtype)
            assert not np.asarray(got, np.float32).any()
        assert int(cache[layer + ("self_attn", "cache_index")]) == 0
        for name, proj in (("cached_key", "k_proj"), ("cached_value", "v_proj")):
            kernel = params[layer + ("encoder_attn", proj, "kernel")]
            bias = params[layer + ("encoder_attn", proj, "bias")]
            want = (enc.astype(dtype).astype(np.float32) @ np.asarray(kernel.astype(dtype), np.float32)
                    + np.asarray(bias.astype(dtype), np.float32))
            got = cache[layer + ("encoder_attn", name)]
            assert got.shape == (2, 6, heads, hd) and got.dtype == jnp.dtype(dtype)
            tol = 1e-5 if dtype == "float32" else 2e-2
            np.testing.assert_allclose(np.asarray(got, np.float32), want.reshape(2, 6, heads, hd), rtol=tol, atol=tol)
    assert len(cache) == 5 * CFG.decoder_layers


def _dots(model, head, enc):
    """dot_general count of the program `init_cache` runs (the decoder applied with init_cache=True)."""
    ids = np.zeros((2, 1), np.int32)
    if head == "causal":
        fn = lambda p: model.module.apply({"params": p}, input_ids=ids, attention_mask=None, position_ids=ids,
                                          encoder_hidden_states=None, encoder_attention_mask=None,
                                          init_cache=True, cache_length=9, mutable=["cache"])
    else:
        fn = lambda p: model.module.apply({"params": p}, decoder_input_ids=ids, encoder_hidden_states=enc,
                                          encoder_attention_mask=None, decoder_attention_mask=None,
                                          decoder_position_ids=ids, init_cache=True, cache_length=9,
                                          method="decode", mutable=["cache"])
    return str(jax.make_jaxpr(fn)(model.params)).count("dot_general")


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_creating_a_cache_traces_no_decoder_layer_computation(head):
    """Only the cross K/V projections (2 per layer) and the head's output product are traced, so the
    count does not grow with the rest of a layer: without the shortcut it is ~10 per layer."""
    model = MODEL_CLASSES[head](CFG, seed=0)
    cross = 2 * CFG.decoder_layers if head == "lm" else 0
    assert _dots(model, head, _enc()) == cross + 1


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_the_first_steps_after_init_cache_match_a_full_pass(head):
    """Decoding from the created cache gives the uncached forward's logits, position by position."""
    model = MODEL_CLASSES[head](CFG, seed=0)
    rng = np.random.default_rng(1)
    ids = rng.integers(4, TINY["vocab_size"], (2, 5)).astype(np.int32)
    if head == "causal":
        full = model(ids).logits
        cache = model.init_cache(2, 5)
        steps = []
        for s in range(5):
            out = model(ids[:, s:s + 1], past_key_values=cache)
            cache = out.past_key_values
            steps.append(out.logits)
    else:
        src = rng.integers(4, TINY["vocab_size"], (2, 7)).astype(np.int32)
        enc = model.encode(src).last_hidden_state
        full = model.decode(ids, enc).logits
        cache = model.init_cache(2, 5, enc)
        steps = []
        for s in range(5):
            out = model.decode(ids[:, s:s + 1], enc, past_key_values=cache)
            cache = out.past_key_values
            steps.append(out.logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
