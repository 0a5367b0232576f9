"""Query-blocked attention (flax_bart.modules._blocked_attention, CPU, more than QUERY_BLOCK queries)
gives what the whole-sequence attention gives: outputs, attention weights and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig, FlaxBartForConditionalGeneration
from flax_bart import modules

CFG = dict(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=640)


def _inputs(batch, enc, dec, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 64, (batch, enc)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, enc - 37:] = 0                          # right padding
    if batch > 1:
        mask[1, :] = 0                              # a row that attends to nothing
        mask[1, 3:9] = modules.ABSENT               # ... and absent keys
    dec_ids = rng.integers(4, 64, (batch, dec)).astype(np.int32)
    return ids, mask, dec_ids


def _run(model, params, ids, mask, dec_ids, block, monkeypatch):
    """The outputs with QUERY_BLOCK = block, and how many attentions took the blocked path."""
    calls = []
    inner = modules._blocked_attention
    monkeypatch.setattr(modules, "QUERY_BLOCK", block)
    monkeypatch.setattr(modules, "_blocked_attention", lambda *a: calls.append(1) or inner(*a))
    model._compiled.clear()
    out = jax.device_get(model(ids, attention_mask=mask, decoder_input_ids=dec_ids, params=params,
                               output_attentions=True, output_hidden_states=True))
    monkeypatch.undo()
    return out, len(calls)


@pytest.mark.parametrize("enc,dec", [(300, 300), (512, 40), (40, 513)])
def test_blocked_attention_matches_whole_sequence(enc, dec, monkeypatch):
    model = FlaxBartForConditionalGeneration(BartConfig(**CFG), seed=0)
    ids, mask, dec_ids = _inputs(2, enc, dec)
    blocked, n_blocked = _run(model, model.params, ids, mask, dec_ids, 128, monkeypatch)   # some blocks padded
    whole, n_whole = _run(model, model.params, ids, mask, dec_ids, 10 ** 6, monkeypatch)
    # encoder self-attention runs blocked when enc > 128; decoder self- and cross-attention when dec > 128
    assert n_blocked == (enc > 128) + 2 * (dec > 128) and n_whole == 0
    names = ["logits", "encoder_last_hidden_state", "encoder_attentions", "decoder_attentions",
             "cross_attentions", "decoder_hidden_states"]
    for name in names:
        for a, b in zip(jax.tree_util.tree_leaves(blocked[name]), jax.tree_util.tree_leaves(whole[name])):
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, err_msg=name)
    assert blocked["encoder_attentions"][0].shape == (2, 2, enc, enc)   # the padded queries cut off


def test_blocked_attention_gradients_match(monkeypatch):
    model = FlaxBartForConditionalGeneration(BartConfig(**CFG), seed=1)
    ids, mask, dec_ids = _inputs(1, 300, 20, seed=1)

    def loss(p):
        return jnp.sum(model(ids, attention_mask=mask, decoder_input_ids=dec_ids, params=p).logits ** 2)

    def grads(block):
        monkeypatch.setattr(modules, "QUERY_BLOCK", block)
        model._compiled.clear()
        return jax.grad(loss)(model.params)

    g_blocked, g_whole = grads(128), grads(10 ** 6)
    for a, b in zip(jax.tree_util.tree_leaves(g_blocked), jax.tree_util.tree_leaves(g_whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_blocked_attention_helper_cuts_padding_and_keeps_rows(monkeypatch):
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 3, n, 8), np.float32)) for n in (130, 50, 50))
    bias = jnp.asarray(np.where(rng.random((2, 1, 130, 50)) < 0.2, -1e30, 0.0).astype(np.float32))
    monkeypatch.setattr(modules, "QUERY_BLOCK", 64)
    values, probs = modules._blocked_attention(q, k, v, bias, jnp.float32, None)
    want_probs = modules._probs(q, k, bias, jnp.float32, None)
    assert values.shape == (2, 130, 3, 8) and probs.shape == (2, 3, 130, 50)
    np.testing.assert_allclose(probs, want_probs, rtol=0, atol=1e-7)
    np.testing.assert_allclose(values, modules._values(want_probs, v, None), rtol=0, atol=1e-6)
