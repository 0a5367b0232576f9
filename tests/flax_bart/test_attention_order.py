"""float32 attention divides by the softmax's sum after weighting the values (flax_bart.modules._attend):
the same function as softmax-then-values within float32 rounding, for outputs, attention weights and
gradients; bf16/fp16 and attention dropout keep the probabilities-first order (PyTorch's rounding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig, FlaxBartForConditionalGeneration
from flax_bart import modules

CFG = dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)


def _qkv_bias(seed=0, b=3, h=4, t=20, s=24, k=16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, h, t, k)).astype(np.float32) / 4
    kk, v = (rng.standard_normal((b, h, s, k)).astype(np.float32) for _ in range(2))
    bias = np.zeros((b, 1, t, s), np.float32)
    bias[0, ..., s // 2:] = np.finfo(np.float32).min      # right padding
    bias[1] = np.finfo(np.float32).min                    # a row attending to nothing: uniform weights
    bias[2, ..., :5] = -np.inf                            # absent keys: weight exactly 0
    return q, kk, v, bias


def _float64(q, k, v, bias):
    s = np.einsum("bhtk,bhsk->bhts", q.astype(np.float64), k.astype(np.float64)) + bias.astype(np.float64)
    e = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhts,bhsk->bthk", e / e.sum(-1, keepdims=True), v.astype(np.float64))


def test_post_normalised_attention_is_softmax_then_values():
    q, k, v, bias = _qkv_bias()
    values, probs = jax.jit(lambda *a: modules._attend(*a, jnp.float32, None))(q, k, v, bias)
    want_probs = modules._probs(q, k, bias, jnp.float32, None)
    want = modules._values(want_probs, v, None)
    assert values.shape == want.shape == (3, 20, 4, 16) and probs.shape == (3, 4, 20, 24)
    np.testing.assert_allclose(probs, want_probs, rtol=0, atol=2e-7)
    np.testing.assert_allclose(values, want, rtol=0, atol=2e-6)
    assert np.all(np.asarray(probs)[2, ..., :5] == 0)                     # absent keys
    np.testing.assert_allclose(np.asarray(probs)[1], 1 / 24, rtol=1e-6)   # nothing attended: uniform
    gold = _float64(q, k, v, bias)
    rms = np.sqrt(np.mean(gold ** 2))
    err_post = np.abs(np.asarray(values, np.float64) - gold).max() / rms
    err_first = np.abs(np.asarray(want, np.float64) - gold).max() / rms
    assert err_post < 2e-6 and err_post <= 2 * err_first + 1e-7


def _traced(model, monkeypatch, **kw):
    """How many attentions took `_attend` while the model's forward was traced."""
    calls = []
    inner = modules._attend
    monkeypatch.setattr(modules, "_attend", lambda *a: calls.append(1) or inner(*a))
    model._compiled.clear()
    ids = np.full((2, 6), 5, np.int32)
    jax.eval_shape(lambda p: model(ids, decoder_input_ids=ids, params=p, **kw).logits, model.params)
    monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize("dtype,expected", [(jnp.float32, 6), (jnp.bfloat16, 0), (jnp.float16, 0)])
def test_only_float32_attention_is_post_normalised(dtype, expected, monkeypatch):
    # 2 encoder self-attentions + 2 x (decoder self + cross)
    model = FlaxBartForConditionalGeneration(BartConfig(**CFG), dtype=dtype, seed=0)
    assert _traced(model, monkeypatch) == expected


def test_attention_dropout_keeps_probabilities_first(monkeypatch):
    model = FlaxBartForConditionalGeneration(BartConfig(**CFG, attention_dropout=0.1), seed=0)
    assert _traced(model, monkeypatch, train=True, dropout_rng=jax.random.PRNGKey(0)) == 0
    assert _traced(model, monkeypatch) == 6   # deterministic: no dropout, post-normalised


def test_model_outputs_and_gradients_match_probabilities_first(monkeypatch):
    model = FlaxBartForConditionalGeneration(BartConfig(**CFG), seed=2)
    rng = np.random.default_rng(2)
    ids = rng.integers(4, 64, (2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 8:] = 0
    dec = rng.integers(4, 64, (2, 9)).astype(np.int32)

    def run(post: bool):
        monkeypatch.setattr(modules, "post_normalised", lambda d: post and jnp.dtype(d) == jnp.float32)
        model._compiled.clear()
        out = jax.device_get(model(ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True))
        grads = jax.grad(lambda p: jnp.sum(model(ids, attention_mask=mask, decoder_input_ids=dec,
                                                 params=p).logits ** 2))(model.params)
        monkeypatch.undo()
        return out, grads

    (out_post, g_post), (out_first, g_first) = run(True), run(False)
    assert not np.array_equal(out_post["logits"], out_first["logits"])   # the two orders really ran
    np.testing.assert_allclose(out_post["logits"], out_first["logits"], rtol=1e-5, atol=1e-6)
    for name in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        for a, b in zip(out_post[name], out_first[name]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)
    for a, b in zip(jax.tree_util.tree_leaves(g_post), jax.tree_util.tree_leaves(g_first)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
