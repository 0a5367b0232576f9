"""Layer stacks as one lax.scan (flax_bart.layer_scan) compute what the unrolled stacks compute:
outputs, hidden states and attentions of every layer, gradients, train mode, cached decoding steps;
creating a cache and `capture_intermediates` keep the unrolled layers; the compiled programs hold one
layer body."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from tests.bart_helpers import TINY

CFG = BartConfig(**{**TINY, "encoder_layers": 3, "decoder_layers": 3})


def _pair(head, scan=True, **kw):
    scanned = MODEL_CLASSES[head](CFG, seed=0, scan_layers=scan, **kw)
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


def test_cache_creation_and_intermediates_keep_the_unrolled_layers():
    scanned, unrolled = _pair("lm")
    ids, kw = _inputs("lm")
    enc = scanned.encode(ids, attention_mask=kw["attention_mask"])
    cache_a = scanned.init_cache(3, 4, enc)
    cache_b = unrolled.init_cache(3, 4, enc, params=scanned.params)
    _assert_trees_close(cache_a, cache_b, 0)
    _, state = scanned.module.apply(
        {"params": scanned.params}, input_ids=ids, attention_mask=kw["attention_mask"],
        decoder_input_ids=kw["decoder_input_ids"], decoder_attention_mask=None,
        position_ids=jnp.broadcast_to(jnp.arange(9), ids.shape),
        decoder_position_ids=jnp.broadcast_to(jnp.arange(9), ids.shape),
        capture_intermediates=True, mutable=["intermediates"])
    assert {"0", "1", "2"} <= set(state["intermediates"]["model"]["encoder"]["layers"])


def _stepper(model, params, head, ids, mask, steps):
    """(a fresh cache for `steps` tokens, call(t, cache): the cached step on token t)."""
    if head == "causal":
        full = np.ones((ids.shape[0], steps), np.int32)
        return model.init_cache(ids.shape[0], steps, params=params), (
            lambda t, c: model(ids[:, t:t + 1], attention_mask=full, params=params, past_key_values=c,
                               output_hidden_states=True, output_attentions=True))
    enc = model.encode(ids, attention_mask=mask, params=params)
    return model.init_cache(ids.shape[0], steps, enc, params=params), (
        lambda t, c: model.decode(ids[:, t:t + 1], enc, encoder_attention_mask=mask, past_key_values=c,
                                  params=params, output_hidden_states=True, output_attentions=True))


def _decode_steps(model, params, head, ids, mask, steps):
    """Cached decoding of `steps` single tokens: every step's outputs (with its cache)."""
    cache, call = _stepper(model, params, head, ids, mask, steps)
    outs = []
    for t in range(steps):
        outs.append(call(t, cache))
        cache = outs[-1].past_key_values
    return outs


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_decoding_steps_scan_and_match_the_unrolled_layers(head):
    """With scan_layers="all" a decoding step scans its layers too (each reads and writes its own cache,
    in the 4.x layout): logits, hidden states, attentions and the cache after every step agree with the
    unrolled layers. With scan_layers=True the step keeps the unrolled layers."""
    scanned, unrolled = _pair(head, "all")
    ids, kw = _inputs(head)
    mask = kw["attention_mask"]
    a = _decode_steps(scanned, scanned.params, head, ids, mask, 4)
    b = _decode_steps(unrolled, scanned.params, head, ids, mask, 4)
    for x, y in zip(a, b):
        assert (jax.tree_util.tree_structure(x.past_key_values)
                == jax.tree_util.tree_structure(y.past_key_values))
        _assert_trees_close(x, y, 1e-5)
    index = {jax.tree_util.keystr(path): int(leaf) for path, leaf
             in jax.tree_util.tree_leaves_with_path(a[-1].past_key_values) if "cache_index" in str(path)}
    assert len(index) == 3 and set(index.values()) == {4}, index   # every layer's own cache, 4 steps in
    cache, call = _stepper(scanned, scanned.params, head, ids, mask, 4)
    step = jax.jit(lambda c: call(0, c).logits).lower(cache).as_text()
    assert step.count("stablehlo.case") == 1   # the step scanned its layers (switch-picked)
    uncached_only, _ = _pair(head, True)
    cache, call = _stepper(uncached_only, scanned.params, head, ids, mask, 4)
    assert "stablehlo.case" not in jax.jit(lambda c: call(0, c).logits).lower(cache).as_text()


def test_a_differentiated_decoding_step_matches_the_unrolled_layers():
    """A gradient through a cached step (the stacked scan, weights and caches) equals the unrolled one's."""
    scanned, unrolled = _pair("lm", "all")
    ids, kw = _inputs("lm")
    mask = kw["attention_mask"]

    def loss(model):
        cache, call = _stepper(model, scanned.params, "lm", ids, mask, 3)
        cache = call(0, cache).past_key_values
        enc = model.encode(ids, attention_mask=mask, params=scanned.params)
        return lambda p: jnp.sum(model.decode(ids[:, 1:2], enc, encoder_attention_mask=mask, params=p,
                                              past_key_values=cache).logits ** 2)

    _assert_trees_close(jax.grad(loss(scanned))(scanned.params), jax.grad(loss(unrolled))(scanned.params), 1e-5)


def test_a_decoding_step_compiles_one_layer_body():
    """The cached step's program does not grow with depth (each step picks its layer's cache)."""
    def ops(layers):
        cfg = BartConfig(**{**TINY, "encoder_layers": 2, "decoder_layers": layers})
        model = MODEL_CLASSES["lm"](cfg, seed=0, scan_layers="all")
        ids = np.ones((2, 6), np.int32)
        enc = model.encode(ids)
        cache = model.init_cache(2, 4, enc)
        fn = lambda p, c: model.decode(ids[:, :1], enc, params=p, past_key_values=c).logits  # noqa: E731
        return jax.jit(fn).lower(model.params, cache).as_text().count("dot_general")

    assert ops(5) == ops(2)


def test_generation_with_scanned_layers_matches_unrolled():
    scanned, unrolled = _pair("lm", "all")
    ids, kw = _inputs("lm")
    mask = np.ones_like(ids)
    a = scanned.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=1, do_sample=False)
    b = unrolled.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=1, do_sample=False,
                          params=scanned.params)
    np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))


def test_models_unroll_by_default():
    """Scanning costs run time (a per-step copy of each layer's weights; stacked in train mode): opt-in only."""
    assert MODEL_CLASSES["qa"](CFG, _do_init=False).module.scan_layers is False
    assert MODEL_CLASSES["qa"](CFG, _do_init=False, scan_layers=True).module.scan_layers is True
    assert MODEL_CLASSES["qa"](CFG, _do_init=False, scan_layers="all").module.scan_layers == "all"
    with pytest.raises(ValueError, match=r"scan_layers='decode': expected False .* or 'all'"):
        MODEL_CLASSES["qa"](CFG, _do_init=False, scan_layers="decode")


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
