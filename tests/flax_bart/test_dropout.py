"""Dropout and LayerDrop under train=True: one rate nonzero at a time, each dropout site drops the
expected fraction of its input (binomial bound) and scales the survivors by 1/(1-p), at the places
PyTorch BART drops (read off modeling_bart.py); eval mode is deterministic; the rng contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_bart import BartConfig, InputError
from flax_bart.activations import get_activation
from flax_bart.heads import BartClassificationHead
from flax_bart.models import MODEL_CLASSES
from tests.bart_helpers import HEADS, TINY, batch

RATE = 0.3
Z = 5.0  # binomial bounds at 5 standard deviations: a correct implementation fails ~1 in 2 million
ZERO = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, classifier_dropout=0.0,
            encoder_layerdrop=0.0, decoder_layerdrop=0.0)


def _config(**rates):
    return BartConfig(**{**TINY, **ZERO, **rates})


def _ids(b=8, t=32, seed=0):
    ids = np.random.default_rng(seed).integers(4, TINY["vocab_size"], size=(b, t)).astype(np.int32)
    ids[:, -1] = 2
    return ids


def _assert_binomial(hits: int, n: int, p: float, what: str):
    bound = Z * np.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= bound, f"{what}: {hits}/{n} = {hits / n:.4f}, expected {p} +- {bound:.4f}"


def _assert_dropout(x_in, x_out, rate, what, rtol=1e-6):
    """`x_out` is `x_in` with a `rate` fraction zeroed and the rest scaled by 1/(1-rate)."""
    x_in, x_out = np.asarray(x_in, np.float64), np.asarray(x_out, np.float64)
    assert x_in.shape == x_out.shape, what
    live = x_in != 0
    kept = x_out != 0
    assert not np.any(kept & ~live), f"{what}: nonzero output where the input is zero"
    _assert_binomial(int(np.sum(live & ~kept)), int(np.sum(live)), rate, f"{what} dropped fraction")
    np.testing.assert_allclose(x_out[kept], x_in[kept] / (1 - rate), rtol=rtol, err_msg=what)


def _captured(cfg, head="base", seed=1):
    """{module path: outputs of each call} of one train-mode forward pass of `head`."""
    model = MODEL_CLASSES[head](cfg, seed=0)
    ids = _ids()
    mask, pos = jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    _, state = model.module.apply(
        {"params": model.params}, input_ids=ids, attention_mask=mask, decoder_input_ids=ids,
        decoder_attention_mask=mask, position_ids=pos, decoder_position_ids=pos, deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(seed)}, capture_intermediates=True, mutable=["intermediates"])
    flat = traverse_util.flatten_dict(state["intermediates"])
    return {"/".join(k[:-1]): v for k, v in flat.items() if k[-1] == "__call__"}


def test_hidden_dropout_sites_and_statistics():
    """`dropout`: after the embedding LayerNorm, after each attention block, after fc2."""
    cap = _captured(_config(dropout=RATE))
    for stack in ("encoder", "decoder"):
        (emb_in,), (emb_out,) = cap[f"{stack}/layernorm_embedding"], cap[f"{stack}/dropout"]
        _assert_dropout(emb_in, emb_out, RATE, f"{stack} embeddings")
    enc, dec = "encoder/layers/0", "decoder/layers/0"
    sites = {
        enc: [cap[f"{enc}/self_attn"][0][0], cap[f"{enc}/fc2"][0]],
        dec: [cap[f"{dec}/self_attn"][0][0], cap[f"{dec}/encoder_attn"][0][0], cap[f"{dec}/fc2"][0]],
    }
    for layer, inputs in sites.items():
        outputs = cap[f"{layer}/dropout"]
        assert len(outputs) == len(inputs), layer
        for i, (x_in, x_out) in enumerate(zip(inputs, outputs)):
            _assert_dropout(x_in, x_out, RATE, f"{layer} dropout call {i}")


def test_activation_dropout_statistics():
    cfg = _config(activation_dropout=RATE)
    cap = _captured(cfg)
    act = get_activation(cfg.activation_function)
    for layer in ("encoder/layers/0", "decoder/layers/1"):
        (fc1,), (dropped,) = cap[f"{layer}/fc1"], cap[f"{layer}/act_dropout"]
        _assert_dropout(act(fc1), dropped, RATE, f"{layer} activation", rtol=1e-5)


def test_attention_dropout_statistics_and_returned_weights():
    """Attention dropout acts on the softmax weights; like PyTorch's eager attention, the returned
    attentions are the weights after dropout. Layer 0 sees the same inputs in eval and train mode."""
    model = MODEL_CLASSES["base"](_config(attention_dropout=RATE), seed=0)
    ids = _ids()
    ref = model(ids, output_attentions=True)
    out = model(ids, output_attentions=True, train=True, dropout_rng=jax.random.PRNGKey(3))
    # (rtol: eval and train are different programs, fused differently)
    _assert_dropout(ref.encoder_attentions[0], out.encoder_attentions[0], RATE, "encoder self-attention", 1e-5)
    _assert_dropout(ref.decoder_attentions[0], out.decoder_attentions[0], RATE, "decoder self-attention", 1e-5)


def test_classifier_dropout_statistics():
    """The head drops its input and its tanh layer (PyTorch's BartClassificationHead)."""
    cfg = _config(classifier_dropout=RATE)
    head = BartClassificationHead(cfg)
    x_NxD = jax.random.normal(jax.random.PRNGKey(0), (2048, cfg.d_model))
    params = head.init(jax.random.PRNGKey(1), x_NxD)
    _, state = head.apply(params, x_NxD, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)},
                          capture_intermediates=True, mutable=["intermediates"])
    cap = state["intermediates"]
    first, second = cap["dropout"]["__call__"]
    _assert_dropout(x_NxD, first, RATE, "classifier input")
    _assert_dropout(jnp.tanh(cap["dense"]["__call__"][0]), second, RATE, "classifier hidden", rtol=1e-5)


