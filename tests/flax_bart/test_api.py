"""The 4.x wrapper surface: outputs, flags, dtypes, _do_init=False, train mode, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig, FlaxBartForConditionalGeneration, FlaxBartForQuestionAnswering, InputError
from tests.bart_helpers import TINY, batch

CFG = BartConfig(**TINY)


@pytest.fixture(scope="module")
def qa():
    return FlaxBartForQuestionAnswering(CFG, seed=0)


def test_output_access_like_4x(qa):
    ids, mask = batch()
    out = qa(ids, attention_mask=mask)
    assert out.keys() == ["start_logits", "end_logits", "encoder_last_hidden_state"]
    np.testing.assert_array_equal(out[0], out.start_logits)
    np.testing.assert_array_equal(out["end_logits"], out.end_logits)
    tup = qa(ids, attention_mask=mask, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 3
    np.testing.assert_array_equal(tup[1], out.end_logits)
    full = qa(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(full.encoder_hidden_states) == CFG.encoder_layers + 1
    assert len(full.decoder_hidden_states) == CFG.decoder_layers + 1
    assert full.cross_attentions[0].shape == (3, CFG.decoder_attention_heads, 9, 9)
    assert (qa.main_input_name, qa.framework) == ("input_ids", "flax")   # 4.x's class attributes


def test_dtype_is_compute_dtype_and_casts_do_not_touch_params(qa):
    p = qa.params
    bf = qa.to_bf16(p)
    assert bf["qa_outputs"]["kernel"].dtype == jnp.bfloat16 and p["qa_outputs"]["kernel"].dtype == jnp.float32
    mask = jax.tree_util.tree_map(lambda x: x.ndim > 1, p)  # cast matrices only
    mixed = qa.to_fp16(p, mask)
    assert mixed["qa_outputs"]["kernel"].dtype == jnp.float16 and mixed["qa_outputs"]["bias"].dtype == jnp.float32
    assert qa.to_fp32(bf)["qa_outputs"]["kernel"].dtype == jnp.float32
    half = FlaxBartForQuestionAnswering(CFG, seed=0, dtype=jnp.bfloat16)
    assert half.params["qa_outputs"]["kernel"].dtype == jnp.float32
    ids, mask_ = batch()
    out = half(ids, attention_mask=mask_, params=p)
    assert out.start_logits.dtype == jnp.bfloat16
    ref = qa(ids, attention_mask=mask_).start_logits
    m = mask_.astype(bool)
    assert np.abs(np.asarray(out.start_logits, np.float32)[m] - np.asarray(ref)[m]).max() < 0.1


def test_do_init_false_needs_explicit_params():
    m = FlaxBartForQuestionAnswering(CFG, _do_init=False)
    with pytest.raises(ValueError, match="_do_init=False"):
        m.params
    params = FlaxBartForQuestionAnswering(CFG, seed=4).params
    ids, mask = batch()
    assert m(ids, attention_mask=mask, params=params).start_logits.shape == (3, 9)
    with pytest.raises(ValueError, match="missing qa_outputs/kernel"):
        m.params = {"model": params["model"], "qa_outputs": {"bias": params["qa_outputs"]["bias"]}}


@pytest.mark.parametrize("bad,match", [
    (lambda i: i.at[0, 0].set(99) if hasattr(i, "at") else _set(i, 99), "token id 99, outside the vocabulary"),
    (lambda i: _set(i, -1), "token id -1"),
    (lambda i: i.astype(np.float32), "integer token ids"),
    (lambda i: i[0], "shape"),
    (lambda i: np.ones((1, 41), np.int32), "max_position_embeddings is 40"),
])
def test_bad_inputs_name_the_argument(qa, bad, match):
    ids, _ = batch()
    with pytest.raises(InputError, match=match):
        qa(bad(ids))


def _set(ids, v):
    out = ids.copy()
    out[0, 0] = v
    return out


def test_bad_masks_and_positions(qa):
    ids, mask = batch()
    with pytest.raises(InputError, match=r"attention_mask has shape \(3, 8\), expected \(3, 9\)"):
        qa(ids, attention_mask=mask[:, :8])
    with pytest.raises(InputError, match="position_ids holds positions"):
        qa(ids, position_ids=np.full(ids.shape, 40, np.int32))


def test_out_of_vocab_under_jit_is_nan_not_a_number(qa):
    ids, mask = batch()
    bad = _set(ids, 1000)
    out = jax.jit(lambda i: qa(i, attention_mask=mask).start_logits)(bad)
    assert np.isnan(np.asarray(out)).any()


def test_train_mode_dropout_and_layerdrop():
    cfg = CFG.replace(dropout=0.2, attention_dropout=0.1, activation_dropout=0.1, encoder_layerdrop=0.5,
                      decoder_layerdrop=0.5, encoder_layers=1, decoder_layers=2)
    m = FlaxBartForConditionalGeneration(cfg, seed=1)
    ids, mask = batch()
    with pytest.raises(InputError, match="dropout_rng"):
        m(ids, attention_mask=mask, train=True)
    a = m(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(0)).logits
    b = m(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(0)).logits
    c = m(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(1)).logits
    d = m(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(np.asarray(a)).all()
    assert not np.allclose(a, c) and not np.allclose(a, d)
    # Gradients flow through dropout and LayerDrop in train mode.
    def loss(p):
        return m(ids, attention_mask=mask, params=p, train=True, dropout_rng=jax.random.PRNGKey(2)).logits.sum()
    g = jax.grad(loss)(m.params)
    assert np.isfinite(np.asarray(g["model"]["shared"]["embedding"])).all()


def test_layerdrop_probability_one_skips_every_layer():
    """With layerdrop 1.0 every layer is skipped: the output is the embedding output."""
    cfg = CFG.replace(encoder_layerdrop=1.0)
    m = FlaxBartForConditionalGeneration(cfg, seed=1)
    ids, mask = batch()
    out = m.encode(ids, attention_mask=mask, train=True, dropout_rng=jax.random.PRNGKey(0),
                   output_hidden_states=True)
    np.testing.assert_array_equal(out.last_hidden_state, out.hidden_states[0])


def test_no_retrace_on_repeated_calls(qa):
    ids, mask = batch()
    qa(ids, attention_mask=mask)
    sizes = {k: f._cache_size() for k, f in qa._compiled.items()}
    for _ in range(3):
        qa(np.array(ids), attention_mask=np.array(mask))
    assert {k: f._cache_size() for k, f in qa._compiled.items()} == sizes


def test_encoder_outputs_batch_mismatch_in_decode(qa):
    m = FlaxBartForConditionalGeneration(CFG, seed=2)
    ids, mask = batch()
    enc = m.encode(ids, attention_mask=mask)
    with pytest.raises(InputError, match="encoder_outputs"):
        m.decode(np.ones((2, 1), np.int32), enc)
    with pytest.raises(InputError, match="max_length"):
        m.init_cache(3, 41, enc)


def test_no_retrace_for_encode_and_cached_decode():
    m = FlaxBartForConditionalGeneration(CFG, seed=3)
    ids, mask = batch()
    enc = m.encode(ids, attention_mask=mask)
    past = m.init_cache(3, 6, enc)
    out = m.decode(np.full((3, 1), 2, np.int32), enc, encoder_attention_mask=mask, past_key_values=past)
    sizes = {k: f._cache_size() for k, f in m._compiled.items()}
    assert all(v == 1 for v in sizes.values()), sizes
    for step in range(3):  # new values, same shapes: no new trace or compile
        enc = m.encode(ids + step, attention_mask=mask)
        out = m.decode(np.full((3, 1), 5 + step, np.int32), enc, encoder_attention_mask=mask,
                       past_key_values=out.past_key_values)
    m.init_cache(3, 6, enc)
    assert {k: f._cache_size() for k, f in m._compiled.items()} == sizes
