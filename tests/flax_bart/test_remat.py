"""Gradient checkpointing: the same outputs, gradients and parameter tree with and without `nn.remat`,
for every head, in eval and train mode; cached decoding and generate still work; policies by name."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from flax_bart.remat import available_policies
from tests.bart_helpers import HEADS, TINY, batch

# Every rate nonzero, so train mode runs dropout and LayerDrop inside the rematerialised layers.
CFG = BartConfig(**{**TINY, "encoder_layers": 1, "decoder_layers": 2, "dropout": 0.1, "attention_dropout": 0.1,
                    "activation_dropout": 0.1, "classifier_dropout": 0.1, "encoder_layerdrop": 0.25,
                    "decoder_layerdrop": 0.25})
RTOL = 1e-6  # outputs, fp32: remat changes only XLA's fusion, hence rounding
# Gradients: a bias gradient sums over batch x time, and the recomputed forward is fused differently;
# measured worst case 1.07e-6 (decoder v_proj bias), a few float32 ulps.
GRAD_RTOL = 4e-6
# A gradient leaf is compared relative to its own (L2) size, but never to less than this fraction of
# the largest leaf: some gradients are zero in exact arithmetic (attention's k_proj bias) and hold
# rounding noise only.
FLOOR = 1e-4


@functools.lru_cache(maxsize=None)
def _reference(head, train):
    """(outputs, gradients) without remat, computed once per head and mode."""
    (_, out), grad = _loss_and_outputs(MODEL_CLASSES[head](CFG, seed=0), *batch(), train)
    return out, grad


def _loss_and_outputs(model, ids, mask, train):
    def loss(params):
        out = model(ids, attention_mask=mask, params=params, train=train, dropout_rng=jax.random.PRNGKey(7))
        x = out[0]
        w = jnp.sin(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)  # not LayerNorm-invariant
        return jnp.sum(x * w), out[:2]

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(model.params)


def _assert_close_trees(a, b, what):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    scale = max(float(np.linalg.norm(v)) for v in fa.values())
    for k in fa:
        err = float(np.linalg.norm(np.asarray(fa[k]) - np.asarray(fb[k])))
        ref = max(float(np.linalg.norm(fa[k])), FLOOR * scale)
        assert err <= GRAD_RTOL * ref, f"{what} {'/'.join(k)}: max error {err:.3g}, relative {err / ref:.3g}"


@pytest.mark.parametrize("head", HEADS)
def test_outputs_and_gradients_match_without_remat(head):
    model = MODEL_CLASSES[head](CFG, seed=0)
    ids, mask = batch()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    for train in (False, True):
        out_a, grad_a = _reference(head, train)
        (_, out_b), grad_b = _loss_and_outputs(model, ids, mask, train)
        for x, y in zip(out_a, out_b):
            np.testing.assert_allclose(y, x, rtol=RTOL, atol=RTOL * float(np.max(np.abs(x))))
        _assert_close_trees(grad_a, grad_b, f"{head} train={train} grad")


@pytest.mark.parametrize("policy", ["dots_saveable", "everything_saveable",
                                    jax.checkpoint_policies.dots_with_no_batch_dims_saveable])
def test_policies_by_name_or_callable(policy):
    model = MODEL_CLASSES["lm"](CFG, seed=0)
    ids, mask = batch()
    _, grad_a = _reference("lm", True)
    model.enable_gradient_checkpointing(policy=policy)
    (_, _), grad_b = _loss_and_outputs(model, ids, mask, True)
    _assert_close_trees(grad_a, grad_b, f"policy {policy}")


def test_parameter_tree_is_unchanged():
    for head in HEADS:
        plain = MODEL_CLASSES[head](CFG, seed=3)
        remat = MODEL_CLASSES[head](CFG, seed=3, gradient_checkpointing=True)
        fa, fb = traverse_util.flatten_dict(plain.params), traverse_util.flatten_dict(remat.params)
        assert fa.keys() == fb.keys(), head
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])
        remat.disable_gradient_checkpointing()
        remat.enable_gradient_checkpointing("nothing_saveable")
        remat.check_params(plain.params)  # shapes from the rebuilt module


def test_the_traced_program_holds_remat_only_when_enabled():
    model = MODEL_CLASSES["qa"](CFG, seed=0)
    ids, mask = batch()

    def jaxpr():
        return str(jax.make_jaxpr(lambda p: model.module.apply(
            {"params": p}, input_ids=ids, attention_mask=mask, decoder_input_ids=ids, decoder_attention_mask=mask,
            position_ids=jnp.zeros_like(ids), decoder_position_ids=jnp.zeros_like(ids)))(model.params))

    assert "checkpoint" not in jaxpr() and "remat" not in jaxpr()
    model(ids, attention_mask=mask)
    assert model._compiled
    model.enable_gradient_checkpointing()
    assert not model._compiled  # programs traced with the old module are dropped
    assert "checkpoint" in jaxpr() or "remat" in jaxpr()
    model(ids, attention_mask=mask)
    model.disable_gradient_checkpointing()
    assert not model._compiled and not model.is_gradient_checkpointing
    assert "checkpoint" not in jaxpr() and "remat" not in jaxpr()


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_generate_and_cached_decoding_with_remat(head):
    model = MODEL_CLASSES[head](CFG.replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                            encoder_layerdrop=0.0, decoder_layerdrop=0.0), seed=0)
    ids, mask = batch()
    want = model.generate(ids, attention_mask=mask, max_length=12, num_beams=2).sequences
    model.enable_gradient_checkpointing("dots_saveable")
    got = model.generate(ids, attention_mask=mask, max_length=12, num_beams=2).sequences
    np.testing.assert_array_equal(got, want)
    if head == "lm":  # step by step through init_cache/decode
        enc = model.encode(ids, attention_mask=mask)
        full = model.decode(ids[:, :4], enc, encoder_attention_mask=mask).logits
        cache = model.init_cache(ids.shape[0], 8, enc)
        steps = []
        for t in range(4):
            out = model.decode(ids[:, t:t + 1], enc, encoder_attention_mask=mask, past_key_values=cache)
            cache = out.past_key_values
            steps.append(out.logits)
        np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_bad_policy_is_refused():
    model = MODEL_CLASSES["base"](CFG, seed=0)
    with pytest.raises(ValueError, match="unknown gradient checkpointing policy 'dots'") as err:
        model.enable_gradient_checkpointing("dots")
    assert all(name in str(err.value) for name in available_policies())
    assert "nothing_saveable" in available_policies() and "dots_saveable" in available_policies()
    with pytest.raises(ValueError, match="builds a policy from arguments"):
        model.enable_gradient_checkpointing("save_only_these_names")
    with pytest.raises(TypeError, match="policy must be"):
        model.enable_gradient_checkpointing(3)
    assert not model.is_gradient_checkpointing  # a refused policy leaves the model as it was
