"""flax_bart.declared_params: an existing parameter is read without flax's `eval_shape` of its
initialiser, with the same values, the same parameters at `init` and the same errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors
from flax import linen as nn

from flax_bart import BartConfig
from flax_bart.declared_params import LayerNorm
from flax_bart.models import MODEL_CLASSES
from flax_bart.modules import Dense
from tests.bart_helpers import TINY


def _equal_trees(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb] and la
    for (_, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_layer_norm_initialises_and_computes_as_flax_does():
    x = jax.random.normal(jax.random.key(1), (2, 5, 8)) * 3 + 1
    ours = LayerNorm(epsilon=1e-5, use_fast_variance=False)
    theirs = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)
    p_ours, p_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    _equal_trees(p_ours, p_theirs)
    params = jax.tree_util.tree_map(lambda v: v + jax.random.normal(jax.random.key(2), v.shape), p_theirs)
    np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))


def test_a_parameter_of_the_wrong_shape_is_refused_with_its_name_and_shapes():
    x = jnp.ones((2, 3))
    params = Dense(4).init(jax.random.key(0), x)
    bad = {"params": {**params["params"], "kernel": jnp.ones((3, 5))}}
    with pytest.raises(errors.ScopeParamShapeError, match=r'"kernel".*expected.*\(3, 4\).*has shape \(3, 5\)'):
        Dense(4).apply(bad, x)
    with pytest.raises(errors.ScopeParamShapeError, match=r'"scale".*expected.*\(3,\).*has shape \(7,\)'):
        LayerNorm().apply({"params": {"scale": jnp.ones(7), "bias": jnp.zeros(3)}}, x)


def test_a_missing_parameter_is_still_flax_s_error():
    x = jnp.ones((2, 3))
    params = Dense(4).init(jax.random.key(0), x)
    with pytest.raises(errors.ScopeParamNotFoundError, match="bias"):
        Dense(4).apply({"params": {"kernel": params["params"]["kernel"]}}, x)


@pytest.mark.parametrize("head", ["lm", "qa", "cls", "causal"])
def test_tracing_a_model_evaluates_no_initialiser(head, monkeypatch):
    """The point of the module: a trace reads every parameter (~260 in BART-base) with no `eval_shape`.
    The outputs equal those of the same model with every parameter read through flax's `Module.param`
    (which does call `eval_shape`: the counter would see it)."""
    from flax_bart import declared_params

    cfg = BartConfig(**{**TINY, "encoder_layers": 2, "decoder_layers": 2})
    rng = np.random.default_rng(0)
    ids = rng.integers(4, TINY["vocab_size"], (2, 7)).astype(np.int32)
    ids[:, -1] = 2
    kw = {} if head == "causal" else dict(decoder_input_ids=ids[:, ::-1].copy())
    calls = []
    real = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: calls.append(1) or real(*a, **k))

    model = MODEL_CLASSES[head](cfg, seed=0)
    calls.clear()   # (init may evaluate shapes)
    ours = model(ids, output_hidden_states=True, **kw)
    assert calls == []

    flax_param = nn.nowrap(lambda self, *a, **k: super(declared_params.DeclaredParams, self).param(*a, **k))
    monkeypatch.setattr(declared_params.DeclaredParams, "param", flax_param)
    plain = MODEL_CLASSES[head](cfg, seed=0, _do_init=False)
    theirs = plain(ids, params=model.params, output_hidden_states=True, **kw)
    assert len(calls) > 10
    _equal_trees(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs))
