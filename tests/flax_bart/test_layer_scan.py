"""Layer stacks as one lax.scan (flax_bart.layer_scan) compute what the unrolled stacks compute:
outputs, hidden states and attentions of every layer, gradients, train mode; the cache paths and
`capture_intermediates` keep the unrolled layers; the compiled program holds one layer body."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from tests.bart_helpers import TINY

CFG = BartConfig(**{**TINY, "encoder_layers": 3, "decoder_layers": 3})


def _pair(head, **kw):
    scanned = MODEL_CLASSES[head](CFG, seed=0, scan_layers=True, **kw)
    unrolled = MODEL_CLASSES[head](CFG, seed=0, _do_init=False, scan_layers=False, **kw)
    return scanned, unrolled


def _inputs(head):
    rng = np.random.default_rng(0)
    ids = rng.integers(4, TINY["vocab_size"], (3, 9)).astype(np.int32)
    ids[:, -1] = 2   # <eos> closes every row (the classification head reads it)
    mask = np.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, :] = 0   # a row that attends to nothing
    kw = dict(attention_mask=mask)
    if head != "causal":
        kw["decoder_input_ids"] = ids[:, ::-1].copy()
    return ids, kw


def _assert_trees_close(a, b, tol):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        assert x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("head", ["base", "lm", "cls", "qa", "causal"])
def test_scanned_stack_equals_unrolled(head):
    scanned, unrolled = _pair(head)
    ids, kw = _inputs(head)
    a = scanned(ids, **kw, output_hidden_states=True, output_attentions=True)
    b = unrolled(ids, **kw, params=scanned.params, output_hidden_states=True, output_attentions=True)
    n_dec = CFG.decoder_layers
    states = a.hidden_states if head == "causal" else a.decoder_hidden_states
    assert len(states) == n_dec + 1
    _assert_trees_close(a, b, 1e-5)


def test_gradients_and_train_mode_match():
    cfg = BartConfig(**{**TINY, "encoder_layers": 3, "decoder_layers": 3, "dropout": 0.2,
                        "attention_dropout": 0.1, "encoder_layerdrop": 0.3, "decoder_layerdrop": 0.3})
    scanned = MODEL_CLASSES["lm"](cfg, seed=0, scan_layers=True)
    unrolled = MODEL_CLASSES["lm"](cfg, seed=0, _do_init=False, scan_layers=False)
    ids, kw = _inputs("lm")
    kw["attention_mask"] = np.ones_like(ids)

    def loss(model, params):
        return jnp.mean(model(ids, **kw, params=params).logits ** 2)

    ga = jax.grad(lambda p: loss(scanned, p))(scanned.params)
    gb = jax.grad(lambda p: loss(unrolled, p))(scanned.params)
    _assert_trees_close(ga, gb, 1e-5)
    # Train mode: deterministic per key, different across keys, and every layer is reached by the grads.
    out = [scanned(ids, **kw, train=True, dropout_rng=jax.random.PRNGKey(k)).logits for k in (1, 1, 2)]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))
    assert not np.allclose(np.asarray(out[0]), np.asarray(out[2]))
    for stack in ("encoder", "decoder"):
        layers = ga["model"][stack]["layers"]
        assert sorted(layers) == ["0", "1", "2"]
        assert all(float(jnp.abs(layers[i]["fc1"]["kernel"]).sum()) > 0 for i in layers)


def test_layerdrop_in_a_scanned_stack_skips_about_its_rate():
    """With LayerDrop 0.5 and no other dropout, a train-mode pass equals one of the 2^n layer subsets;
    over many keys the number of layers kept is about half."""
    cfg = BartConfig(**{**TINY, "encoder_layers": 4, "decoder_layers": 2, "encoder_layerdrop": 0.5})
    model = MODEL_CLASSES["base"](cfg, seed=0, scan_layers=True)
    ids, kw = _inputs("base")
    kw["attention_mask"] = np.ones_like(ids)
    eval_states = model(ids, **kw, output_hidden_states=True).encoder_hidden_states
    kept = []
    for k in range(40):
        out = model(ids, **kw, train=True, dropout_rng=jax.random.PRNGKey(k), output_hidden_states=True)
        st = out.encoder_hidden_states
        # layer i skipped <=> its output equals its input
        kept.append(sum(not np.array_equal(np.asarray(st[i]), np.asarray(st[i + 1])) for i in range(4)))
        assert np.array_equal(np.asarray(st[0]), np.asarray(eval_states[0]))
    rate = 1 - np.mean(kept) / 4
    assert 0.3 < rate < 0.7, rate


def test_cache_and_intermediates_keep_the_unrolled_layers():
    scanned, unrolled = _pair("lm")
    ids, kw = _inputs("lm")
    enc = scanned.encode(ids, attention_mask=kw["attention_mask"])
    cache_a = scanned.init_cache(3, 4, enc)
    cache_b = unrolled.init_cache(3, 4, enc, params=scanned.params)
    _assert_trees_close(cache_a, cache_b, 0)
    step = dict(encoder_attention_mask=kw["attention_mask"])
    a = scanned.decode(ids[:, :1], enc, past_key_values=cache_a, **step)
    b = unrolled.decode(ids[:, :1], enc, past_key_values=cache_b, params=scanned.params, **step)
    _assert_trees_close(a.logits, b.logits, 0)
    _, state = scanned.module.apply(
        {"params": scanned.params}, input_ids=ids, attention_mask=kw["attention_mask"],
        decoder_input_ids=kw["decoder_input_ids"], decoder_attention_mask=None,
        position_ids=jnp.broadcast_to(jnp.arange(9), ids.shape),
        decoder_position_ids=jnp.broadcast_to(jnp.arange(9), ids.shape),
        capture_intermediates=True, mutable=["intermediates"])
    assert {"0", "1", "2"} <= set(state["intermediates"]["model"]["encoder"]["layers"])


def test_models_unroll_by_default():
    """Scanning costs run time (a per-step copy of each layer's weights; stacked in train mode): opt-in only."""
    assert MODEL_CLASSES["qa"](CFG, _do_init=False).module.scan_layers is False
    assert MODEL_CLASSES["qa"](CFG, _do_init=False, scan_layers=True).module.scan_layers is True


def test_compiled_forward_holds_one_layer_body():
    """The scanned program's size does not grow with depth (the unrolled one's does)."""
    def ops(layers, scan):
        cfg = BartConfig(**{**TINY, "encoder_layers": layers, "decoder_layers": layers})
        model = MODEL_CLASSES["base"](cfg, _do_init=False, scan_layers=scan)
        params = jax.eval_shape(lambda: model.init_weights(jax.random.PRNGKey(0), (1, 4)))
        ids = jnp.ones((2, 6), jnp.int32)
        fn = lambda p: model(ids, decoder_input_ids=ids, params=p).last_hidden_state  # noqa: E731
        return jax.jit(fn).lower(params).as_text().count("dot_general")

    assert ops(6, True) == ops(2, True)
    assert ops(6, False) > ops(2, False)


def test_a_pass_nobody_differentiates_picks_layers_without_stacking():
    """On a CPU the forward program picks each layer's weights with a switch (no stack of all layers
    built per call); a gradient or a JVP runs the stacked scan (the switch's gradient would add zeros
    for every other layer at every step), and both agree with the unrolled layers."""
    scanned, unrolled = _pair("lm")
    ids, kw = _inputs("lm")

    def logits(model):
        return lambda p: model(ids, **kw, params=p).logits

    def loss(model):
        return lambda p: jnp.sum(logits(model)(p) ** 2)

    forward = jax.jit(logits(scanned)).lower(scanned.params).as_text()
    grad = jax.jit(jax.grad(loss(scanned))).lower(scanned.params).as_text()
    assert forward.count("stablehlo.case") == 2 and "concatenate" not in forward   # encoder + decoder
    assert "stablehlo.case" not in grad and "concatenate" in grad
    _assert_trees_close(jax.grad(loss(scanned))(scanned.params), jax.grad(loss(unrolled))(scanned.params), 1e-5)
    tangent = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.01), scanned.params)
    a = jax.jvp(logits(scanned), (scanned.params,), (tangent,))
    b = jax.jvp(logits(unrolled), (scanned.params,), (tangent,))
    _assert_trees_close(a, b, 1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_a_missing_layer_is_named(train):
    """Both scanned paths (picked and stacked) name the layers absent from the parameter tree."""
    model = MODEL_CLASSES["qa"](CFG, seed=0, scan_layers=True)
    params = jax.tree_util.tree_map(lambda x: x, model.params)
    del params["model"]["encoder"]["layers"]["2"]
    ids, kw = _inputs("qa")
    extra = dict(train=True, dropout_rng=jax.random.PRNGKey(0)) if train else {}
    with pytest.raises(KeyError, match=r"layer parameters missing under model/encoder/layers: \['2'\]"):
        model(ids, **kw, params=params, **extra)