def test_layerdrop_skip_frequency():
    """Each layer is skipped (its output = its input, bit for bit) with probability `layerdrop`,
    independently per layer and per dropout_rng."""
    cfg = _config(encoder_layerdrop=RATE, decoder_layerdrop=RATE)
    model = MODEL_CLASSES["base"](cfg, seed=0)
    ids = _ids(b=2, t=8)
    mask, pos = jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)

    def states(key):
        out = model.module.apply(
            {"params": model.params}, input_ids=ids, attention_mask=mask, decoder_input_ids=ids,
            decoder_attention_mask=mask, position_ids=pos, decoder_position_ids=pos, output_hidden_states=True,
            deterministic=False, rngs={"dropout": key})
        return out.encoder_hidden_states, out.decoder_hidden_states

    n = 400
    enc, dec = jax.jit(jax.vmap(states))(jax.random.split(jax.random.PRNGKey(0), n))
    skipped = [np.all(np.asarray(hs[i + 1] == hs[i]).reshape(n, -1), axis=1)
               for hs in (enc, dec) for i in range(len(hs) - 1)]
    assert len(skipped) == cfg.encoder_layers + cfg.decoder_layers
    for i, s in enumerate(skipped):
        _assert_binomial(int(s.sum()), n, RATE, f"layer {i} skipped")
    _assert_binomial(int(np.sum(skipped)), n * len(skipped), RATE, "all layers skipped")
    _assert_binomial(int(np.sum(skipped[0] & skipped[1])), n, RATE**2, "layers 0 and 1 both skipped")


@pytest.mark.parametrize("head", HEADS)
def test_rng_contract(head):
    """Eval: deterministic without a key. Train: a key is required once any rate is nonzero; the same
    key gives the same output, another key another output."""
    cfg = _config(dropout=0.2, attention_dropout=0.2, activation_dropout=0.2, classifier_dropout=0.2,
                  encoder_layerdrop=0.2, decoder_layerdrop=0.2)
    model = MODEL_CLASSES[head](cfg, seed=0)
    ids, mask = batch()

    def run(**kw):
        return np.asarray(model(ids, attention_mask=mask, **kw)[0])

    eval_a, eval_b = run(), run(train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    with pytest.raises(InputError, match="train=True with nonzero dropout/layerdrop rates needs dropout_rng"):
        run(train=True)
    a, b = run(train=True, dropout_rng=jax.random.PRNGKey(0)), run(train=True, dropout_rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(a, b)
    c = run(train=True, dropout_rng=jax.random.PRNGKey(1))
    assert not np.array_equal(a, c) and not np.array_equal(a, eval_a)


def test_train_mode_with_zero_rates_needs_no_key_and_equals_eval():
    model = MODEL_CLASSES["lm"](_config(), seed=0)
    ids, mask = batch()
    np.testing.assert_array_equal(model(ids, attention_mask=mask, train=True).logits,
                                  model(ids, attention_mask=mask).logits)
